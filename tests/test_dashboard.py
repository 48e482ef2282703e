import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_runs_and_stops_on_interrupt(tmp_path):
    from harness.tracking import Tracking
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracking(uri, "dash")
    with tr.run("compare-x") as parent:
        with tr.run("policylong", parent=parent) as child:
            child.log_metrics({"stage/loss_gap_probe": 0.25}, 1)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "dashboard", "--uri", uri,
                             "--port", str(port), "--optuna-storage", ""],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [tr.experiment_id]}).encode(),
            headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(req, timeout=30).read())["runs"]
        names = {r["info"]["run_name"] for r in runs}
        assert names == {"compare-x", "policylong"}
        child = next(r for r in runs if r["info"]["run_name"] == "policylong")
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        assert metrics["stage/loss_gap_probe"] == 0.25
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)    # the UI gets 10 s to stop gracefully, then SIGKILL
    # the UI went down with it
    time.sleep(1)
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3)
        up = True
    except OSError:
        up = False
    assert not up
