"""Fuzzing the command line (issue 21): seeded mutations of ``runs/smoke.yaml`` (and of the
study file) and of the command line: unknown keys, wrong types, out-of-range values, missing
files, swapped sections, unicode, huge numbers, empty strings, broken and duplicated YAML, bad
flags and overrides.

Every case runs through the real entry point, ``harness.cli.main``, in the case's own folder.
The expensive work behind each command (construction, training, evaluation, the sandbox build,
servers, benchmarks) is replaced by a stub that raises ``WorkStarted``: reaching it means every
check that comes before the work passed. Each case must end in one of three ways: exit 0,
exit 2 with an ``error:`` line, or the work reached; never a traceback, and never a file
written. Some failing cases are then replayed as real ``policylong`` processes, without stubs.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SEED = 21
N_CASES = 400
N_REPLAYED = 6            # failing cases replayed as real processes


class WorkStarted(Exception):
    """Raised by the stubs that stand in for the work a command does once its checks pass."""


# ----------------------------------------------------------------------------- value pools

WEIRD_STRINGS = ["", " ", "ñandú", "数据集", "😀", "\u202eevil", "a" * 3000, "../../etc/passwd",
                 "null", "~", "0x1F", "1e999", "NaN", "-", "\t", "∞", "ＰｏｌｉｃｙＬｏｎｇ", "yes",
                 "C:\\x", "{a: 1}", "[1", "${HOME}", "\\x00"]
HUGE_NUMBERS = [10 ** 30, -10 ** 30, 2 ** 63, 2 ** 64 + 1, 10 ** 400, 1e308, -1e308,
                float("inf"), float("-inf"), float("nan"), 5e-324]
OUT_OF_RANGE = [-1, 0, -0.5, 1.5, -1e-9, 1.0000001, 2, -2 ** 31]
OTHER_TYPES = ["two", [1, 2], {"a": 1}, None, True, False, 3.5, "", "😀", [], {}, [[[]]]]
UNKNOWN_KEYS = ["lrr", "ñ", "", "Seed", "stages_count", "123", "methods", "__class__",
                "train.lr", "😀", " name", "NAME"]
URIS = ["sqlit:///x.db", "", "sqlite://x.db", "htp://h:5000", "ftp://x", "sqlite:///store.db",
        "postgres://u@h/db", "😀://x", "databricks", "::", "http//x", "C:\\x", "mlruns",
        "SQLITE:///x.db", "file:///nonexistent/mlruns", "s3://bucket/x", " sqlite:///x.db"]
PATHS = ["/nonexistent/model", "", "missing.jsonl", "ñ/missing", ".", "/dev/null", "sandbox",
         "/etc", "~/nope", "a" * 300]
TEXT_CHARS = ["\t", ":", "[", "{", "&", "*", "!", "%", "@", "`", "\x00", "\ufeff", "'", '"',
              "|", ">", "- ", "? ", "#", "\u2028", "\x85"]
WHOLE_FILES = [b"", b"---\n", b"[]\n", b"42\n", b"~\n", b"a: 1\n---\nb: 2\n", b"\xff\xfe\x00",
               b"name: !!python/object/apply:os.system ['echo hi']\n", b"name: *undefined\n",
               b"&a [*a]\n", b"name: " + b"[" * 2000 + b"]" * 2000 + b"\n",
               b"name: x\nstages: !!set {a, b}\n", b"name: !!binary aGVsbG8=\nstages: {}\n",
               b"\xef\xbb\xbfname: bom\n", "name: \u00e9\u0301\n".encode("utf-16")]


def _yaml_text(value) -> str:
    """A value as the right-hand side of ``-o key=value``."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip() \
        .removesuffix("...").strip()


# ----------------------------------------------------------------------------- spec mutations

