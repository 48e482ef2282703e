"""``policylong dashboard``: the MLflow UI on 127.0.0.1 for the project's store (and
optuna-dashboard for the study store when it is installed); Ctrl-C stops both cleanly."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_mlflow_ui(uri: str, port: int, host: str = "127.0.0.1") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        art = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        cmd += ["--default-artifact-root", art.resolve().as_uri()]
    return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_healthy(port: int, timeout_s: float = 120.0, host: str = "127.0.0.1") -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the MLflow UI did not answer on http://{host}:{port} "
                       f"within {timeout_s:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def controls_line() -> str:
    """The MLflow UI names a comparison's nested runs by method label; this line says which
    registered methods are controls (``harness.experiments.report.control_names``)."""
    from harness.experiments.report import control_names

    names = ", ".join(sorted(control_names())) or "none registered"
    return (f"Controls: runs labelled {names} are controls (a ceiling and a floor), not "
            f"data-construction methods; the report marks them \"(control)\".")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_dashboard(uri: str, port: int, optuna_storage: str | None, optuna_port: int) -> int:
    # Ctrl-C and SIGTERM stop both UIs even when the shell started us with SIGINT ignored
    # (a background job of a non-interactive shell inherits SIGINT and SIGQUIT ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    procs = [start_mlflow_ui(uri, port)]
    wait_healthy(port)
    print(f"MLflow UI: http://127.0.0.1:{port}  (store {uri})", flush=True)
    print(controls_line(), flush=True)
    if optuna_storage and shutil.which("optuna-dashboard"):
        procs.append(subprocess.Popen(["optuna-dashboard", optuna_storage, "--host",
                                       "127.0.0.1", "--port", str(optuna_port)],
                                      start_new_session=True))
        print(f"Optuna dashboard: http://127.0.0.1:{optuna_port}", flush=True)
    print("Ctrl-C to stop.", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            stop(p)
    return 0
