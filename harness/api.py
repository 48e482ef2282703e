"""The public interface for plugins: method and benchmark plugins import from here only.

A **method** (``methods/``, or a package's ``policylong.methods`` entry point) implements
``Method``: a ``name``, which model screens its roots (``screening``), optionally its attention
rule (``attention``), and ``process(ctx, roots) -> list[RootResult]``, each result holding the
``Group``s built from one root. Screening and verification come from ``screen_and_verify``;
parameters are a ``Params`` model validated by ``validate_params``.

A **benchmark** (``benchmarks/``, or a ``policylong.benchmarks`` entry point) implements
``Benchmark`` (scored by generation: ``tasks``, ``samples``, ``score``) or ``LossBenchmark``
(scored by loss on the model: ``scored_by = "loss"``, ``headline``, ``metrics``, ``score``),
and is built as ``Class(entry)`` from its ``BenchmarkEntry``. The sandbox's world, its probe
entity splits and ``resolve`` (the registry) are here for the benchmarks that need them; a
benchmark class with ``uses_sandbox = True`` gets the built sandbox's folder as
``params.sandbox_dir`` when the spec's corpus is the sandbox (its substitutes for absent data).

Everything else in ``harness`` is internal and may move between releases; the names below keep
working (the test ``tests/test_layout.py`` enforces that plugins import nothing else).
"""
from __future__ import annotations

from harness.config import BenchmarkEntry, Spec, SpecError
from harness.construction.driver import Method, Resources, RootResult, StageContext
from harness.construction.params import Params, validate_params
from harness.construction.screening import (Candidate, RootScreening, Verdict,
                                            screen_and_verify)
from harness.construction.stage_data import Group
from harness.evaluation.loss_gap import PROBE_SPLITS, probe_set, probe_split, split_seed
from harness.evaluation.runner import Benchmark, LossBenchmark, NotRun, Sample, TaskScore
from harness.fileio import hub_offline
from harness.registry import resolve
from harness.sandbox import world

__all__ = [
    # methods
    "Method", "StageContext", "Resources", "RootResult", "Group", "Params", "validate_params",
    "screen_and_verify", "RootScreening", "Candidate", "Verdict",
    # benchmarks
    "Benchmark", "LossBenchmark", "BenchmarkEntry", "NotRun", "Sample", "TaskScore",
    "PROBE_SPLITS", "probe_set", "probe_split", "split_seed", "world", "resolve", "hub_offline",
    # both
    "Spec", "SpecError",
]
