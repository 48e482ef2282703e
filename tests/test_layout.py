"""The module graph follows the data flow: data → construction → training → (sandbox) →
evaluation → experiments → tools → cli, with the shared helpers (config, registry, layout,
tracking, files, logs, faults) below all of them; plugins (``methods/``, ``benchmarks/``) import
from the harness only through ``harness.api``; there is no import cycle. Every import counts,
module-level or inside a function. Old import paths still work, with a warning."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods", "benchmarks")

# rank of each part of the harness: a module may import its own rank or a lower one
SHARED = {"harness", "harness._compat", "harness.config", "harness.registry", "harness.fileio",
          "harness.logs", "harness.faults", "harness.layout", "harness.tracking"}
RANKS = [("harness.data", 1), ("harness.construction", 2), ("harness.training", 3),
         ("harness.sandbox", 4), ("harness.evaluation", 5), ("harness.api", 6),
         ("harness.experiments", 7), ("harness.tools", 8), ("harness.cli", 9)]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports (anywhere in the file)."""
    out = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[:len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:     # "harness.x.y" where y is a name, not a module
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in PACKAGES:
                out.add(t)
    return out - {name}


def rank(module: str) -> int | None:
    if module in SHARED:
        return 0
    for prefix, r in RANKS:
        if module == prefix or module.startswith(prefix + "."):
            return r
    return None


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for m, deps in sorted(g.items()):
        plugin = m.split(".")[0] in ("methods", "benchmarks")
        for d in sorted(deps):
            if d == "harness" or d == m.split(".")[0]:
                continue                    # a package's own __init__
            if plugin:
                if d.startswith("harness") and d != "harness.api":
                    bad.append(f"{m} -> {d} (plugins import the harness through harness.api)")
                elif d.split(".")[0] != m.split(".")[0] and d.split(".")[0] != "harness":
                    bad.append(f"{m} -> {d} (a plugin imports another kind of plugin)")
                continue
            if d.split(".")[0] in ("methods", "benchmarks"):
                if rank(m) != rank("harness.tools"):
                    bad.append(f"{m} -> {d} (the core reaches plugins through the registry)")
                continue
            rm, rd = rank(m), rank(d)
            if rm is None or rd is None:
                bad.append(f"{m} -> {d} (a module outside the known layers)")
            elif rd > rm:
                bad.append(f"{m} (layer {rm}) -> {d} (layer {rd}): an upward import")
    return bad


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_upward_import_and_plugins_only_through_the_facade():
    g = graph()
    assert len(g) > 60 and "harness.api" in g
    bad = upward_imports(g)
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_no_import_cycle():
    found = cycles({m: {d for d in deps if d not in ("harness", "methods", "benchmarks")}
                    for m, deps in graph().items()})
    assert not found, f"import cycles: {found}"


def test_the_checks_catch_what_they_should(tmp_path):
    """The checker itself: an upward import, a plugin reaching past the facade and a cycle
    are each reported."""
    g = {"harness.data.corpus": {"harness.evaluation.runner"},
         "methods.x": {"harness.construction.driver", "harness.api"},
         "harness.evaluation.runner": {"harness.data.corpus"},
         "harness.experiments.compare": {"benchmarks.probe"}}
    bad = upward_imports(g)
    assert any("harness.data.corpus (layer 1) -> harness.evaluation.runner" in b for b in bad)
    assert any("methods.x -> harness.construction.driver" in b for b in bad)
    assert any("harness.experiments.compare -> benchmarks.probe" in b for b in bad)
    assert not any("methods.x -> harness.api" in b for b in bad)
    assert cycles(g) == [["harness.data.corpus", "harness.evaluation.runner"]]
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from harness.evaluation import runner as E\n"
                 "import harness.construction.stage_data\n")
    known = {"harness.evaluation", "harness.evaluation.runner", "harness.construction",
             "harness.construction.stage_data"}
    assert imports_of("harness.data.x", p, known) == {"harness.evaluation.runner",
                                                     "harness.construction.stage_data"}


