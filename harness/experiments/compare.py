"""``policylong compare SPEC``: every method's stage loop, then the benchmarks, then the report.

For each method: for k in 0..R-1, construct stage k with the method's screening model (none,
θ_0, or θ_k), train on it (checkpoint k), probe (loss gap on the fixed probe set and on the
stage's data, curriculum metrics → ``stage/*`` with step = k); then evaluate the final
checkpoint. The untouched base model is the ``base`` row. Everything expensive is cached on
disk under names that change when what produced it changes (``harness.layout`` owns them), so a
rerun of a finished spec does no work and a killed run resumes where it stopped.
"""
from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from pathlib import Path

from harness.config import Spec, resolved, spec_hash
from harness.fileio import atomic_write_text, locked
from harness.evaluation.loss_gap import probe_set, short_set
from harness.evaluation.runner import (eval_name, evaluate_checkpoint, load_benchmarks,
                                       scored_by_loss)
from harness.layout import base_eval_dir, eval_dir, method_dir, report_dir
from harness.logs import phase, timed


def _log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def run_method(spec: Spec, label: str, tracking, parent, resources, tokenizer, triples,
               run_name: str | None = None, on_stage=None, evaluate: bool = True,
               short=None) -> dict:
    """One method's stage loop (and its evaluation) as a nested MLflow run.

    ``on_stage(k, checkpoint, metrics, tracker)`` is called after each stage (tuning reports
    intermediate values through it and may stop the loop by raising). ``short``: held-out short
    sequences whose mean NLL is logged as ``stage/short_loss``."""
    from harness.layout import checkpoint_dir
    from harness.training.model_io import load_eval_model
    from harness.experiments.wiring import construct, resolve_inputs
    from harness.evaluation.loss_gap import (curriculum_metrics, frontier_triples, loss_gap,
                                short_context_loss)
    from harness.construction.stage_data import StageDataset
    from harness.tracking import stage_key
    from harness.layout import optimizer_dir
    from harness.training.stage import train_stage

    base, _ = resolve_inputs(spec)
    row = {"eval": {}, "stages": []}
    # Another process on the same spec waits here, then reuses what this one finished.
    with locked(method_dir(spec, label), f"{label}'s stages"), \
            tracking.run(run_name or label, parent=parent, tags={"method_label": label}) as child:
        ckpt = base
        step_offset = 0
        for k in range(spec.stages.count):
            t0 = time.perf_counter()
            ds_path = construct(spec, label, k, resources=resources)
            ds = StageDataset(ds_path)
            child.log_artifact(ds_path / "manifest.json", f"stage-{k}")
            t_built = time.perf_counter()
            phase(label, k, "construct", t_built - t0)
            out = checkpoint_dir(spec, label, k)
            entering = ckpt
            ckpt = train_stage(ckpt, ds, spec.train, out, tracker=child,
                               extension=spec.context_extension, step_offset=step_offset,
                               stage=k, stages=spec.stages.count,
                               optimizer_from=optimizer_dir(checkpoint_dir(spec, label, k - 1))
                               if k else None)
            done = json.loads((Path(ckpt) / "stage_done.json").read_text())
            step_offset += done["steps"]
            phase(label, k, "train", time.perf_counter() - t_built)
            cached = Path(ckpt).parent / "stage_metrics.json"
            if cached.exists():          # a finished stage: its probes are not rerun
                metrics = json.loads(cached.read_text())
            else:
                t_trained = time.perf_counter()
                metrics = curriculum_metrics(ds.manifest)
                metrics["train_loss"] = done.get("final_loss") or float("nan")
                model = load_eval_model(ckpt)
                if triples:
                    metrics["loss_gap_probe"] = loss_gap(model, triples)["loss_gap"]
                front = frontier_triples(ds)
                if front:
                    # out of sample: held-out groups of this stage, by the checkpoint that
                    # leaves the stage and by the one that entered it
                    metrics["loss_gap_frontier"] = loss_gap(model, front)["loss_gap"]
                    metrics["loss_gap_frontier_entering"] = loss_gap(
                        load_eval_model(entering), front)["loss_gap"]
                    metrics["frontier_groups"] = float(len(front))
                if short:
                    metrics["short_loss"] = short_context_loss(model, short)
                metrics["construct_seconds"] = t_built - t0
                metrics["train_seconds"] = t_trained - t_built
                metrics["stage_seconds"] = time.perf_counter() - t0
                atomic_write_text(cached, json.dumps(metrics, indent=2))
                phase(label, k, "probe", time.perf_counter() - t_trained)
            child.log_metrics({stage_key(n): v for n, v in metrics.items()
                               if isinstance(v, (int, float)) and not math.isnan(v)}, k)
            row["stages"].append(metrics)
            _log(f"{label} stage {k}: " + ", ".join(
                f"{n}={v:.3g}" for n, v in metrics.items() if n in
                ("loss_tokens", "loss_gap_probe", "loss_gap_frontier", "accept_rate",
                 "verify_precision", "train_loss", "stage_seconds")))
            if on_stage is not None:
                on_stage(k, ckpt, metrics, child)
        if not evaluate:
            return row
        with timed(label, None, "eval"):
            row["eval"] = evaluate_checkpoint(
                spec, ckpt, eval_dir(spec, label, spec.stages.count - 1, eval_name(spec)),
                tracker=child, tokenizer=tokenizer)
    return row


