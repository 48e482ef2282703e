"""Task arithmetic on sandbox checkpoints: one set of weights holding what several fine-tunes
of the same base learned.

    .venv/bin/python scripts/sandbox_merge.py --out DIR --add MODEL:WEIGHT [--add ...]
        [--base harness/assets/sandbox-model/model]

Writes ``base + sum WEIGHT * (MODEL - base)`` (``harness.training.model_io.add_task_vectors``,
Ilharco et al. 2023, arXiv:2212.04089) as a transformers folder with the base's tokenizer and
config, and ``merge.json`` naming its parts. Every ``MODEL`` must be a fine-tune of ``--base``
(same blocks and sizes); the error names the first parameters that differ otherwise.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ASSET_MODEL = Path(__file__).resolve().parents[1] / "harness" / "assets" / "sandbox-model" / "model"


def _part(text: str) -> tuple[Path, float]:
    path, sep, weight = text.rpartition(":")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--add {text!r}: expected MODEL:WEIGHT")
    try:
        w = float(weight)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--add {text!r}: weight {weight!r} is not a number")
    return Path(path), w


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--base", type=Path, default=ASSET_MODEL)
    p.add_argument("--add", required=True, action="append", type=_part, metavar="MODEL:WEIGHT")
    args = p.parse_args(argv)
    for path in [args.base] + [m for m, _ in args.add]:
        if not (path / "config.json").is_file():
            p.error(f"{path}: not a model folder (no config.json)")
    if args.out.exists():
        p.error(f"--out {args.out}: exists already")

    from transformers import AutoTokenizer

    from harness.training.model_io import add_task_vectors, load_model, save_checkpoint

    base = load_model(args.base)
    parts = [load_model(m) for m, _ in args.add]
    try:
        merged = add_task_vectors(base, parts, [w for _, w in args.add])
    except ValueError as exc:
        p.error(str(exc))
    record = {"base": str(args.base), "add": [[str(m), w] for m, w in args.add]}
    save_checkpoint(merged, AutoTokenizer.from_pretrained(str(args.base)), args.out,
                    files={"merge.json": json.dumps(record, indent=1) + "\n"})
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