def _nodes(data, path=()):
    """(path, value) for every key of every mapping and item of every list, depth first."""
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*path, k), v
            yield from _nodes(v, (*path, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*path, i), v
            yield from _nodes(v, (*path, i))


def _parent(data, path):
    for p in path[:-1]:
        data = data[p]
    return data


def _pick(rng, data, want=lambda v: True):
    nodes = [(p, v) for p, v in _nodes(data) if want(v)]
    return rng.choice(nodes) if nodes else (None, None)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def m_unknown_key(rng, data):
    path, node = _pick(rng, data, lambda v: isinstance(v, dict))
    target = data if path is None or rng.random() < 0.4 else node
    key = rng.choice(UNKNOWN_KEYS)
    target[key] = rng.choice(OTHER_TYPES + [1])
    return "unknown key"


def m_wrong_type(rng, data):
    path, _ = _pick(rng, data)
    _parent(data, path)[path[-1]] = copy.deepcopy(rng.choice(OTHER_TYPES))
    return "wrong type"


def m_out_of_range(rng, data):
    path, _ = _pick(rng, data, _is_number)
    if path is None:
        return m_wrong_type(rng, data)
    _parent(data, path)[path[-1]] = rng.choice(OUT_OF_RANGE + HUGE_NUMBERS)
    return "out of range"


def m_huge(rng, data):
    path, _ = _pick(rng, data, lambda v: not isinstance(v, (dict, list)))
    _parent(data, path)[path[-1]] = rng.choice(HUGE_NUMBERS)
    return "huge number"


def m_delete(rng, data):
    path, _ = _pick(rng, data)
    parent = _parent(data, path)
    del parent[path[-1]]
    return "missing key"


def m_swap_sections(rng, data):
    keys = [k for k in data if k != "name"]
    a, b = rng.sample(keys, 2)
    data[a], data[b] = data[b], data[a]
    return "swapped sections"


def m_unicode(rng, data):
    path, _ = _pick(rng, data, lambda v: isinstance(v, str))
    if path is None:
        data["name"] = rng.choice(WEIRD_STRINGS)
    else:
        _parent(data, path)[path[-1]] = rng.choice(WEIRD_STRINGS)
    return "unicode / odd string"


def m_empty(rng, data):
    path, _ = _pick(rng, data)
    _parent(data, path)[path[-1]] = rng.choice(["", [], {}, None])
    return "empty"


def m_section_type(rng, data):
    key = rng.choice([k for k in data if isinstance(data[k], (dict, list))] or ["train"])
    data[key] = rng.choice([5, "x", [data[key]], None, "", True])
    return "section of the wrong type"


def m_method_name(rng, data):
    methods = data.get("methods")
    if not isinstance(methods, list) or not methods \
            or not all(isinstance(m, dict) for m in methods):
        data["methods"] = rng.choice([[], "policylong", [{"name": "PolicyLong"}], [None]])
        return "methods list"
    m = rng.choice(methods)
    name = str(m.get("name", "policylong"))
    m["name"] = rng.choice([name.upper(), name.title(), name[:-1], name + "s", "PolicyLong",
                            "ＰｏｌｉｃｙＬｏｎｇ", "", "zzz", name])
    if rng.random() < 0.3:
        m["label"] = rng.choice(["standard", "", "ñ", None, 3])
    return "method name"


def m_benchmark_name(rng, data):
    ev = data.get("eval")
    if not isinstance(ev, dict) or not isinstance(ev.get("benchmarks"), list) \
            or not ev["benchmarks"] or not all(isinstance(b, dict) for b in ev["benchmarks"]):
        return m_method_name(rng, data)
    b = rng.choice(ev["benchmarks"])
    name = str(b.get("name", "ruler"))
    b["name"] = rng.choice([name.upper(), name.title(), name[:-1], "RULER", "LongBench_V2",
                            "", "probe ", name])
    if rng.random() < 0.3:
        b["tasks"] = rng.choice([["niah_single_1"], ["NIAH"], [], "cwe", [1]])
    return "benchmark name"


def m_tracking_uri(rng, data):
    data["tracking"] = {"uri": rng.choice(URIS)}
    return "tracking uri"


def m_missing_file(rng, data):
    section = rng.choice(["model", "corpus", "retrieval"])
    key = {"model": "path", "corpus": "path", "retrieval": "encoder"}[section]
    if not isinstance(data.get(section), dict):
        data[section] = {}
    data[section][key] = rng.choice(PATHS)
    return "missing file"


def m_lengths(rng, data):
    if not isinstance(data.get("eval"), dict):
        data["eval"] = {}
    data["eval"]["lengths"] = rng.choice([[], [0], [4096, 512], [512, 512], [-1], [10 ** 30],
                                          "512", [512.5], [None], list(range(1, 3000))])
    return "eval lengths"


SPEC_MUTATIONS = [m_unknown_key, m_wrong_type, m_out_of_range, m_huge, m_delete,
                  m_swap_sections, m_unicode, m_empty, m_section_type, m_method_name,
                  m_benchmark_name, m_tracking_uri, m_missing_file, m_lengths]


def t_duplicate_line(rng, text: str) -> str:
    lines = text.splitlines(keepends=True)
    keyed = [i for i, line in enumerate(lines) if re.match(r"\s*[A-Za-z_]\w*:", line)]
    if not keyed:
        return text + text
    i = rng.choice(keyed)
    return "".join(lines[:i + 1] + [lines[i]] + lines[i + 1:])


def t_truncate(rng, text: str) -> str:
    return text[:rng.randrange(len(text))]


def t_insert(rng, text: str) -> str:
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(TEXT_CHARS) + text[i:]


def t_indent(rng, text: str) -> str:
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    lines[i] = rng.choice(["   ", "\t", " "]) + lines[i]
    return "".join(lines)


TEXT_MUTATIONS = [t_duplicate_line, t_truncate, t_insert, t_indent]


# ----------------------------------------------------------------------------- command lines

def _override(rng, data) -> str:
    if rng.random() < 0.25:
        return rng.choice(["noequals", "=1", "a..b=1", ".=1", "methods.x.name=a",
                           "methods.99.name=a", "train.lr.x=1", "train=5", "seed=[1",
                           "seed={a: 1, a: 2}", "seed=!!python/object:os.system x", "name=ü",
                           "eval.lengths=[1, ", "stages.count=1e999", "seed=" + "9" * 500,
                           "tracking.uri=sqlit:///x.db", "methods.0.name=Standard",
                           "train.lrr=1", "=", "seed=&a [*a]", "ñ=1", "seed= "])
    path, _ = _pick(rng, data)
    if path is None:
        path = ("seed",)
    key = ".".join(str(p) for p in path)
    if rng.random() < 0.2:
        key = key[:-1] if len(key) > 1 else key + "x"
    value = rng.choice(OTHER_TYPES + HUGE_NUMBERS + OUT_OF_RANGE + WEIRD_STRINGS + [1, 0.5])
    return f"{key}={_yaml_text(value)}"


JUNK_FLAGS = [["--frobnicate"], ["--overr", "x=1"], ["-x"], ["--stage=x"], ["--"],
              ["--method"], ["--trials", "abc"], ["--help=no"], ["-o"], ["--verbose=1"],
              ["extra", "positional"], ["--spec"]]


def command_line(rng, spec: str, data, store_run: str) -> list[str]:
    cmd = rng.choices(["check", "compare", "construct", "tune", "eval", "study", "report",
                       "sandbox", "sync", "dashboard", "bench", "ls"],
                      weights=[40, 12, 10, 5, 6, 3, 8, 3, 3, 3, 3, 1])[0]
    argv = [cmd]
    if cmd in ("check", "compare", "study", "tune"):
        argv.append(spec)
    elif cmd == "construct":
        argv += [spec, "--method", rng.choice(["policylong", "PolicyLong", "standard", "",
                                               "zzz", "ñ", "entropylong"])]
        if rng.random() < 0.6:
            argv += ["--stage", rng.choice(["0", "1", "-1", "99", "x", "1e3", "9" * 40])]
    elif cmd == "eval":
        argv += [spec, "--model", rng.choice(["missing-model", "", "/dev/null"])]
        if rng.random() < 0.5:
            argv += ["--bench", *rng.sample(["ruler", "Ruler", "probe", "zzz", "helmet", ""],
                                            rng.randint(1, 2))]
        if rng.random() < 0.3:
            argv += ["--lengths", *rng.sample(["512", "0", "-1", "x", "99999999999"], 2)]
        if rng.random() < 0.3:
            argv += ["--backend", rng.choice(["hf", "vllm", "VLLM", "tpu"])]
    elif cmd == "report":
        argv.append(rng.choice([store_run, "deadbeef", "", "é/../x", "0" * 32, "' or 1=1 --"]))
        if rng.random() < 0.8:
            argv += ["--spec", spec]
        argv += ["--out", "report"]
    elif cmd == "sandbox":
        argv += ["build", "--spec", spec] if rng.random() < 0.8 else ["build"]
        if rng.random() < 0.3:
            argv.append("--from-scratch")
    elif cmd in ("sync", "dashboard"):
        argv += ["--uri", rng.choice(URIS)]
        if cmd == "dashboard" and rng.random() < 0.5:
            argv += ["--port", rng.choice(["5000", "x", "-1", "99999", ""])]
    elif cmd == "bench":
        argv.append(rng.choice(["scoring", "nope", "all", "overhead", "SCORING"]))
        if rng.random() < 0.3:
            argv += ["--lengths", rng.choice(["x", "512", "-5"])]
    if cmd in ("check", "compare", "construct", "tune", "eval", "study") or \
            (cmd == "sandbox" and "--spec" in argv):
        for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
            argv += [rng.choice(["-o", "--override"]), _override(rng, data)]
    if rng.random() < 0.1:
        argv += rng.choice(JUNK_FLAGS)
    if rng.random() < 0.1:
        argv.insert(rng.choice([0, 1]), "-v")
    return argv


# ----------------------------------------------------------------------------- the cases

BASES = {"smoke": REPO / "runs" / "smoke.yaml", "study": REPO / "runs" / "study" / "sandbox.yaml"}


def make_case(rng, folder: Path, store_uri: str, store_run: str) -> list[str]:
    """Write the case's inputs into ``folder``; return its command line."""
    base = "study" if rng.random() < 0.15 else "smoke"
    data = yaml.safe_load(BASES[base].read_text(encoding="utf-8"))
    data["output_dir"] = "out"
    data["tracking"] = {"uri": store_uri if rng.random() < 0.3 else "sqlite:///mlflow.db"}
    for mutate in rng.sample(SPEC_MUTATIONS, rng.choice([0, 0, 1, 1, 1, 1, 2, 3])):
        mutate(rng, data)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    if rng.random() < 0.25:
        text = rng.choice(TEXT_MUTATIONS)(rng, text)
    raw = text.encode("utf-8")
    if rng.random() < 0.04:
        raw = rng.choice(WHOLE_FILES)
    spec = folder / "spec.yaml"
    spec.write_bytes(raw)
    spec_arg = "spec.yaml"
    r = rng.random()
    if r < 0.03:
        spec_arg = "missing.yaml"
    elif r < 0.05:
        spec_arg = rng.choice(["", ".", "/dev/null", "ñ.yaml", "sub/"])
    return command_line(rng, spec_arg, data, store_run)


STUBS = ["harness.experiments.compare.compare", "harness.experiments.wiring.construct", "harness.experiments.tune.tune",
         "harness.experiments.tune.run_worker", "harness.experiments.study.study", "harness.evaluation.runner.model_limit",
         "harness.sandbox.build.build_sandbox", "harness.experiments.dashboard.run_dashboard",
         "harness.tracking.sync_spool", "harness.experiments.report.write_report"]


@pytest.fixture
def stubbed(monkeypatch):
    import harness.tools.bench

    def work(*args, **kwargs):
        raise WorkStarted

    for target in STUBS:
        monkeypatch.setattr(target, work)
    for name in dir(harness.tools.bench):
        if name.startswith("bench_"):
            monkeypatch.setattr(harness.tools.bench, name, work)


@pytest.fixture
def quiet_env(monkeypatch):
    """``main`` sets the libraries' log levels in os.environ and logging: undo it after."""
    from harness.logs import QUIET_ENV, QUIET_LOGGERS

    for key in [*QUIET_ENV, "VLLM_LOGGING_STREAM", "MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("POLICYLONG_SANDBOX_DIR", "sandbox-dir")   # relative: in the case
    monkeypatch.setenv("POLICYLONG_SPOOL_DIR", "spool")
    levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store with one comparison run, for ``report`` cases."""
    from harness.tracking import Tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    with Tracking(uri, "smoke").run("compare-fuzz", tags={"spec": "smoke"}) as parent:
        pass
    return uri, parent.run_id


def run_in_process(argv: list[str]) -> tuple[object, str, str]:
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:          # argparse: usage errors and --help
            rc = exc.code
        except WorkStarted:
            rc = "work"
    return rc, out.getvalue(), err.getvalue()


ERROR_LINE = re.compile(r"^(error: |policylong[\w -]*: error: )(.+)$", re.M)


def normalise(message: str, folder: Path) -> str:
    """An error message with its variable parts (paths, quoted values, numbers) blanked."""
    m = message.replace(str(folder), "<case>")
    m = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", m)
    m = re.sub(r"\(got [^)]*\)", "(got …)", m)
    m = re.sub(r"-?\d[\d_.e+]*", "N", m)
    return m[:160]


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()}


def test_fuzzed_command_lines_end_cleanly(tmp_path, monkeypatch, stubbed, quiet_env, store):
    rng = random.Random(SEED)
    outcomes: collections.Counter = collections.Counter()
    messages: collections.Counter = collections.Counter()
    failing: list[tuple[Path, list[str], str]] = []
    for i in range(N_CASES):
        folder = tmp_path / f"case{i:03d}"
        folder.mkdir()
        argv = make_case(rng, folder, *store)
        inputs = files_in(folder)
        monkeypatch.chdir(folder)
        rc, out, err = run_in_process(argv)
        where = f"case {i}: policylong {' '.join(argv)!r}\n{err[-3000:]}"
        assert "Traceback" not in out + err, where
        assert rc in (0, 2, "work"), where
        assert files_in(folder) == inputs, f"{where}\nwrote {files_in(folder) - inputs}"
        if rc == 2:
            first = ERROR_LINE.search(err)
            assert first, where
            # a spec's validation errors follow its first line, one per key: count the first
            detail = err[first.end():].lstrip("\n").splitlines()[:1]
            detail = detail[0].strip() if detail and detail[0].startswith("  ") else ""
            messages[normalise(f"{first.group(2)} {detail}".strip(), folder)] += 1
            failing.append((folder, argv, first.group(0)))
        outcomes[rc] += 1
    summary = "\n".join(f"  {n:3d}  {m}" for m, n in messages.most_common())
    print(f"\n{N_CASES} cases: {dict(outcomes)}; {len(messages)} distinct error messages:\n"
          f"{summary}")
    assert outcomes[2] >= N_CASES // 3 and outcomes[0] + outcomes["work"] >= N_CASES // 20
    assert len(messages) >= 40
    replay_as_processes(failing)


def replay_as_processes(failing) -> None:
    """Failing cases of different commands run again as real processes, without stubs: the
    same exit status and error line, no traceback."""
    exe = Path(sys.executable).with_name("policylong")
    prefix = [str(exe)] if exe.exists() else [sys.executable, "-m", "harness.cli"]
    chosen, seen = [], set()
    for folder, argv, line in failing:
        if argv[0] not in seen:
            seen.add(argv[0])
            chosen.append((folder, argv, line))
    chosen = chosen[:N_REPLAYED]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [(files_in(folder), subprocess.Popen(
        [*prefix, *argv], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True), folder, argv, line) for folder, argv, line in chosen]
    for before, proc, folder, argv, line in procs:
        out, err = proc.communicate(timeout=120)
        where = f"policylong {' '.join(argv)!r} in {folder}\n{err[-3000:]}"
        assert proc.returncode == 2 and "Traceback" not in out + err, where
        assert line in err.splitlines(), where
        assert files_in(folder) == before, where
    assert len(procs) == min(N_REPLAYED, len({a[0] for _, a, _ in failing}))