BUDGET_TOLERANCE = 0.01   # methods whose loss tokens differ by more are not compared (ours)


class BudgetError(ValueError):
    """Methods of one comparison trained on different numbers of loss-carrying tokens."""


def check_budgets(rows: dict[str, dict], tolerance: float = BUDGET_TOLERANCE) -> None:
    """Refuse a comparison whose methods' loss tokens differ by more than ``tolerance`` at
    any stage (DESIGN §3 "A fair comparison")."""
    per_stage: dict[int, dict[str, float]] = {}
    for label, r in rows.items():
        for k, st in enumerate(r.get("stages", [])):
            if "loss_tokens" in st:
                per_stage.setdefault(k, {})[label] = st["loss_tokens"]
    for k, tokens in sorted(per_stage.items()):
        lo, hi = min(tokens.values()), max(tokens.values())
        if hi > 0 and (hi - lo) / hi > tolerance:
            listing = ", ".join(f"{m} {int(v):,}" for m, v in tokens.items())
            raise BudgetError(f"stage {k}: the methods' loss-carrying tokens differ by "
                              f"{100 * (hi - lo) / hi:.1f} % (more than "
                              f"{100 * tolerance:.0f} %): {listing}; the comparison is not "
                              f"reported (rebuild the stage datasets with this version)")


def cross_score(spec: Spec, labels: list[str], tracker=None) -> dict:
    """Frontier loss gaps of every verifying method's held-out groups at each stage under
    every method's checkpoint leaving that stage: ``{data label: {stage: {model label:
    gap}}}``. PolicyLong selects its contexts for a large ΔI under its own model, so its
    own gap is large by construction; the same data under the other checkpoints is the fair
    reading. Logged to ``tracker`` as ``cross/<data>/<model>`` with step = stage."""
    from harness.layout import checkpoint_dir, dataset_dir
    from harness.training.model_io import load_eval_model
    from harness.evaluation.loss_gap import frontier_triples, loss_gap
    from harness.construction.stage_data import StageDataset

    out: dict = {}
    for k in range(spec.stages.count):
        fronts = {lab: frontier_triples(StageDataset(dataset_dir(spec, lab, k)))
                  for lab in labels}
        fronts = {lab: f for lab, f in fronts.items() if f}
        if not fronts:
            continue
        for model_label in labels:
            model = load_eval_model(checkpoint_dir(spec, model_label, k))
            for data_label, front in fronts.items():
                gap = loss_gap(model, front)["loss_gap"]
                out.setdefault(data_label, {}).setdefault(str(k), {})[model_label] = gap
                if tracker is not None and not math.isnan(gap):
                    tracker.log_metrics({f"cross/{data_label}/{model_label}": gap}, k)
    return out


