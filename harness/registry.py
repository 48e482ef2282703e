"""Registries with lazy targets (STYLE: lm-eval's registry).

Names map to ``"module:attr"`` strings, so listing imports nothing heavy. Third-party packages
add entries through the entry-point groups ``policylong.methods`` and ``policylong.benchmarks``.
An unknown name fails with the closest known names.
"""
from __future__ import annotations

import difflib
import importlib
from importlib import metadata
from typing import Any, Iterable

# Built-in entries: name -> (target, one-line description). Filled as features land.
METHODS: dict[str, tuple[str, str]] = {
    "standard": ("methods.standard:Standard",
                 "randomly concatenated documents packed to the target length (baseline)"),
    "nextlong": ("methods.nextlong:NExtLong",
                 "meta-chunks interleaved with hard-negative chunks (ICML 2025)"),
    "entropylong": ("methods.entropylong:EntropyLong",
                    "verified contexts before the root, screened by the base model (ICLR 2026)"),
    "policylong": ("methods.policylong:PolicyLong",
                   "verification re-run with the current checkpoint every stage (2604.07809)"),
    # controls (ours): a description starting "control:" marks one (the report labels them)
    "oracle": ("methods.oracle:Oracle",
               "control: the roots' true profiles from ground truth before the root (sandbox; "
               "ceiling)"),
    "random_context": ("methods.random_context:RandomContext",
                       "control: random chunks of other documents before the root, filling "
                       "the group (floor)"),
}
BENCHMARKS: dict[str, tuple[str, str]] = {
    "probe": ("benchmarks.probe:Probe",
              "sandbox probe: planted-value recall and NLL at controlled distances (by loss)"),
    "probe_lookalike": ("benchmarks.probe:ProbeLookalike",
                        "sandbox probe with the entity's look-alike profile as a distractor "
                        "(by loss)"),
    "sandbox_properties": ("harness.sandbox.properties:measure",
                           "the sandbox world's mechanism checks (anchors, ΔI, look-alikes)"),
    # generation benchmarks: classes implementing harness.api.Benchmark
    "ruler": ("benchmarks.adapters:Ruler",
              "RULER's 13 tasks per length (11 offline; qa_1/qa_2 with their data files)"),
    "longbench_v2": ("benchmarks.adapters:LongBenchV2",
                     "LongBench-v2 multiple choice, 0-shot, middle-truncated to each length"),
    "helmet_recall": ("benchmarks.adapters:HelmetRecall",
                      "HELMET Recall (json_kv, ruler_niah_mk_2/mk_3/mv), generated per tokenizer"),
    "helmet": ("benchmarks.adapters:Helmet",
               "HELMET: Recall generated; RAG and re-rank from a HELMET data folder"),
}

# named base models (``model.path: <name>``): the target gives the model's identity for a spec,
# which the output layout hashes (``harness.layout.model_identity``)
MODEL_SOURCES: dict[str, tuple[str, str]] = {
    "sandbox": ("harness.sandbox.build:model_identity",
                "the embedded sandbox's base model, keyed by world seed and pre-training recipe"),
}

_GROUPS = {"method": ("policylong.methods", METHODS),
           "benchmark": ("policylong.benchmarks", BENCHMARKS),
           "model_source": ("policylong.model_sources", MODEL_SOURCES)}


class UnknownName(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def entries(kind: str) -> dict[str, tuple[str, str]]:
    group, builtin = _GROUPS[kind]
    out = dict(builtin)
    for ep in metadata.entry_points(group=group):
        out.setdefault(ep.name, (ep.value, f"from package {ep.dist.name if ep.dist else '?'}"))
    return out


def close_names(name: str, known: Iterable[str], n: int = 3) -> list[str]:
    """The known names closest to ``name``, ignoring case (``PolicyLong`` -> ``policylong``)."""
    by_lower: dict[str, list[str]] = {}
    for k in known:
        by_lower.setdefault(k.lower(), []).append(k)
    if name.lower() in by_lower:
        return by_lower[name.lower()][:n]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=n)
    return [k for c in close for k in by_lower[c]][:n]


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """``"; did you mean 'x'?"`` for the ``n`` closest known names, or ``""``."""
    close = close_names(name, known, n)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def check_known(kind: str, name: str, where: str = "") -> None:
    """Fail with the closest names (and every known one) unless ``name`` is registered."""
    known = entries(kind)
    if name not in known:
        prefix = f"{where}: " if where else ""
        raise UnknownName(f"{prefix}unknown {kind} '{name}'{did_you_mean(name, known)} "
                          f"(known: {', '.join(sorted(known)) or 'none'}; `policylong ls` "
                          f"lists them)")


def resolve(kind: str, name: str) -> Any:
    check_known(kind, name)
    known = entries(kind)
    module, _, attr = known[name][0].partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj
