"""Tracking on real parts: a real sqlite MLflow store and a real ``mlflow server``."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from harness.config import flatten, load_spec, resolved  # noqa: E402
from harness.tracking import (  # noqa: E402
    DEFAULT_DB, NULL_TRACKER, Tracking, check_reachable, eval_avg_key, eval_key, resolve_uri,
    stage_key, train_key,
)

ROOT = Path(__file__).parents[1]
SPEC = load_spec(ROOT / "runs" / "smoke.yaml")

STAGE = {0: 0.9, 1: 0.7, 2: 0.4}
TRAIN = {s: 5.0 - 0.5 * s for s in range(0, 50, 10)}
EVAL = {512: 0.8, 1024: 0.6, 2048: 0.3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def roundtrip(tracking: Tracking) -> None:
    """Parent + nested child, params, metrics at several steps, a dict artifact; read back."""
    config = resolved(SPEC)
    with tracking.run("comparison", tags={"kind": "comparison"}) as parent:
        parent.log_config(config)
        with tracking.run("standard", parent=parent) as child:
            child.log_config(config)
            for stage, v in STAGE.items():
                child.log_metrics({stage_key("kept_fraction"): v}, step=stage)
            for step, v in TRAIN.items():
                child.log_metrics({train_key("loss"): v, train_key("lr"): 1e-3}, step=step)
            for length, v in EVAL.items():
                child.log_metrics({eval_key("ruler", "niah_single_1", length): v,
                                   eval_avg_key("ruler", length): v / 2}, step=0)
            child.log_dict({"rows": [1, 2, 3]}, "manifests/stage0.json")
            child.set_tags({"method": "standard"})

    client = MlflowClient(tracking_uri=tracking.uri)
    p = client.get_run(parent.run_id)
    c = client.get_run(child.run_id)
    assert p.info.status == c.info.status == "FINISHED"
    assert p.info.experiment_id == c.info.experiment_id == tracking.experiment_id
    assert c.data.tags["mlflow.parentRunId"] == parent.run_id
    assert "mlflow.parentRunId" not in p.data.tags
    assert p.data.tags["kind"] == "comparison" and c.data.tags["method"] == "standard"
    assert [r.info.run_id for r in tracking.children(parent.run_id)] == [child.run_id]

    # params: the resolved config, flattened
    params = p.data.params
    assert params["train.lr"] == "0.0001"
    assert params["name"] == "smoke"
    assert params["methods.0.name"] == "standard"
    assert params["eval.lengths"] == str(config["eval"]["lengths"])
    assert set(params) == set(flatten(config))

    # metrics: names, steps, values
    def history(key):
        return sorted((m.step, m.value) for m in client.get_metric_history(child.run_id, key))

    assert history("stage/kept_fraction") == sorted(STAGE.items())
    assert history("train/loss") == sorted(TRAIN.items())
    assert history("train/lr") == [(s, 1e-3) for s in sorted(TRAIN)]
    for length, v in EVAL.items():
        assert history(f"eval/ruler/niah_single_1/{length}") == [(0, v)]
        assert history(f"eval/ruler/avg/{length}") == [(0, v / 2)]
    got = tracking.metric_history(child.run_id, train_key("loss"))
    assert sorted(got) == sorted(TRAIN.items())
    assert c.data.metrics["train/loss"] == TRAIN[max(TRAIN)]     # latest value

    # artifacts: config.json round-trips
    for run in (parent, child):
        names = [f.path for f in client.list_artifacts(run.run_id)]
        assert "config.json" in names
        path = client.download_artifacts(run.run_id, "config.json")
        assert json.loads(Path(path).read_text()) == config
    path = client.download_artifacts(child.run_id, "manifests/stage0.json")
    assert json.loads(Path(path).read_text()) == {"rows": [1, 2, 3]}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


def test_sqlite_roundtrip(store):
    tracking = Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="smoke")
    roundtrip(tracking)
    assert (store / "mlflow.db").is_file()
    assert (store / "mlartifacts").is_dir()       # artifacts next to the db
    # the same experiment is found again, not duplicated
    again = Tracking(uri=tracking.uri, experiment="smoke")
    assert again.experiment_id == tracking.experiment_id


def test_failed_run_is_marked(store):
    tracking = Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="failures")
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.run("parent") as parent:
            with tracking.run("child", parent=parent) as child:
                child.log_metrics({train_key("loss"): 1.0}, step=0)
                raise RuntimeError("boom")
    client = MlflowClient(tracking_uri=tracking.uri)
    for run in (child, parent):
        r = client.get_run(run.run_id)
        assert r.info.status == "FAILED"
        assert r.data.tags["failure_reason"] == "RuntimeError: boom"
    assert client.get_metric_history(child.run_id, "train/loss")[0].value == 1.0


def test_planned_stop_ends_the_run_finished(store):
    """A pruned trial (a planned stop) is not a failure: its run ends FINISHED, the exception
    still reaches the caller, and an enclosing run that does not expect it still fails."""
    import optuna

    tracking = Tracking(uri=f"sqlite:///{store}/mlflow.db", experiment="pruned")
    with pytest.raises(optuna.TrialPruned):
        with tracking.run("study") as parent:
            with tracking.run("trial-0", parent=parent,
                              finished_on=(optuna.TrialPruned,)) as child:
                raise optuna.TrialPruned("stage 1")
    client = MlflowClient(tracking_uri=tracking.uri)
    assert client.get_run(child.run_id).info.status == "FINISHED"
    assert "failure_reason" not in client.get_run(child.run_id).data.tags
    assert client.get_run(parent.run_id).info.status == "FAILED"


def test_deleted_experiment_is_restored(store):
    uri = f"sqlite:///{store}/mlflow.db"
    first = Tracking(uri=uri, experiment="deleted-once")
    first.client.delete_experiment(first.experiment_id)
    second = Tracking(uri=uri, experiment="deleted-once")
    assert second.experiment_id == first.experiment_id
    with second.run("after-restore") as run:
        run.log_metrics({stage_key("x"): 1.0}, step=0)
    assert second.metric_history(run.run_id, stage_key("x")) == [(0, 1.0)]


def test_null_tracker_is_a_noop():
    NULL_TRACKER.log_metrics({"a": 1.0}, step=0)
    NULL_TRACKER.log_params({"a": 1})
    NULL_TRACKER.log_config(resolved(SPEC))
    NULL_TRACKER.log_dict({}, "x.json")
    NULL_TRACKER.set_tags({"a": "b"})


def test_metric_keys():
    assert stage_key("kept") == "stage/kept"
    assert train_key("loss") == "train/loss"
    assert eval_key("ruler", "vt", 4096) == "eval/ruler/vt/4096"
    assert eval_avg_key("ruler", 4096) == "eval/ruler/avg/4096"


def test_resolve_uri(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert resolve_uri() == "http://tracking.example:5000"
    assert resolve_uri("sqlite:///other.db") == "http://tracking.example:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_uri("sqlite:///other.db") == "sqlite:///other.db"
    uri = resolve_uri()
    assert uri.startswith("sqlite:///") and uri.endswith(DEFAULT_DB)
    assert uri.endswith("runs/mlflow.db")
    assert Path(uri[len("sqlite:///"):]).is_absolute()
    assert resolve_uri(root=tmp_path) == f"sqlite:///{tmp_path.resolve()}/runs/mlflow.db"


def test_check_reachable_refused():
    uri = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError) as exc:
        check_reachable(uri, timeout_s=5)
    assert uri in str(exc.value)
    assert time.monotonic() - t0 < 5
    check_reachable("sqlite:///nowhere/mlflow.db")    # local stores are not probed


# --- a live server ------------------------------------------------------------------------

def start_server(tmp_path, port: int) -> subprocess.Popen:
    log = open(tmp_path / "server.log", "ab")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path}/srv.db",
         "--default-artifact-root", str(tmp_path / "art"), "--workers", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited {proc.returncode}:\n"
                        + (tmp_path / "server.log").read_text(errors="replace")[-3000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            pytest.fail("mlflow server did not answer /health within 90 s:\n"
                        + (tmp_path / "server.log").read_text(errors="replace")[-3000:])
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = start_server(tmp_path, port)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        stop_server(proc)


def test_live_server_roundtrip(mlflow_server):
    url, tmp_path = mlflow_server
    check_reachable(url)
    check_reachable(url + "/")
    tracking = Tracking(uri=url, experiment="smoke-server")
    roundtrip(tracking)
    assert any((tmp_path / "art").rglob("config.json"))   # stored where the server said


def test_metrics_survive_a_server_that_goes_away(tmp_path, monkeypatch):
    """The server dies mid-run: logging does not raise, the metrics wait in the spool, and
    reach the server when it is back: a run's with its next metrics, a run that logs nothing
    more by ``policylong sync``."""
    from harness.cli import main
    from harness.tracking import spool_dir

    monkeypatch.setenv("POLICYLONG_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(tmp_path, port)
    try:
        tracking = Tracking(uri=url, experiment="flaky")
        run, quiet = tracking.start_run("train"), tracking.start_run("eval")
        run.log_metrics({"train/loss": 3.0}, 0)
        stop_server(proc, signal.SIGKILL)
        run.log_metrics({"train/loss": 2.0}, 1)            # no exception: spooled
        run.log_metrics({"train/loss": 1.5}, 2)
        quiet.log_metrics({"eval/acc": 0.5}, 0)
        spooled = spool_dir() / f"{run.run_id}.jsonl"
        left = spool_dir() / f"{quiet.run_id}.jsonl"
        assert len(spooled.read_text().splitlines()) == 2
        assert len(left.read_text().splitlines()) == 1
        proc = start_server(tmp_path, port)
        run.log_metrics({"train/loss": 1.0}, 3)            # the spool goes first
        assert not spooled.exists() and left.exists()     # each run sends its own
        assert tracking.metric_history(run.run_id, "train/loss") == \
            [(0, 3.0), (1, 2.0), (2, 1.5), (3, 1.0)]
        assert main(["sync", "--uri", url]) == 0
        assert not left.exists()
        assert tracking.metric_history(quiet.run_id, "eval/acc") == [(0, 0.5)]
    finally:
        stop_server(proc)


def test_secrets_from_the_environment_never_reach_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_aVeryPrivateToken123")
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "hunter2hunter2")
    tracking = Tracking(f"sqlite:///{tmp_path}/m.db", "secrets")
    with tracking.run("r") as run:
        run.log_config({"corpus": {"path": "hf:org/data?token=hf_aVeryPrivateToken123"},
                        "note": "pw hunter2hunter2", "lr": 0.1})
        run.set_tags({"cmd": "--password hunter2hunter2"})
    r = tracking.client.get_run(run.run_id)
    assert r.data.params["corpus.path"] == "hf:org/data?token=***"
    assert r.data.params["note"] == "pw ***" and r.data.params["lr"] == "0.1"
    assert r.data.tags["cmd"] == "--password ***"
    art = Path(r.info.artifact_uri.replace("file://", "")) / "config.json"
    assert "hf_aVeryPrivateToken123" not in art.read_text()
    assert "hunter2hunter2" not in art.read_text()