@pytest.mark.parametrize("old,name,new", [
    ("harness.construct", "RootResult", "harness.construction.driver"),
    ("harness.screening", "screen_and_verify", "harness.construction.screening"),
    ("harness.stage_data", "Group", "harness.construction.stage_data"),
    ("harness.pipeline", "dataset_dir", "harness.layout"),
    ("harness.pipeline", "resolve_inputs", "harness.experiments.wiring"),
    ("harness.evaluate", "evaluate_checkpoint", "harness.evaluation.runner"),
])
def test_old_import_paths_work_and_warn(old, name, new):
    code = (f"import warnings, importlib\nwarnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    from {old} import {name}\nexcept DeprecationWarning as w:\n"
            f"    print('warned:', w)\nwarnings.simplefilter('ignore')\n"
            f"from {old} import {name} as a\nfrom {new} import {name} as b\n"
            f"print('same' if a is b else 'different')\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"warned: {old} moved to {new}" in r.stdout or \
        (f"warned: {old} moved to" in r.stdout and new in r.stdout), r.stdout
    assert r.stdout.strip().endswith("same")


def test_plugins_import_only_the_facade_names_it_exports():
    """Every name a plugin takes from harness.api is in its __all__."""
    import harness.api as api

    for pkg in ("methods", "benchmarks"):
        for p in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "harness.api":
                    missing = [a.name for a in node.names if a.name not in api.__all__]
                    assert not missing, f"{p}: {missing} not in harness.api.__all__"


def test_outputs_are_keyed_by_the_base_model_itself_not_only_its_spec_entry(tmp_path,
                                                                           monkeypatch):
    """A new sandbox recipe, or other weights in the same model folder, give other stage and
    evaluation folders: no result of one base model is reused for another."""
    import dataclasses

    from harness.config import load_spec
    from harness.evaluation.runner import eval_name
    from harness.layout import method_key, model_identity
    from harness.sandbox import build as B

    spec = load_spec(REPO / "runs" / "smoke.yaml", [])
    assert spec.model.path == "sandbox"
    keys = (method_key(spec, "standard"), eval_name(spec), model_identity(spec))
    assert keys[2] == "sandbox:" + B.model_key(spec.sandbox)
    monkeypatch.setattr(B, "RECIPE", dataclasses.replace(B.RECIPE, copy_share=0.1))
    assert all(a != b for a, b in zip(keys, (method_key(spec, "standard"), eval_name(spec),
                                             model_identity(spec))))

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\0" * (3 << 20))
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"path": str(folder)})})
    before = (method_key(spec, "standard"), eval_name(spec))
    data = bytearray(weights.read_bytes())
    data[-10] = 1                                    # the last MiB of the weights changed
    weights.write_bytes(bytes(data))
    after = (method_key(spec, "standard"), eval_name(spec))
    assert before[0] != after[0] and before[1] != after[1]
    weights.write_bytes(b"\0" * (3 << 20))
    assert (method_key(spec, "standard"), eval_name(spec)) == before


def test_an_evaluation_of_another_probe_version_is_not_reused(monkeypatch):
    """The probe's items changed in its version 2 (the query starts a sentence): the evaluation
    folder of a spec with the probe follows the probe's ``version``; the stages' do not."""
    from benchmarks import probe as P
    from harness.config import load_spec
    from harness.evaluation.runner import eval_name
    from harness.layout import method_key

    spec = load_spec(REPO / "runs" / "smoke.yaml", [])
    assert "probe" in [b.name for b in spec.eval.benchmarks]
    before = (method_key(spec, "standard"), eval_name(spec))
    monkeypatch.setattr(P.Probe, "version", P.PROBE_VERSION + 1)
    after = (method_key(spec, "standard"), eval_name(spec))
    assert after[0] == before[0] and after[1] != before[1]


def test_a_corpus_edited_in_place_gives_other_stage_folders(tmp_path):
    """A local corpus's content is in the stages' key: a document edited at the same path (same
    size, so no reader could tell from the file's length) gives another key, and the text put
    back gives the old one; a folder corpus counts every file under it. The sandbox's key holds
    no content hash (its spec fixes its corpus)."""
    from harness.config import load_spec
    from harness.layout import corpus_identity, method_key

    spec = load_spec(REPO / "runs" / "smoke.yaml", [])
    assert corpus_identity(spec) is None
    corpus = tmp_path / "c.jsonl"

    def key(path):
        s = spec.model_copy(update={"corpus": spec.corpus.model_copy(update={"path": str(path)})})
        return method_key(s, "standard")

    def write(text, when):         # an edit made later (the hash is kept per size and mtime)
        corpus.write_text(text)
        os.utime(corpus, ns=(when, when))

    write('{"id": "a", "text": "one two"}\n', 10**18)
    before = key(corpus)
    write('{"id": "a", "text": "one TWO"}\n', 10**18 + 10**9)
    assert key(corpus) != before
    write('{"id": "a", "text": "one two"}\n', 10**18 + 2 * 10**9)
    assert key(corpus) == before
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "x.txt").write_text("first")
    in_folder = key(folder)
    (folder / "sub" / "y.txt").write_text("second")
    assert key(folder) != in_folder


def test_the_cache_is_the_output_folders_unless_a_shared_one_is_named(monkeypatch, tmp_path):
    """``$POLICYLONG_CACHE_DIR`` names one token-store and chunk-index folder for every spec;
    without it each output folder has its own; ``shared_cache`` (a study's seeds) sets it for a
    block, keeps one already named, and restores the environment after."""
    from harness.config import load_spec
    from harness.layout import cache_dir, shared_cache

    spec = load_spec(REPO / "runs" / "smoke.yaml", [f"output_dir={tmp_path / 'out'}"])
    monkeypatch.delenv("POLICYLONG_CACHE_DIR", raising=False)
    assert cache_dir(spec) == tmp_path / "out" / "cache"
    with shared_cache(tmp_path / "study"):
        assert cache_dir(spec) == tmp_path / "study"
    assert "POLICYLONG_CACHE_DIR" not in os.environ
    assert cache_dir(spec) == tmp_path / "out" / "cache"
    monkeypatch.setenv("POLICYLONG_CACHE_DIR", str(tmp_path / "mine"))
    with shared_cache(tmp_path / "study"):
        assert cache_dir(spec) == tmp_path / "mine"
    assert cache_dir(spec) == tmp_path / "mine"
