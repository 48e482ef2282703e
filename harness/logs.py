"""What the command line prints besides results: quiet third-party libraries, one line per phase.

``configure(verbose)`` runs first in ``policylong`` (before vLLM, transformers, MLflow, FAISS or
sentence-transformers are imported): without ``-v`` their INFO lines are silenced, warnings and
errors still show, and progress bars stay. The libraries read their level from environment
variables when they are imported, so the levels are set there too, and every process they
spawn (vLLM's engine core and workers, tuning workers) inherits them. A level the user exported
already is kept.

vLLM's log lines go to stderr (its default is stdout), so that stdout holds results only.

``phase(method, stage, what, seconds)`` prints the one line a comparison shows per phase.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Iterator

# Environment variables the libraries read at import time (and their subprocesses inherit).
QUIET_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TRANSFORMERS_VERBOSITY": "warning",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "HF_HUB_VERBOSITY": "warning",
    "DATASETS_VERBOSITY": "warning",
}
# Loggers set to WARNING in this process (libraries without an environment variable).
QUIET_LOGGERS = ("vllm", "transformers", "mlflow", "alembic", "faiss", "sentence_transformers",
                 "accelerate", "datasets", "huggingface_hub", "httpx", "urllib3", "filelock")


def configure(verbose: bool = False) -> None:
    """Silence third-party INFO logs unless ``verbose``; with it, leave the libraries' own
    defaults (INFO for vLLM and MLflow)."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")   # stdout is for results
    # No usage telemetry: nothing leaves the machine (MLflow's background telemetry thread
    # also changes os.environ while other code reads it); a user may still opt in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    if verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def phase(method: str, stage: int | None, what: str, seconds: float) -> None:
    """One line on stderr for one finished phase of a comparison, e.g.
    ``[phase] policylong stage 1 train 412.3 s``."""
    where = f" stage {stage}" if stage is not None else ""
    print(f"[phase] {method}{where} {what} {seconds:.1f} s", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(method: str, stage: int | None, what: str) -> Iterator[None]:
    """``with timed("policylong", 1, "train"): ...`` prints the phase line when the block
    finishes (nothing when it raises: the error says what happened)."""
    t0 = time.perf_counter()
    yield
    phase(method, stage, what, time.perf_counter() - t0)
