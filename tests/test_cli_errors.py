"""A user's mistake answered with one ``error:`` line (exit 2) before any work (issue 21): an
unknown run id, a tracking URI MLflow cannot open, a key given twice in a YAML file, a method or
benchmark name in the wrong case. And quiet by default: third-party INFO logs only with ``-v``.
The CLI runs in-process (``harness.cli.main``), as the console script does, except where the
process itself is the point."""
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_bad_input import run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec_file(tmp_path):
    data = yaml.safe_load((REPO / "runs" / "smoke.yaml").read_text())
    data["output_dir"] = str(tmp_path / "out")
    data["tracking"] = {"uri": f"sqlite:///{tmp_path}/mlflow.db"}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


@pytest.fixture(autouse=True)
def _restore_logging_env(monkeypatch):
    """``main`` sets the libraries' log levels in os.environ: keep them out of other tests."""
    from harness.logs import QUIET_ENV, QUIET_LOGGERS

    for key in [*QUIET_ENV, "VLLM_LOGGING_STREAM"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    levels = {n: logging.getLogger(n).level for n in QUIET_LOGGERS}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ unknown run id

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real MLflow store holding one finished comparison run."""
    from harness.tracking import Tracking

    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    tracking = Tracking(uri, "smoke")
    with tracking.run("compare-0123456789ab", tags={"spec": "smoke"}) as parent:
        pass
    return uri, parent.run_id


@pytest.mark.parametrize("run_id", ["deadbeef", "é/../x", "' or 1=1 --"])
def test_unknown_run_id_names_it_and_lists_the_comparisons(run_id, store, tmp_path, capsys,
                                                           monkeypatch):
    uri, known = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rc, err = run(capsys, "report", run_id, "--out", tmp_path / "report")
    assert rc == 2
    line = one_error_line(err)
    assert f"no run '{run_id}' in the tracking store {uri}" in line
    assert f"recent comparisons: {known} (smoke)" in line
    assert f"`policylong dashboard --uri {uri}` lists every run" in line
    assert not (tmp_path / "report").exists()


def test_report_on_a_store_that_does_not_exist_creates_none(spec_file, tmp_path, capsys):
    rc, err = run(capsys, "report", "deadbeef", "--spec", spec_file, "--out", tmp_path / "r")
    assert rc == 2
    line = one_error_line(err)
    assert f"the tracking store sqlite:///{tmp_path}/mlflow.db does not exist" in line
    assert "--spec" in line
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------ tracking URI

@pytest.mark.parametrize("uri,pattern", [
    ("sqlit:///x.db", r"tracking\.uri 'sqlit:///x\.db': MLflow does not support the scheme "
                      r"'sqlit'; did you mean 'sqlite'\? \(supported: .*sqlite"),
    ("htps://example.org", r"scheme 'htps'; did you mean 'https'\?"),
    ("sqlite://x.db", r"'sqlite://x\.db': a SQLite store is written sqlite:///PATH\.db"),
])
@pytest.mark.parametrize("command", ["check", "compare"])
def test_tracking_uri_mlflow_cannot_open_is_refused_before_any_work(
        command, uri, pattern, spec_file, tmp_path, capsys):
    rc, err = run(capsys, command, spec_file, "-o", f"tracking.uri={uri}")
    assert rc == 2
    line = one_error_line(err)
    assert re.search(pattern, line) and str(spec_file) in line, line
    assert not (tmp_path / "out").exists()


def test_tracking_uri_from_the_environment_is_named_as_such(spec_file, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlit:///x.db")
    rc, err = run(capsys, "check", spec_file)
    assert rc == 2
    assert one_error_line(err).startswith("error: MLFLOW_TRACKING_URI 'sqlit:///x.db': MLflow "
                                          "does not support the scheme 'sqlit'")


@pytest.mark.parametrize("uri", ["sqlite:///runs/mlflow.db", "sqlite:////tmp/x.db",
                                 "http://127.0.0.1:5000", "https://example.org", "databricks",
                                 "postgresql://u@h/db", "mysql://u@h/db"])
def test_tracking_uris_mlflow_opens_pass(uri):
    from harness.tracking import check_uri

    check_uri(uri)


@pytest.mark.parametrize("uri", ["mlruns", "/tmp/mlruns", "file:///tmp/mlruns"])
def test_folder_stores_need_mlflows_opt_in(uri, monkeypatch):
    from harness.tracking import UnsupportedTrackingURI, check_uri

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UnsupportedTrackingURI, match="MLFLOW_ALLOW_FILE_STORE=true .*use "
                                                     "sqlite:///PATH.db"):
        check_uri(uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_uri(uri)


def test_sync_and_dashboard_check_their_uri(capsys):
    for cmd in ("sync", "dashboard"):
        rc, err = run(capsys, cmd, "--uri", "sqlit:///x.db")
        assert rc == 2
        assert one_error_line(err).startswith("error: --uri 'sqlit:///x.db': MLflow does not "
                                              "support the scheme 'sqlit'")


# ------------------------------------------------------------------------------ duplicate keys

DUPLICATES = {
    "top level": ("name: x\nseed: 0\nstages:\n  count: 2\nseed: 3\n",
                  "duplicate key 'seed' at the top level on lines 2 and 5"),
    "nested": ("name: x\nstages:\n  count: 2\n  tokens_per_stage: 4096\n  count: 3\n",
               "duplicate key 'count' under 'stages' on lines 3 and 5"),
    "in a list": ("name: x\nmethods:\n  - name: standard\n    label: a\n    label: b\n",
                  "duplicate key 'label' under 'methods.0' on lines 4 and 5"),
    "quoted": ("name: x\n'seed': 0\n\"seed\": 1\n",
               "duplicate key 'seed' at the top level on lines 2 and 3"),
    "flow": ("name: x\ntrain: {lr: 1.0e-3, lr: 2.0e-3}\n",
             "duplicate key 'lr' under 'train' on lines 2 and 2"),
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_a_key_given_twice_names_both_lines(case, tmp_path, capsys):
    text, expected = DUPLICATES[case]
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    rc, err = run(capsys, "check", p)
    assert rc == 2
    assert one_error_line(err) == f"error: {p}: {expected}; each key may appear once (remove one)"


def test_duplicate_keys_in_a_study_file_and_an_override_value(tmp_path, capsys):
    study = (REPO / "runs" / "study" / "sandbox.yaml").read_text()
    p = tmp_path / "study.yaml"
    p.write_text(study.replace("study:\n", "study:\n  seeds: [0]\n", 1) + "\nstudy: {}\n")
    rc, err = run(capsys, "check", p)
    assert rc == 2 and "duplicate key" in one_error_line(err)
    rc, err = run(capsys, "check", REPO / "runs" / "smoke.yaml", "-o", "train={lr: 1, lr: 2}")
    assert rc == 2
    assert "override 'train={lr: 1, lr: 2}': its value is duplicate key 'lr'" in err


def test_merge_keys_and_aliases_are_not_duplicates():
    from harness.config import _yaml_load

    data = _yaml_load("base: &b {lr: 1, wd: 2}\ntrain:\n  <<: *b\n  lr: 3\nother: *b\n")
    assert data["train"] == {"lr": 3, "wd": 2} and data["other"] == {"lr": 1, "wd": 2}


def test_every_shipped_yaml_has_unique_keys():
    from harness.config import _yaml_load

    files = sorted(REPO.glob("runs/**/*.yaml"))
    assert files
    for p in files:
        _yaml_load(p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("text,pattern", [
    ("name: [1\n", r"not valid YAML at line 2, column 1 \(while parsing a flow sequence"),
    ("name: " + "[" * 3000 + "]" * 3000 + "\n", r"not valid YAML \(nested too deeply"),
])
def test_invalid_yaml_is_one_line_with_its_position(text, pattern, tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    rc, err = run(capsys, "check", p)
    assert rc == 2 and re.search(pattern, one_error_line(err)), err


# ------------------------------------------------------------------------------ names, any case

def test_method_flag_in_the_wrong_case_gets_the_name(spec_file, tmp_path, capsys):
    rc, err = run(capsys, "construct", spec_file, "--method", "PolicyLong")
    assert rc == 2
    assert one_error_line(err) == (
        f"error: --method 'PolicyLong' is not a method of {spec_file}; did you mean "
        f"'policylong'? (its methods: standard, nextlong, entropylong, policylong)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["check", "compare"])
@pytest.mark.parametrize("key,value,expected", [
    ("methods.3.name", "PolicyLong", "unknown method 'PolicyLong'; did you mean 'policylong'?"),
    ("methods.1.name", "NEXTLONG", "unknown method 'NEXTLONG'; did you mean 'nextlong'?"),
    ("eval.benchmarks.1.name", "RULER", "unknown benchmark 'RULER'; did you mean 'ruler'?"),
    ("eval.benchmarks.2.name", "LongBench_V2",
     "unknown benchmark 'LongBench_V2'; did you mean 'longbench_v2'?"),
])
def test_names_in_the_wrong_case_get_a_suggestion(command, key, value, expected, spec_file,
                                                  tmp_path, capsys):
    rc, err = run(capsys, command, spec_file, "-o", f"{key}={value}")
    assert rc == 2
    line = one_error_line(err)
    assert f"{spec_file}: {key}: {expected}" in line and "`policylong ls`" in line, line
    assert not (tmp_path / "out").exists()


def test_bench_flag_in_the_wrong_case_gets_the_name(spec_file, capsys):
    rc, err = run(capsys, "eval", spec_file, "--model", "/nonexistent", "--bench", "Ruler")
    assert rc == 2
    assert "--bench: unknown benchmark 'Ruler'; did you mean 'ruler'?" in one_error_line(err)


def test_close_names_ignore_case():
    from harness.registry import close_names

    known = ["standard", "nextlong", "entropylong", "policylong"]
    assert close_names("PolicyLong", known) == ["policylong"]
    assert close_names("ENTROPYLNG", known)[0] == "entropylong"
    assert close_names("zzz", known) == []


# ------------------------------------------------------------------------------ quiet by default

_LEVELS = """
import logging, os, subprocess, sys
from harness.logs import configure
configure(%s)
import transformers, mlflow
import vllm.envs   # vLLM configures its loggers from this when an engine starts (LoggingConfig)
child = subprocess.run([sys.executable, "-c",
                        "import os; print(os.environ.get('VLLM_LOGGING_LEVEL'))"],
                       capture_output=True, text=True).stdout.strip()
print(transformers.logging.get_verbosity(), logging.getLogger("mlflow").getEffectiveLevel(),
      vllm.envs.VLLM_LOGGING_LEVEL, logging.getLogger("faiss").getEffectiveLevel(),
      logging.getLogger("sentence_transformers").getEffectiveLevel(), child)
"""


def test_third_party_info_logs_only_with_verbose():
    env = {k: v for k, v in os.environ.items()
           if k not in ("VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "MLFLOW_LOGGING_LEVEL")}
    procs = {verbose: subprocess.Popen([sys.executable, "-c", _LEVELS % verbose], cwd=REPO,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
             for verbose in (False, True)}
    W, I = str(logging.WARNING), str(logging.INFO)
    for verbose, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        tf, mlf, vllm, faiss, st, child = out.split()[-6:]
        if verbose:   # the libraries' own defaults: transformers warns, vLLM and MLflow say INFO
            assert (tf, mlf, vllm, child) == (W, I, "INFO", "None")
        else:         # warnings still show; vLLM's processes inherit the level
            assert (tf, mlf, vllm, faiss, st, child) == (W, W, "WARNING", W, W, "WARNING")


def test_a_new_store_prints_no_mlflow_info_without_verbose(tmp_path):
    """At the process level: creating an MLflow store logs INFO lines (its tables) by default."""
    exe = Path(sys.executable).with_name("policylong")
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "harness.cli"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    env["POLICYLONG_SPOOL_DIR"] = str(tmp_path / "spool")
    r = subprocess.run([*argv, "sync", "--uri", f"sqlite:///{tmp_path}/mlflow.db"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "mlflow.db").exists()
    assert " INFO " not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_verbose_is_taken_before_and_after_the_subcommand():
    from harness.cli import build_parser

    p = build_parser()
    assert p.parse_args(["-v", "ls"]).verbose is True
    assert p.parse_args(["check", "x.yaml", "--verbose"]).verbose is True
    assert not getattr(p.parse_args(["check", "x.yaml"]), "verbose", False)


def test_phase_prints_one_line(capsys):
    from harness.logs import phase, timed

    phase("policylong", 1, "train", 412.34)
    with timed("standard", None, "eval"):
        pass
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[phase] policylong stage 1 train 412.3 s"
    assert re.fullmatch(r"\[phase\] standard eval 0\.0 s", err[1])
