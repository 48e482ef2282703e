"""The ``policylong`` command line, run as a real subprocess from the repository root."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

from harness.config import load_spec, spec_hash

ROOT = Path(__file__).parents[1]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=timeout)


def test_check_prints_resolved_config_and_hash():
    r = cli("check", "runs/smoke.yaml")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[-1] == f"# config hash: {spec_hash(load_spec(ROOT / 'runs/smoke.yaml'))}"
    body = yaml.safe_load(r.stdout)                   # the hash line is a YAML comment
    assert body["name"] == "smoke" and body["train"]["lr"] == 1e-4
    assert body["train"]["weight_decay"] == 0.1       # defaults are filled in


def test_check_with_override_changes_hash():
    r = cli("check", "runs/smoke.yaml", "-o", "train.lr=2e-3", "--override", "seed=3")
    assert r.returncode == 0, r.stderr
    spec = load_spec(ROOT / "runs/smoke.yaml", ["train.lr=2e-3", "seed=3"])
    assert r.stdout.splitlines()[-1] == f"# config hash: {spec_hash(spec)}"
    assert spec_hash(spec) != spec_hash(load_spec(ROOT / "runs/smoke.yaml"))


def test_check_bad_override_fails_naming_key():
    r = cli("check", "runs/smoke.yaml", "-o", "train.lrr=1")
    assert r.returncode == 2
    assert "train.lrr" in r.stderr and "train.lr'" in r.stderr
    assert "Traceback" not in r.stderr
    assert "# config hash" not in r.stdout


def test_check_missing_file_fails_cleanly():
    r = cli("check", "runs/no-such-spec.yaml")
    assert r.returncode == 2
    assert "no-such-spec.yaml" in r.stderr and "Traceback" not in r.stderr


def test_ls_lists_registries():
    r = cli("ls")
    assert r.returncode == 0, r.stderr
    assert "methods:" in r.stdout and "benchmarks:" in r.stdout
    assert "sandbox_properties" in r.stdout


def test_ls_imports_nothing_heavy():
    code = ("import sys; from harness.cli import main; main(['ls']); "
            "print(any(m in sys.modules for m in ('torch','vllm','mlflow','faiss')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "False"


def test_prefix_abbreviation_refused():
    r = cli("check", "runs/smoke.yaml", "--overr", "train.lr=1")
    assert r.returncode == 2
    assert "--overr" in r.stderr
    r = cli("ls", "--hel")                           # not taken for --help
    assert r.returncode == 2
    assert "--hel" in r.stderr


def test_no_subcommand_is_usage_error():
    r = cli()
    assert r.returncode == 2 and "usage:" in r.stderr
