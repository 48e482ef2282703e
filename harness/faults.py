"""Named fault points: where the reliability tests kill a real run.

``POLICYLONG_KILL_AT=<point>`` makes the process SIGKILL itself (no cleanup, no ``finally``,
like ``kill -9`` or the OOM killer) the first time it reaches that point:

* ``index``: chunk embeddings written, index and manifest not yet;
* ``screening``: after the first round of screening of a stage;
* ``dataset-write``: stage dataset files written, its manifest not yet;
* ``train``: mid-stage, right after the first periodic training state was saved;
* ``train-late``: the same in a stage after the first (the optimizer state and the schedule
  continue from the previous stage);
* ``eval``: a checkpoint's benchmarks scored, their cache file not yet written.

Unset (always, outside tests) it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "POLICYLONG_KILL_AT"
POINTS = ("index", "screening", "dataset-write", "train", "train-late", "eval")


def point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
