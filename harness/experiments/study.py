"""``policylong study STUDY``: a comparison repeated over seeds, read back from MLflow, with the
paper's three claims judged by rules fixed in the study file before any result is seen.

A study file is a comparison spec (every key ``compare`` takes) plus a ``study:`` block
(``StudySettings``). Each seed runs ``compare`` with ``seed`` and ``train.seed`` set to it and its
own output folder (``<output_dir>/seed-<s>``) and one cache (``<output_dir>/cache``: the corpus is
tokenized and embedded once for all seeds); finished seeds are cached like any comparison, so a
rerun only does what is missing. The report (``study.report``, by default ``docs/study.md``, with
its plots beside it) is generated from the MLflow runs of the seeds, never from memory. Each
seed's results, as read from MLflow, are also kept beside the report
(``docs/study-seeds/seed-<s>.json``, tagged with the hash of the seed's spec less its
``output_dir`` and ``tracking``, and of the shipped sandbox model when the spec uses it): a seed
whose run is not in the store at hand (run on another machine or day) is read from there and not
run again, and refused if another spec or model made it. ``--seeds`` runs or reports some of the
seeds; a report on fewer than ``study.seeds`` says that it is partial.

What is judged (``study.claims``) and how. Every difference is paired by seed (the methods of
one seed share the probe sample and the corpus), and judged by its two-sided Student-t confidence
interval over seeds (``study.confidence``).

``discrimination`` (ours; the check that the world can tell methods apart at all, judged before
any method is compared): the ceiling control (``study.ceiling``, default ``oracle``: the true
profiles before each root) beats every floor control (``study.floors``, default ``standard``
and ``random_context``) in probe gain at each multiple of the base context in
``study.discrimination_multiples`` (default 2× and 4×). d = gain(ceiling) − gain(floor) per
seed. Met: every d's interval above 0. Not met: any interval that reaches 0 or lies below it.
``study.discrimination_probes`` (default ``[probe]``) names the loss-scored probes the rule is
judged on, one verdict each (``probe_lookalike``: the probe with a look-alike distractor);
``study.discrimination_metrics`` (default ``[gain]``) what it compares, one verdict each: ``gain``
as above, or ``nll``, the value's NLL with the profile (d = NLL(floor) − NLL(ceiling); the
inputs are the same for every model, and the gain's control term differs between models: a
model that is more confidently wrong without the profile gets a larger gain; ours).

``paper``: the PolicyLong paper's claims (on Qwen2.5-3B; REFERENCES.md):

1. *PolicyLong beats EntropyLong and NExtLong, with gains that grow with context length.*
   d(L) = probe gain (of ``study.paper_probe``, default ``probe``) of the treatment minus that
   of the best baseline at L (best by mean), at
   every length beyond the base model's context; and the slope of d over log2 L. Supported: every
   d(L) and the slope above 0. Not supported: some d(L) below 0. Otherwise not resolvable.
2. *On-policy screening surfaces progressively harder dependencies: larger loss gaps than static
   baselines.* d = loss gap on each stage's own data (``stage/loss_gap_frontier``), treatment
   minus the static baseline, averaged over the stages after the first (stage 0 is screened by
   the same base model in both). Supported / not supported: d's interval above / below 0.
3. *Short-context skill is kept.* r = relative change of the held-out short-context loss
   (``stage/short_loss``, final stage) against the base model. Supported: r's upper bound at or
   below ``study.short_loss_tolerance``. Not supported: r's lower bound above it.
With one seed no interval exists and every verdict is "not resolvable (one seed)".
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from harness.layout import seed_dir, shared_cache, study_seed_file, study_times_file
from harness.config import (Spec, SpecError, Strict, _format_errors, read_mapping, resolved,
                            spec_from_data, spec_hash, stable_hash)


class StudyArm(Strict):
    """A further arm judged by the paper's claims beside the main one, under its own name
    (e.g. the NLL signal's: ``policylong-nll`` against ``entropylong-nll`` and ``nextlong``)."""
    name: str
    treatment: str
    baselines: list[str] = Field(min_length=1)
    static_baseline: str


# the loss-scored probes, in the report's order, with their titles; the settings accept these
PROBE_TITLES: dict[str, str] = {"probe": "probe", "probe_lookalike": "look-alike probe"}
ProbeName = Literal[tuple(PROBE_TITLES)]  # type: ignore[valid-type]


class StudySettings(Strict):
    """The ``study:`` block. Defaults are ours (the papers report single runs)."""
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    report: str = "docs/study.md"
    treatment: str = "policylong"
    baselines: list[str] = Field(default_factory=lambda: ["entropylong", "nextlong"],
                                 min_length=1)
    static_baseline: str = "entropylong"   # claim 2: the same screening, done once with θ_0
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    short_loss_tolerance: float = Field(0.05, gt=0.0)   # claim 3: relative rise allowed
    claims: list[Literal["discrimination", "paper"]] = Field(
        default_factory=lambda: ["paper"], min_length=1)
    ceiling: str = "oracle"
    floors: list[str] = Field(default_factory=lambda: ["standard", "random_context"],
                              min_length=1)
    discrimination_multiples: list[int] = Field(default_factory=lambda: [2, 4], min_length=1)
    discrimination_probes: list[ProbeName] = Field(
        default_factory=lambda: ["probe"], min_length=1)
    discrimination_metrics: list[Literal["gain", "nll"]] = Field(
        default_factory=lambda: ["gain"], min_length=1)
    paper_probe: ProbeName = "probe"   # claim 1's probe
    # further arms for the paper's claims, reported after the main arm's verdicts, each
    # labelled with its name (ours)
    arms: list[StudyArm] = Field(default_factory=list)

    def roles(self) -> list[tuple[str, str]]:
        """(setting, method label) pairs the chosen claims need among the spec's methods."""
        out = []
        if "paper" in self.claims:
            out += [("treatment", self.treatment), ("static_baseline", self.static_baseline),
                    *[("baselines", b) for b in self.baselines]]
        if "discrimination" in self.claims:
            out += [("ceiling", self.ceiling), *[("floors", f) for f in self.floors]]
        if "paper" in self.claims:
            for i, a in enumerate(self.arms):
                out += [(f"arms.{i}.treatment", a.treatment),
                        (f"arms.{i}.static_baseline", a.static_baseline),
                        *[(f"arms.{i}.baselines", b) for b in a.baselines]]
        return out

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("seeds must be distinct")
        return v


def _log(msg: str) -> None:
    print(f"[study] {msg}", file=sys.stderr, flush=True)


def load_study(path: str | Path, overrides: list[str] | None = None
               ) -> tuple[StudySettings, Spec]:
    path = Path(path)
    data = read_mapping(path, "study", overrides)
    if not isinstance(data.get("study"), dict):
        raise SpecError(f"{path}: a study file is a comparison spec with a 'study:' mapping")
    block = data.pop("study")
    try:
        settings = StudySettings.model_validate(block)
    except ValidationError as exc:
        raise SpecError(_format_errors(exc, str(path), StudySettings, "study.",
                                       "study settings")) from None
    spec = spec_from_data(data, str(path))
    labels = [m.label or m.name for m in spec.methods]
    for role, name in settings.roles():
        if name not in labels:
            import difflib
            hint = difflib.get_close_matches(name, labels, n=1)
            raise SpecError(f"{path}: study.{role} '{name}' is not one of the spec's methods "
                            f"{labels}" + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    evaluated = [b.name for b in spec.eval.benchmarks]
    probes = [("paper_probe", settings.paper_probe)] if "paper" in settings.claims else []
    if "discrimination" in settings.claims:
        probes += [("discrimination_probes", p) for p in settings.discrimination_probes]
    for key, probe in probes:
        if probe not in evaluated:
            raise SpecError(f"{path}: study.{key} '{probe}' is not evaluated: add "
                            f"{{name: {probe}}} to eval.benchmarks (now {evaluated})")
    return settings, spec


def seed_spec(spec: Spec, seed: int) -> Spec:
    """The comparison of one seed: construction, training and probe sampling all re-seeded."""
    data = spec.model_dump(mode="json")
    data["seed"] = seed
    data["train"]["seed"] = seed
    data["output_dir"] = str(seed_dir(spec, seed))
    data["tracking"]["experiment"] = spec.tracking.experiment or spec.name
    return Spec.model_validate(data)


def _parent_run(tracking, spec: Spec):
    runs = tracking.search(
        f"tags.config_hash = '{spec_hash(spec)}' and attributes.status = 'FINISHED'")
    runs = [r for r in runs if r.info.run_name.startswith("compare-")]
    return runs[0] if runs else None


# ----------------------------------------------------------------------------- statistics

def interval(values, confidence: float) -> dict:
    """Mean, sample std and the two-sided Student-t interval of the mean over seeds."""
    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = int(a.size)
    out = {"n": n, "mean": float(a.mean()) if n else float("nan"),
           "std": float(a.std(ddof=1)) if n > 1 else float("nan"),
           "lo": float("nan"), "hi": float("nan")}
    if n > 1:
        from scipy.stats import t
        half = t.ppf((1 + confidence) / 2, n - 1) * out["std"] / math.sqrt(n)
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


def _side(iv: dict, bound: float = 0.0) -> str:
    if iv["n"] < 2:
        return "unknown"
    if iv["lo"] > bound:
        return "above"
    if iv["hi"] < bound:
        return "below"
    return "within"


def _fmt_iv(iv: dict, digits: int = 3) -> str:
    if iv["n"] == 0:
        return "-"
    if iv["n"] < 2:
        return f"{iv['mean']:.{digits}f}"
    return f"{iv['mean']:+.{digits}f} [{iv['lo']:+.{digits}f}, {iv['hi']:+.{digits}f}]"


def _ms(values, digits: int = 3) -> str:
    a = [v for v in values if v is not None and not math.isnan(v)]
    if not a:
        return "-"
    if len(a) == 1:
        return f"{a[0]:.{digits}f}"
    return f"{np.mean(a):.{digits}f} ± {np.std(a, ddof=1):.{digits}f}"


# ----------------------------------------------------------------------------- claims

def _get(results: dict, label: str, bench: str, L: int):
    per_len = results["rows"].get(label, {}).get("eval", {}).get(bench, {})
    v = per_len.get(L, per_len.get(str(L)))
    return float("nan") if v is None else v


def extension_text(ce) -> str:
    """The context extension in words: RoPE θ, scaling and the new maximum length."""
    parts = []
    if ce.rope_theta is not None:
        parts.append(f"RoPE θ {ce.rope_theta:g}")
    if ce.rope_scaling != "none":
        parts.append(f"{'YaRN' if ce.rope_scaling == 'yarn' else 'linear'} "
                     f"×{ce.scaling_factor:g}")
    if ce.max_position_embeddings:
        parts.append(f"max positions {ce.max_position_embeddings:,}")
    return "context extension: " + (", ".join(parts) if parts else "none")


def value_nll_table(per_seed: list[dict], labels: list[str], lengths: list[int],
                    base_ctx: int, probe: str = "probe") -> list[str]:
    """The probe gain's two terms per method and length (means over seeds): the value's NLL
    with its profile and without it (the control, = NLL + gain). A gain can grow because the
    control got worse rather than because the profile made the value easier; this table
    shows which. Empty when no run logged ``<probe>/nll``."""
    if all(np.isnan(_get(r, lab, f"{probe}/nll", x)) for r in per_seed for lab in labels
           for x in lengths):
        return []
    out = ["Value NLL with the profile / without it (the control), nats, mean over seeds "
           "(gain = without − with):\n",
           "| method | " + " | ".join(f"{x} ({x // base_ctx}×)" for x in lengths) + " |",
           "|---|" + "---|" * len(lengths)]
    for lab in labels:
        cells = []
        for x in lengths:
            w = np.array([_get(r, lab, f"{probe}/nll", x) for r in per_seed])
            c = w + np.array([_get(r, lab, f"{probe}/gain", x) for r in per_seed])
            cells.append("-" if np.isnan(w).all() else
                         f"{np.nanmean(w):.2f} / {np.nanmean(c):.2f}")
        out.append(f"| {lab} | " + " | ".join(cells) + " |")
    return out + [""]


def _stage(results: dict, label: str, k: int, key: str):
    st = results["rows"].get(label, {}).get("stages", [])
    v = st[k].get(key) if k < len(st) else None
    return float("nan") if v is None else v


def judge_discrimination(settings: StudySettings, per_seed: list[dict], lengths: list[int],
                         base_ctx: int, probe: str = "probe", metric: str = "gain") -> dict:
    """Does the ceiling control beat every floor control in ``probe``'s ``metric`` at each
    multiple of the base context (module doc)? ``gain``: d = ceiling − floor; ``nll`` (the
    value's NLL with the profile, lower is better): d = floor − ceiling, so that d > 0 is the
    ceiling ahead either way."""
    conf, C = settings.confidence, settings.ceiling
    sign = -1.0 if metric == "nll" else 1.0
    parts, sides, detail = [], [], {}
    for m in settings.discrimination_multiples:
        L = m * base_ctx
        if L not in lengths:
            parts.append(f"{m}× ({L}): not evaluated (eval.lengths {lengths})")
            sides.append("missing")
            continue
        for f in settings.floors:
            d = interval([sign * (_get(r, C, f"{probe}/{metric}", L)
                                  - _get(r, f, f"{probe}/{metric}", L)) for r in per_seed], conf)
            detail[f"{L}/{f}"] = d
            sides.append(_side(d))
            parts.append(f"{m}× ({L}): " + (f"{C} − {f}" if metric == "gain" else f"{f} − {C}")
                         + f" = {_fmt_iv(d)} nats")
    if len(per_seed) < 2:
        v = "not resolvable (one seed)"
    elif "missing" in sides:
        v = "not resolvable (a length is not evaluated)"
    elif all(s == "above" for s in sides):
        v = "met"
    else:
        v = "not met"
    what = "gain" if metric == "gain" else "value NLL with the profile"
    return {"claim": f"0. the world discriminates: {C} beats {' and '.join(settings.floors)} "
                     f"in {probe.replace('_', ' ')} {what} at "
                     f"{', '.join(f'{m}×' for m in settings.discrimination_multiples)} the base "
                     f"context",
            "verdict": v, "numbers": "; ".join(parts), "detail": detail}


def judge(settings: StudySettings, per_seed: list[dict], lengths: list[int], base_ctx: int,
          stages: int) -> list[dict]:
    """The verdicts of ``study.claims``, each with the numbers behind it."""
    verdicts = []
    if "discrimination" in settings.claims:
        verdicts += [judge_discrimination(settings, per_seed, lengths, base_ctx, p, m)
                     for p in settings.discrimination_probes
                     for m in settings.discrimination_metrics]
    if "paper" in settings.claims:
        verdicts += judge_paper(settings, per_seed, lengths, base_ctx, stages)
        for arm in settings.arms:
            sub = settings.model_copy(update={"treatment": arm.treatment,
                                              "baselines": arm.baselines,
                                              "static_baseline": arm.static_baseline})
            for v in judge_paper(sub, per_seed, lengths, base_ctx, stages):
                verdicts.append({**v, "claim": f"{arm.name}: {v['claim']}", "arm": arm.name})
    return verdicts


def judge_paper(settings: StudySettings, per_seed: list[dict], lengths: list[int],
                base_ctx: int, stages: int) -> list[dict]:
    """The paper's three claims."""
    conf, T = settings.confidence, settings.treatment
    one_seed = len(per_seed) < 2
    verdicts = []

    # Claim 1: beats the best baseline beyond the base context, more so at longer lengths.
    gain = f"{settings.paper_probe}/gain"
    beyond = [L for L in lengths if L > base_ctx]
    d_by_len, best_by_len = {}, {}
    for L in beyond:
        means = {b: np.nanmean([_get(r, b, gain, L) for r in per_seed]) for b in
                 settings.baselines}
        best = max(means, key=lambda b: means[b])
        best_by_len[L] = best
        d_by_len[L] = interval([_get(r, T, gain, L) - _get(r, best, gain, L)
                                for r in per_seed], conf)
    slopes = []
    for r in per_seed:
        x = np.log2(beyond)
        y = [_get(r, T, gain, L) - _get(r, best_by_len[L], gain, L)
             for L in beyond]
        slopes.append(float(np.polyfit(x, y, 1)[0]) if len(beyond) > 1 else float("nan"))
    slope = interval(slopes, conf)
    sides = [_side(d_by_len[L]) for L in beyond]
    if one_seed:
        v = "not resolvable (one seed)"
    elif beyond and all(s == "above" for s in sides) and _side(slope) == "above":
        v = "supported"
    elif any(s == "below" for s in sides):
        v = "not supported"
    else:
        v = "not resolvable at this scale"
    verdicts.append({
        "claim": f"1. {T} beats {' and '.join(settings.baselines)}, more so at longer lengths"
                 + ("" if settings.paper_probe == "probe"
                    else f" ({settings.paper_probe.replace('_', ' ')} gain)"),
        "verdict": v,
        "numbers": "; ".join(f"{L}: {T} − {best_by_len[L]} = {_fmt_iv(d_by_len[L])} nats"
                             for L in beyond)
                   + f"; slope per doubling {_fmt_iv(slope)}",
        "detail": {"d": {str(L): d_by_len[L] for L in beyond}, "slope": slope,
                   "best_baseline": {str(L): b for L, b in best_by_len.items()}}})

    # Claim 2: larger loss gaps on its own data than the static baseline, after stage 0.
    later = list(range(1, stages))
    diffs = []
    for r in per_seed:
        ds = [_stage(r, T, k, "loss_gap_frontier")
              - _stage(r, settings.static_baseline, k, "loss_gap_frontier") for k in later]
        diffs.append(float(np.nanmean(ds)) if ds and not np.all(np.isnan(ds)) else float("nan"))
    d2 = interval(diffs, conf)
    if one_seed:
        v = "not resolvable (one seed)"
    elif not later:
        v = "not resolvable (a single stage)"
    else:
        v = {"above": "supported", "below": "not supported"}.get(_side(d2),
                                                                "not resolvable at this scale")
    progression = {lab: [_ms([_stage(r, lab, k, "loss_gap_frontier") for r in per_seed])
                         for k in range(stages)] for lab in (T, settings.static_baseline)}
    verdicts.append({
        "claim": f"2. {T}'s data carry larger loss gaps than {settings.static_baseline}'s "
                 f"(stages 1..{stages - 1})",
        "verdict": v,
        "numbers": f"{T} − {settings.static_baseline} = {_fmt_iv(d2)} nats; per stage "
                   + "; ".join(f"{lab} " + " → ".join(p) for lab, p in progression.items()),
        "detail": {"d": d2}})

    # Claim 3: short-context loss kept (relative to the untouched base model).
    rel = []
    for r in per_seed:
        b, t_ = _stage(r, "base", 0, "short_loss"), _stage(r, T, stages - 1, "short_loss")
        rel.append((t_ - b) / b if b and not math.isnan(b) else float("nan"))
    r3 = interval(rel, conf)
    tol = settings.short_loss_tolerance
    if one_seed:
        v = "not resolvable (one seed)"
    elif r3["n"] > 1 and r3["hi"] <= tol:
        v = "supported"
    elif r3["n"] > 1 and r3["lo"] > tol:
        v = "not supported"
    else:
        v = "not resolvable at this scale"
    verdicts.append({
        "claim": f"3. short-context skill kept (held-out short loss within +{tol:.0%} of base)",
        "verdict": v,
        "numbers": f"relative change {_fmt_iv(r3)}",
        "detail": {"relative_change": r3}})
    return verdicts


# ----------------------------------------------------------------------------- the report

NO_FRONTIER_GAP = ("none of these methods screens anchors\n(standard and the controls have "
                   "none),\nso no stage has a loss gap on its own data")


def _probes(spec: Spec) -> list[str]:
    """The loss-scored probes the spec evaluates, in the report's order (``probe`` first)."""
    names = {b.name for b in spec.eval.benchmarks}
    return [p for p in PROBE_TITLES if p in names] or ["probe"]


def _plots(per_seed: list[dict], labels: list[str], lengths: list[int], stages: int,
           out: Path, probes: list[str] = ("probe",)) -> dict[str, Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    files = {}
    colour = {lab: f"C{i}" for i, lab in enumerate(labels)}   # one colour per method everywhere

    def band(ax, xs, series, label):
        a = np.asarray(series, dtype=float)          # [seeds, x]
        m = np.nanmean(a, axis=0)
        ax.plot(xs, m, marker="o", label=label, color=colour[label])
        if a.shape[0] > 1:
            s = np.nanstd(a, axis=0, ddof=1)
            ax.fill_between(xs, m - s, m + s, alpha=0.15, color=colour[label])

    for bench, ylabel in [(x, y) for p in probes for x, y in (
            (f"{p}/gain", f"{PROBE_TITLES[p]} gain: control NLL − value NLL (nats)"),
            (p, f"{PROBE_TITLES[p]} accuracy (value is the argmax)"))]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for lab in labels:
            band(ax, lengths, [[_get(r, lab, bench, L) for L in lengths] for r in per_seed], lab)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("distance: context length (tokens)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{bench} by length (mean ± std over {len(per_seed)} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        p = out / f"{bench.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files[bench] = p
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in [(axes[0], "loss_gap_probe", "loss gap, fixed probe set"),
                           (axes[1], "loss_gap_frontier", "loss gap, the stage's own data")]:
        drawn = 0
        for lab in labels:
            if lab == "base":
                continue
            series = [[_stage(r, lab, k, key) for k in range(stages)] for r in per_seed]
            if np.all(np.isnan(np.asarray(series, dtype=float))):
                continue
            band(ax, list(range(stages)), series, lab)
            drawn += 1
        ax.set_xlabel("stage")
        ax.set_ylabel("nats")
        ax.set_title(title)
        ax.set_xticks(list(range(stages)))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:   # a sentence, not an empty frame
            ax.text(0.5, 0.5, NO_FRONTIER_GAP if key == "loss_gap_frontier" else
                    "no method logged this loss gap", ha="center", va="center",
                    wrap=True, fontsize=9, transform=ax.transAxes)
    p = out / "loss_gaps.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files["loss_gaps"] = p
    return files


def write_study_report(settings: StudySettings, spec: Spec, study_path: str, per_seed: list[dict],
                       seeds: list[int], run_ids: list[str], base_ctx: int,
                       wall: dict, planned: list[int] | None = None) -> Path:
    report = Path(settings.report)
    img = report.parent / "img" / report.stem
    lengths = list(spec.eval.lengths)
    stages = spec.stages.count
    labels = ["base"] + [m.label or m.name for m in spec.methods]
    verdicts = judge(settings, per_seed, lengths, base_ctx, stages)
    probes = _probes(spec)
    files = _plots(per_seed, labels, lengths, stages, img, probes)
    rel = lambda p: Path(p).relative_to(report.parent).as_posix()  # noqa: E731
    n = len(per_seed)
    L = []
    L.append("# The sandbox study: do the PolicyLong paper's claims reproduce at small scale?\n")
    L.append(f"Generated by `policylong study {study_path}` from the MLflow runs of "
             f"{n} seed{'s' if n > 1 else ''} ({', '.join(map(str, seeds))}; experiment "
             f"`{spec.tracking.experiment or spec.name}`, parent runs "
             f"{', '.join(f'`{r[:8]}`' for r in run_ids)}; each seed's results kept in "
             f"`{rel(study_seed_file(report, seeds[0]).parent)}/`). Every number is the mean ± "
             f"sample std over seeds; differences are paired by seed with a two-sided "
             f"{settings.confidence:.0%} Student-t interval in brackets.\n")
    if planned is not None and sorted(seeds) != sorted(planned):
        L.append(f"**Partial: seeds {', '.join(map(str, seeds))} of the study's "
                 f"{', '.join(map(str, planned))}. These verdicts are not the protocol's; "
                 f"the report on all its seeds is.**\n")
    L.append("## Protocol (fixed in the study file before any result)\n")
    L.append(f"- Methods: {', '.join(labels)} (`base` is the untouched sandbox model); the "
             f"papers' default hyperparameters (α {spec.screening.alpha}, ε "
             f"{spec.screening.epsilon}, signal `{spec.screening.signal}`), none tuned"
             + "".join(f"; `{m.label or m.name}` with its own screening ("
                       + ", ".join(f"{k} `{v}`" for k, v in m.screening.items()) + ")"
                       for m in spec.methods if m.screening) + ".")
    L.append(f"- Budget: {stages} stages × {spec.stages.tokens_per_stage:,} tokens at target "
             f"length {spec.stages.target_length}, the same for every method; training: lr "
             f"{spec.train.lr}, {spec.train.batch_tokens:,} tokens per step; "
             f"{extension_text(spec.context_extension)}"
             f"{'; roots reused across stages' if spec.stages.allow_root_reuse else ''}.")
    L.append(f"- Probe: planted values of held-out entities at context lengths "
             f"{', '.join(map(str, lengths))} (base context {base_ctx}: "
             f"{', '.join(f'{x // base_ctx}×' for x in lengths)}), each against a control of "
             f"equal length without the profile; gain = control NLL − NLL of the value."
             + (" Look-alike probe: the same with the entity's look-alike profile (same first "
                "name and attributes, other values) between the profile and the query, in "
                "both inputs; distractor accuracy: the look-alike's value is the argmax."
                if "probe_lookalike" in probes else ""))
    L.append("- Loss gap (NLL of anchor tokens without − with their context) after each stage, "
             "on the fixed probe set and on the stage's own data; short-context loss: mean "
             "NLL per token of 200 held-out profiles and references, each scored alone.")
    L.append(f"- Decision rules: see `harness/experiments/study.py` (module docstring); tolerance for claim 3 "
             f"+{settings.short_loss_tolerance:.0%}.\n")
    L.append("## Verdicts\n")
    L.append("| claim | verdict | numbers |")
    L.append("|---|---|---|")
    for v in verdicts:
        L.append(f"| {v['claim']} | **{v['verdict']}** | {v['numbers']} |")
    L.append("")
    for pr in probes:
        L.append(f"## {PROBE_TITLES[pr][0].upper() + PROBE_TITLES[pr][1:]} by distance\n")
        tables = [(f"{pr}/gain", "Gain (nats)"), (pr, "Accuracy")]
        if pr == "probe_lookalike":
            tables.append((f"{pr}/distractor_acc", "Distractor accuracy (the look-alike's "
                                                   "value is the argmax)"))
        for bench, title in tables:
            L.append(f"{title}:\n")
            L.append("| method | " + " | ".join(f"{x} ({x // base_ctx}×)" for x in lengths)
                     + " |")
            L.append("|---|" + "---|" * len(lengths))
            for lab in labels:
                L.append(f"| {lab} | " + " | ".join(
                    _ms([_get(r, lab, bench, x) for r in per_seed]) for x in lengths) + " |")
            L.append("")
        L += value_nll_table(per_seed, labels, lengths, base_ctx, pr)
        L.append(f"![{PROBE_TITLES[pr]} gain]({rel(files[f'{pr}/gain'])})\n")
        L.append(f"![{PROBE_TITLES[pr]} accuracy]({rel(files[pr])})\n")
    L.append("## Loss gaps per stage, and what the stages are made of\n")
    keys = [("loss_gap_probe", "loss gap, probe set"), ("loss_gap_frontier", "loss gap, own data"),
            ("anchors_per_1k", "anchors / 1K"), ("accept_rate", "accept rate"),
            ("train_loss", "train loss")]
    L.append("| method | stage | " + " | ".join(t for _, t in keys) + " |")
    L.append("|---|---|" + "---|" * len(keys))
    for lab in labels[1:]:
        for k in range(stages):
            L.append(f"| {lab} | {k} | " + " | ".join(
                _ms([_stage(r, lab, k, key) for r in per_seed]) for key, _ in keys) + " |")
    L.append(f"\nBase model, probe-set loss gap: "
             f"{_ms([_stage(r, 'base', 0, 'loss_gap_probe') for r in per_seed])}.\n")
    L.append(f"![loss gaps]({rel(files['loss_gaps'])})\n")
    L.append("## Short-context loss (held-out, each sequence alone)\n")
    L.append("| method | short loss (nats/token) |")
    L.append("|---|---|")
    for lab in labels:
        k = 0 if lab == "base" else stages - 1
        L.append(f"| {lab} | {_ms([_stage(r, lab, k, 'short_loss') for r in per_seed], 4)} |")
    L.append("")
    L.append("## Cost on this machine\n")
    L.append("Per seed, per method: the stage loop (construction, training, probes) and the "
             "part of it spent constructing data (for PolicyLong's stages after the first that "
             "is the on-policy re-screening).\n")
    L.append("| method | stage loop (s) | construction (s) | construction after stage 0 (s) |")
    L.append("|---|---|---|---|")
    for lab in labels[1:]:
        tot = [np.nansum([_stage(r, lab, k, "stage_seconds") for k in range(stages)])
               for r in per_seed]
        con = [np.nansum([_stage(r, lab, k, "build_seconds") for k in range(stages)])
               for r in per_seed]
        later = [np.nansum([_stage(r, lab, k, "build_seconds") for k in range(1, stages)])
                 for r in per_seed]
        L.append(f"| {lab} | {_ms(tot, 0)} | {_ms(con, 0)} | {_ms(later, 0)} |")
    if wall:
        L.append("\nWall time of each seed's comparison (including the shared index, the base "
                 "evaluation and every probe): "
                 + ", ".join(f"seed {s}: {t / 60:.1f} min" for s, t in sorted(wall.items()))
                 + ".\n")
    notes = Path(study_path).with_suffix(".discussion.md")
    if notes.is_file():
        L.append("## Discussion (written after the results)\n")
        L.append(notes.read_text().strip() + "\n")
    report.parent.mkdir(parents=True, exist_ok=True)
    from harness.fileio import atomic_write_text
    atomic_write_text(report, "\n".join(L))
    atomic_write_text(report.with_suffix(".json"), json.dumps(
        {"seeds": seeds, "run_ids": run_ids, "verdicts": verdicts, "wall_seconds": wall},
        indent=2, default=float))
    return report


def _base_context(spec: Spec) -> int:
    from harness.experiments.wiring import resolve_inputs

    base, _ = resolve_inputs(spec)
    return int(json.loads((Path(base) / "config.json").read_text())["max_position_embeddings"])


def _kept_hash(sspec: Spec) -> str:
    """The hash that ties kept results to a seed's spec: every key but where the outputs and
    the MLflow runs were written (``output_dir``, ``tracking``), which do not change them."""
    data = resolved(sspec)
    data.pop("output_dir", None)
    data.pop("tracking", None)
    if sspec.model.path == "sandbox":    # the shipped weights are not in the spec: a new base
        data["shipped_sandbox_model"] = _shipped_model_sha()   # model must not mix with old seeds
    return stable_hash(data)


def _shipped_model_sha() -> str:
    import hashlib
    from harness.sandbox.build import ASSET
    h = hashlib.sha256()
    for name in ("model/model.safetensors", "recipe.json"):
        f = ASSET / name
        h.update(f.read_bytes() if f.is_file() else b"absent")
    return h.hexdigest()


def save_seed_results(file: Path, seed: int, sspec: Spec, run_id: str, results: dict,
                      seconds: float | None) -> None:
    """Keep one finished seed's results (what ``from_mlflow`` read) beside the report, tagged
    with the hash of the seed's spec, so that the report can be built where that MLflow store
    is absent (seeds run on different machines or days)."""
    from harness.fileio import atomic_write_text
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps(
        {"seed": seed, "config_hash": _kept_hash(sspec), "run_id": run_id,
         "experiment": sspec.tracking.experiment, "wall_seconds": seconds, "results": results},
        indent=1, default=float))


def load_seed_results(file: Path, seed: int, sspec: Spec) -> tuple[str, dict, float | None]:
    """A kept seed's (run id, results, wall seconds); refused when another spec made it."""
    try:
        kept = json.loads(file.read_text())
        got, results = kept["config_hash"], kept["results"]
        for row in results["rows"].values():     # JSON keeps the lengths as strings
            row["eval"] = {b: {int(L): v for L, v in per.items()}
                           for b, per in row["eval"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpecError(f"{file}: not a kept seed result ({type(exc).__name__}: {exc}); "
                        f"delete it and run the seed again") from None
    want = _kept_hash(sspec)
    if got != want:
        raise SpecError(f"{file}: kept results of seed {seed} were made by another spec "
                        f"(config hash {got[:12]}, this study's seed {want[:12]}); run the seed "
                        f"again or restore the spec that made them")
    return kept["run_id"], results, kept.get("wall_seconds")


def study(path: str, overrides: list[str] | None = None, seeds: list[int] | None = None,
          report_only: bool = False) -> Path:
    from harness.experiments.compare import compare
    from harness.fileio import atomic_write_text
    from harness.experiments.report import from_mlflow
    from harness.tracking import Tracking, check_reachable, resolve_uri

    settings, spec = load_study(path, overrides)
    planned = list(settings.seeds)
    if seeds:
        settings = settings.model_copy(update={"seeds": list(seeds)})
    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    times_file = study_times_file(spec)
    wall = json.loads(times_file.read_text()) if times_file.exists() else {}
    tracking = Tracking(uri, spec.tracking.experiment or spec.name)
    if not report_only:
        for s in settings.seeds:
            kept, sspec = study_seed_file(settings.report, s), seed_spec(spec, s)
            if kept.is_file() and _parent_run(tracking, sspec) is None:
                load_seed_results(kept, s, sspec)    # refused if another spec or model
                _log(f"seed {s}: finished elsewhere, its results kept in {kept} (delete the "
                     f"file to run it again)")
                continue
            _log(f"seed {s}: {len(spec.methods)} methods + base")
            t0 = time.perf_counter()
            with shared_cache(Path(spec.output_dir) / "cache"):    # embedded once, not per seed
                compare(sspec)
            dt = time.perf_counter() - t0
            if dt > 60 or str(s) not in wall:      # a cached rerun keeps the timing of the work
                wall[str(s)] = dt
            times_file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(times_file, json.dumps(wall, indent=2))
    per_seed, run_ids, done = [], [], []
    for s in settings.seeds:
        sspec = seed_spec(spec, s)
        kept = study_seed_file(settings.report, s)
        run = _parent_run(tracking, sspec)
        if run is not None:
            results = from_mlflow(tracking, run.info.run_id)
            save_seed_results(kept, s, sspec, run.info.run_id, results, wall.get(str(s)))
            run_id = run.info.run_id
        elif kept.is_file():
            run_id, results, seconds = load_seed_results(kept, s, sspec)
            if seconds is not None and str(s) not in wall:
                wall[str(s)] = seconds
            _log(f"seed {s}: no finished comparison in {uri}; read from {kept}")
        else:
            raise SpecError(f"seed {s} of {path} has no finished comparison in {uri} and no "
                            f"kept results ({kept}); run `policylong study {path}` without "
                            f"--report-only first")
        per_seed.append(results)
        run_ids.append(run_id)
        done.append(s)
    report = write_study_report(settings, spec, path, per_seed, done, run_ids,
                                _base_context(spec), {int(k): v for k, v in wall.items()
                                                      if int(k) in done},
                                planned=planned)
    _log(f"report: {report}")
    return report