def close_stale_runs(tracking, config_hash: str) -> list[str]:
    """Mark as KILLED the runs of this comparison left RUNNING by a process of this host that
    no longer exists (``kill -9``, a lost machine): the dashboard must not show them live."""
    host = socket.gethostname()
    stale = []
    for r in tracking.search(
            f"tags.config_hash = '{config_hash}' and attributes.status = 'RUNNING'"):
        tags = r.data.tags
        if tags.get("host") != host or not tags.get("pid", "").isdigit():
            continue
        try:
            os.kill(int(tags["pid"]), 0)
            continue                      # still alive: a concurrent comparison
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for run in [r, *tracking.children(r.info.run_id)]:
            if run.info.status == "RUNNING":
                tracking.mark_killed(run.info.run_id, f"process {tags['pid']} died")
                stale.append(run.info.run_id)
    return stale


def compare(spec: Spec) -> Path:
    from transformers import AutoTokenizer

    from harness.construction.driver import prepare_resources
    from harness.layout import cache_dir
    from harness.experiments.wiring import resolve_inputs
    from harness.experiments.report import write_report
    from harness.tracking import Tracking, check_reachable, resolve_uri

    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    from harness.experiments.wiring import make_method, preflight
    for m in spec.methods:  # fail on bad method params before any work
        make_method(spec, m.label or m.name)
    # ... and on unknown benchmarks or missing benchmark data
    generated = [b.name for b in spec.eval.benchmarks if not scored_by_loss(b)]
    if generated:
        load_benchmarks(spec, generated)
    preflight(spec)
    h = spec_hash(spec)
    t0 = time.perf_counter()
    base, corpus = resolve_inputs(spec)
    tok = AutoTokenizer.from_pretrained(str(base))
    resources = prepare_resources(spec, tok, corpus, cache_dir(spec))
    triples, probe = probe_set(spec, tok)
    short = short_set(spec, tok, probe)
    tracking = Tracking(uri, spec.tracking.experiment or spec.name)
    results = {"spec": spec.name, "config_hash": h, "rows": {}}
    stale = close_stale_runs(tracking, h)
    if stale:
        _log(f"marked {len(stale)} runs of an interrupted comparison as KILLED")
    with tracking.run(f"compare-{h}", tags={"spec": spec.name, "config_hash": h,
                                            "host": socket.gethostname(),
                                            "pid": str(os.getpid())}) as parent:
        parent.log_config(resolved(spec))
        with tracking.run("base", parent=parent, tags={"method_label": "base"}) as child:
            from harness.training.model_io import load_eval_model
            from harness.evaluation.loss_gap import loss_gap, short_context_loss
            with timed("base", None, "eval"):
                ev = evaluate_checkpoint(spec, base, base_eval_dir(spec, eval_name(spec)),
                                         tracker=child, tokenizer=tok)
            st = {}
            if triples or short:
                model = load_eval_model(base)
                if triples:
                    st["loss_gap_probe"] = loss_gap(model, triples)["loss_gap"]
                if short:
                    st["short_loss"] = short_context_loss(model, short)
            from harness.tracking import stage_key
            child.log_metrics({stage_key(n): v for n, v in st.items()}, 0)
            results["rows"]["base"] = {"eval": ev, "stages": [st]}
        labels = [m.label or m.name for m in spec.methods]
        for label in labels:
            results["rows"][label] = run_method(spec, label, tracking, parent, resources, tok,
                                                triples, short=short)
        check_budgets(results["rows"])
        results["cross"] = cross_score(spec, labels, parent)
        out = report_dir(spec)
        md, html_path, text = write_report(results, out)
        print(text)
        for p in [md, html_path, out / "results.json", *sorted((out / "plots").glob("*.png"))]:
            parent.log_artifact(p, "report" if p.parent == out else "report/plots")
        _log(f"done in {time.perf_counter() - t0:.0f} s; report: {md}")
    return md
