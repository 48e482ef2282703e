"""Retake the README's dashboard screenshot: the MLflow UI with a comparison open.

    .venv/bin/python scripts/dashboard_screenshot.py [--uri sqlite:///runs/mlflow.db]
        [--experiment smoke] [--out docs/img/dashboard.png]

Starts ``policylong dashboard``'s MLflow UI on a free port of 127.0.0.1, finds the latest
``compare-*`` run of the experiment, opens the experiment's chart view with that comparison's
runs in headless Chromium (Debian's ``chromium`` package), writes the PNG and stops the UI.
Run ``make main`` first so that the store holds a comparison.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    from harness.experiments.dashboard import start_mlflow_ui, stop, wait_healthy
    from harness.tracking import Tracking, resolve_uri

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", default=None, help="tracking store (default: the project's)")
    ap.add_argument("--experiment", default="smoke")
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "dashboard.png"))
    ap.add_argument("--size", default="1800,1100", help="window width,height in pixels")
    ap.add_argument("--wait-ms", type=int, default=20000,
                    help="virtual time Chromium gives the page to render")
    args = ap.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("error: chromium not found (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    uri = resolve_uri(args.uri)
    tracking = Tracking(uri, args.experiment)
    parents = [r for r in tracking.client.search_runs([tracking.experiment_id],
                                                      order_by=["attributes.start_time DESC"])
               if (r.info.run_name or "").startswith("compare-")]
    if not parents:
        print(f"error: no compare-* run in experiment '{args.experiment}' of {uri}; "
              f"run `make main` first", file=sys.stderr)
        return 2
    parent = parents[0].info.run_id
    port = free_port()
    proc = start_mlflow_ui(uri, port)
    try:
        wait_healthy(port)
        url = (f"http://127.0.0.1:{port}/#/experiments/{tracking.experiment_id}"
               f"/runs/{parent}/artifacts/report/report.html")
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                            "--hide-scrollbars", f"--user-data-dir={profile}",
                            f"--window-size={args.size}",
                            f"--virtual-time-budget={args.wait_ms}",
                            f"--screenshot={out.resolve()}", url],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=180)
        print(f"{out}  ({url})")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
