"""``policylong tune SPEC``: an Optuna study over the verification thresholds.

A trial is one method's stage loop (``tune.method``, PolicyLong by default) with the sampled
thresholds (``tune.space``: α, ε, ε_neg, the negative ratio, K and the verification signal by
default). After each stage the objective is measured on that stage's checkpoint and reported as
an intermediate value (step = stage), so a median pruner can stop a trial that trails the
others; the final value is the objective after the last stage:

* ``probe/gain`` (default), ``probe/acc``, ``probe/nll``: the sandbox probe (``benchmarks/probe``)
  at the longest ``eval.lengths``, cheap because it scores without generating;
* ``stage/<metric>``: a per-stage metric such as ``stage/loss_gap_probe``;
* ``eval/<bench>/avg/<length>``: any benchmark average, run on the final checkpoint (its
  intermediate values are the probe gain when the corpus is the sandbox, none otherwise).

**The objective is measured on a validation split, disjoint from the final evaluation**
(DESIGN §3 "A fair comparison"). The sandbox's probe entities are cut once, in
``harness.evaluation.loss_gap.PROBE_SPLITS``: ``test`` (entities 0-99) is what ``policylong compare`` and
``policylong eval`` report and what ``stage/loss_gap_probe`` measures there, ``short``
(100-199) the short-context loss, ``validation`` (200-299) what a trial is scored on: the probe
objective, the intermediate values, and in a trial ``stage/loss_gap_probe`` (its triples are the
validation entities'). Tuning also draws its probe items with its own seed,
``spec.seed + harness.evaluation.loss_gap.VALIDATION_SEED_OFFSET`` (10,000), never the final evaluation's
``spec.seed``; ``eval/...`` objectives run their final-checkpoint evaluation with that seed too.
Generated benchmarks (RULER, HELMET) draw their items from their own ``seed`` parameter and
file-based ones (LongBench-v2) have one fixed item set, so an ``eval/<bench>`` objective on them
is not held out unless the tuning spec gives the benchmark another seed or file.

The study lives in an RDB storage (``sqlite:///runs/optuna.db`` by default; a server URL lets
workers on several machines share it). Trials send heartbeats; a trial whose worker died is
failed after two missed beats and retried with the same parameters, so an interrupted study
resumes by running the command again. Every trial is a nested MLflow run under one ``tune-…``
parent run, with its parameters, intermediate values (``tune/objective``) and result. Stage
datasets and checkpoints are cached by what produced them, so a retried trial resumes from its
last finished stage. All defaults here are ours (the papers do not tune these thresholds).
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from harness.config import SearchDim, Spec, SpecError, _set_dotted, resolved, stable_hash
from harness.layout import best_spec_file, tune_dir

ATTR_PARENT = "mlflow_parent_run_id"
ATTR_SPEC = "spec"


def _log(msg: str) -> None:
    print(f"[tune] {msg}", file=sys.stderr, flush=True)


def study_name(spec: Spec) -> str:
    """Default name: the spec's name and a hash of everything a trial depends on."""
    if spec.tune.study_name:
        return spec.tune.study_name
    d = resolved(spec)
    d.pop("tracking", None)
    return f"{spec.name}-{stable_hash(d, 10)}"


def _check(spec: Spec) -> None:
    labels = [m.label or m.name for m in spec.methods]
    if spec.tune.method not in labels:
        raise SpecError(f"tune.method '{spec.tune.method}' is not among the spec's methods "
                        f"({', '.join(labels) or 'none'})")
    own = next(m.screening for m in spec.methods if (m.label or m.name) == spec.tune.method)
    clash = sorted(k for k in own if f"screening.{k}" in spec.tune.space)
    if clash:
        raise SpecError(f"tune.method '{spec.tune.method}' sets its own screening {clash} "
                        f"(methods[].screening), which tune.space would search: drop one")
    shared = [k for k in spec.tune.space if k.startswith(("retrieval.", "corpus.", "model."))
              and k not in ("retrieval.top_k",)]
    if shared:
        raise SpecError(f"tune.space: {', '.join(shared)} would change the shared corpus, model "
                        f"or index, which every trial reuses; tune them in separate studies")
    kind = spec.tune.objective.split("/")[0]
    if spec.corpus.path == "sandbox":
        from harness.evaluation.loss_gap import PROBE_SPLITS

        need = PROBE_SPLITS["validation"][1]
        if spec.sandbox.n_probe_entities < need:
            raise SpecError(f"sandbox.n_probe_entities is {spec.sandbox.n_probe_entities}: "
                            f"tuning scores trials on the validation probe entities "
                            f"{PROBE_SPLITS['validation'][0]}..{need - 1}, held out from the "
                            f"final evaluation; set it to at least {need}")
    if kind == "probe" and spec.corpus.path != "sandbox":
        raise SpecError(f"tune.objective '{spec.tune.objective}' needs the sandbox corpus "
                        f"(corpus.path: sandbox); use stage/<metric> or eval/<bench>/avg/<length>")
    if kind == "eval":
        bench = spec.tune.objective.split("/")[1]
        names = [b.name for b in spec.eval.benchmarks]
        if bench not in names:
            raise SpecError(f"tune.objective '{spec.tune.objective}': benchmark '{bench}' is "
                            f"not in eval.benchmarks ({', '.join(names) or 'none'})")


def objective_entry(objective: str) -> tuple[str, str]:
    """``eval/<bench>/<label>/<L>`` -> (the entry of ``evaluate_checkpoint``'s result, L):
    ``<bench>`` for ``avg``, ``<bench>/<label>`` otherwise (``avg11``, ``gain``)."""
    _, bench, label, length = objective.split("/")
    return (bench if label == "avg" else f"{bench}/{label}"), length


def suggest(trial, space: dict[str, SearchDim]) -> dict[str, Any]:
    """Sample the space in order. ε_neg is kept below the sampled ε (the spec requires it)."""
    params: dict[str, Any] = {}
    for key, dim in space.items():
        if dim.choices is not None:
            params[key] = trial.suggest_categorical(key, dim.choices)
            continue
        low, high = dim.low, dim.high
        if key == "screening.epsilon_neg" and "screening.epsilon" in params:
            high = min(high, params["screening.epsilon"] - 1e-3)
        if dim.integer:
            params[key] = trial.suggest_int(key, int(low), int(high), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, low, high, log=dim.log)
    return params


def apply_params(spec: Spec, params: dict[str, Any], only_method: str | None = None) -> Spec:
    data = copy.deepcopy(resolved(spec))
    for key, value in params.items():
        _set_dotted(data, key, value, "tune")
    if only_method is not None:
        data["methods"] = [m for m in data["methods"] if (m["label"] or m["name"]) == only_method]
        data["output_dir"] = str(tune_dir(spec))
    return Spec.model_validate(data)


def _storage(spec: Spec):
    import warnings

    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = spec.tune.storage
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    hb = spec.tune.heartbeat_s
    from sqlalchemy.exc import IntegrityError, OperationalError

    # Opening a new storage creates its tables; two processes opening it at once (workers, a
    # dashboard, a script reading the study) can race on that ("table ... already exists"):
    # the loser retries, by which time the tables are there.
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # heartbeats are experimental in Optuna 5
                return RDBStorage(url, heartbeat_interval=hb, grace_period=2 * hb,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                      max_retry=2),
                                  engine_kwargs={"connect_args": {"timeout": 60}}
                                  if url.startswith("sqlite") else None)
        except (OperationalError, IntegrityError):
            if attempt == 4:
                raise
            time.sleep(0.5 * (attempt + 1))


def _pruner(spec: Spec):
    import optuna

    if spec.tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=spec.tune.startup_trials,
                                       n_warmup_steps=0)


def open_study(spec: Spec, worker: int = 0):
    import optuna

    study = optuna.create_study(study_name=study_name(spec), storage=_storage(spec),
                                direction=spec.tune.direction,
                                sampler=optuna.samplers.TPESampler(seed=spec.seed),
                                pruner=_pruner(spec), load_if_exists=True)
    # the sampler's seed moves on with the trials already stored: a worker that restarts on a
    # resumed study would otherwise draw the stream it drew before and propose its first
    # trials again (a study resumed after trial 0 asked trial 0's thresholds once more)
    stored = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=spec.seed + 1000 * worker + stored)
    return study


def _done_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


VALIDATION = "validation"   # the probe split trials are scored on (harness.evaluation.loss_gap.PROBE_SPLITS)


def validation_seed(spec: Spec) -> int:
    """The seed of tuning's probe items: never the final evaluation's ``spec.seed``."""
    from harness.evaluation.loss_gap import split_seed

    return split_seed(spec.seed, VALIDATION)


class Objective:
    """One trial: the tuned method's stage loop with the sampled thresholds, scored on the
    validation split of the probe entities with the validation seed (module doc)."""

    def __init__(self, spec: Spec, parent_run_id: str):
        from transformers import AutoTokenizer

        from harness.evaluation.loss_gap import probe_set
        from harness.construction.driver import prepare_resources
        from harness.layout import cache_dir
        from harness.experiments.wiring import resolve_inputs
        from harness.tracking import Tracking, resolve_uri

        self.spec = spec
        self.kind, *self.rest = spec.tune.objective.split("/")
        base, corpus = resolve_inputs(spec)
        self.tok = AutoTokenizer.from_pretrained(str(base))
        trial_spec = apply_params(spec, {}, spec.tune.method)
        self.resources = prepare_resources(trial_spec, self.tok, corpus, cache_dir(trial_spec))
        # validation entities only: the probe objective, the intermediate values and a
        # trial's stage/loss_gap_probe never see the final evaluation's (test) entities
        self.triples, self.probe = probe_set(spec, self.tok, VALIDATION)
        self.seed = validation_seed(spec)
        self.tracking = Tracking(resolve_uri(spec.tracking.uri),
                                 spec.tracking.experiment or spec.name)
        self.parent = self.tracking.tracker(parent_run_id)

    def _probe_value(self, ckpt, metric: str) -> float:
        """The probe's ``metric`` at the longest eval length on the validation entities,
        through the one evaluation path (cached beside the checkpoint)."""
        from harness.config import BenchmarkEntry
        from harness.evaluation.runner import eval_name, evaluate_checkpoint

        L = max(self.spec.eval.lengths)
        spec = self.spec.model_copy(update={"seed": self.seed, "eval": self.spec.eval.model_copy(
            update={"lengths": [L], "benchmarks": [BenchmarkEntry(name="probe")],
                    "short_context": []})})
        ev = evaluate_checkpoint(spec, ckpt, Path(ckpt).parent / eval_name(spec),
                                 split=VALIDATION, seed=self.seed, tokenizer=self.tok)
        key = "probe" if metric == "acc" else f"probe/{metric}"
        if str(L) not in ev.get(key, {}):
            raise SpecError(f"tune.objective probe/{metric}: eval length {L} is too short "
                            f"for a probe profile and query")
        return float(ev[key][str(L)])

    def _intermediate(self, ckpt, metrics: dict) -> float | None:
        if self.kind == "probe":
            return self._probe_value(ckpt, self.rest[0])
        if self.kind == "stage":
            v = metrics.get(self.rest[0])
            if v is None:
                raise SpecError(f"tune.objective stage/{self.rest[0]}: no such stage metric "
                                f"(have: {', '.join(sorted(metrics))})")
            return float(v)
        return self._probe_value(ckpt, "gain") if self.probe is not None else None

    def __call__(self, trial) -> float:
        import optuna

        from harness.evaluation.runner import eval_name, evaluate_checkpoint
        from harness.experiments.compare import run_method

        params = suggest(trial, self.spec.tune.space)
        spec = apply_params(self.spec, params, self.spec.tune.method)
        label = self.spec.tune.method
        last: dict[str, Any] = {"value": None, "ckpt": None}

        def on_stage(k, ckpt, metrics, tracker):
            v = self._intermediate(ckpt, metrics)
            last.update(value=v, ckpt=ckpt)
            if v is None:
                return
            tracker.log_metrics({"tune/objective": v}, k)
            trial.report(v, k)
            if trial.should_prune():
                tracker.set_tags({"tune_state": "PRUNED"})
                raise optuna.TrialPruned(f"stage {k}: {self.spec.tune.objective} = {v:.4g}")

        name = f"trial-{trial.number}"
        _log(f"{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in params.items()))
        tags = {"tune_study": study_name(self.spec), "tune_trial": str(trial.number)}
        # A pruned trial ends FINISHED with tune_state=PRUNED, as Optuna's own MLflow callback
        # records it (a state tag on a finished run), not as a failure.
        with self.tracking.run(name, parent=self.parent, tags=tags,
                               finished_on=(optuna.TrialPruned,)) as run:
            run.log_params({f"tune.{k}": v for k, v in params.items()})
            row = run_method(spec, label, self.tracking, run, self.resources, self.tok,
                             self.triples, run_name=label, on_stage=on_stage, evaluate=False)
            if self.kind == "eval":
                # the validation seed (and so its own cache name) for the final checkpoint's
                # evaluation; self.probe is the validation split
                vspec = spec.model_copy(update={"seed": self.seed})
                ev = evaluate_checkpoint(vspec, last["ckpt"],
                                         Path(last["ckpt"]).parent / eval_name(vspec),
                                         split=VALIDATION, seed=self.seed, tokenizer=self.tok)
                entry, length = objective_entry(self.spec.tune.objective)
                value = ev.get(entry, {}).get(length)
                if value is None:
                    raise RuntimeError(f"{self.spec.tune.objective}: not measured "
                                       f"(have {sorted(ev)})")
                value = float(value)
            else:
                value = float(last["value"])
            run.log_metrics({"tune/value": value}, len(row["stages"]))
            run.set_tags({"tune_state": "COMPLETE"})
        if not math.isfinite(value):
            raise RuntimeError(f"{name}: objective is {value}")
        _log(f"{name}: {self.spec.tune.objective} = {value:.4g}")
        return value


def run_worker(spec: Spec, worker: int = 0) -> None:
    """Run trials until the study holds ``tune.trials`` finished (complete or pruned) ones."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(spec, worker)
    _log(f"worker {worker}: {torch.get_num_threads()} CPU threads")
    parent = study.user_attrs.get(ATTR_PARENT)
    if parent is None:
        raise RuntimeError(f"study {study.study_name} has no MLflow parent run; start it with "
                           f"'policylong tune'")
    left = spec.tune.trials - _done_count(study)
    if left <= 0:
        return
    objective = Objective(spec, parent)
    stop = MaxTrialsCallback(spec.tune.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(objective, n_trials=left, callbacks=[stop], catch=(RuntimeError,))


def best_spec_path(spec: Spec) -> Path:
    return best_spec_file(spec, study_name(spec))


def write_best(spec: Spec, study) -> Path:
    """The original spec with the best trial's thresholds: ready for ``policylong compare``."""
    from harness.fileio import atomic_write_text

    best = study.best_trial
    tuned = apply_params(spec, {k: v for k, v in best.params.items()})
    data = resolved(tuned)
    data.pop("tune", None)
    header = (f"# {spec.name} with the thresholds of trial {best.number} of Optuna study "
              f"'{study.study_name}'\n# ({spec.tune.objective} = {best.value:.6g}, "
              f"{spec.tune.direction}); written by `policylong tune`.\n")
    out = best_spec_path(spec)
    atomic_write_text(out, header + yaml.safe_dump(data, sort_keys=False))
    return out


def worker_threads(workers: int, env: dict[str, str]) -> dict[str, str]:
    """The CPU threads of each of ``workers`` processes on this machine: the cores this process
    may use, split evenly (at least one each), as ``OMP_NUM_THREADS``, which torch and FAISS
    read at start-up. Without it every worker starts one thread a core: two workers on two
    cores took 35.7 s for a micro stage's construction that took 13.3 s with a thread each
    (8 s for one worker alone). An ``OMP_NUM_THREADS`` already set is the user's choice and
    kept (ours: the papers do not say how they ran their workers)."""
    from harness.fileio import threads_each

    return {} if env.get("OMP_NUM_THREADS") else {"OMP_NUM_THREADS": str(threads_each(workers))}


def tune(spec: Spec, workers: int = 1, spec_path: str | None = None,
         overrides: list[str] | None = None) -> dict:
    """Create or resume the study, run the trials (in ``workers`` processes), report the best."""
    from optuna.trial import TrialState

    from harness.tracking import Tracking, check_reachable, resolve_uri

    _check(spec)
    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    from harness.experiments.wiring import make_method, preflight
    make_method(spec, spec.tune.method)
    preflight(spec)
    study = open_study(spec)
    name = study.study_name
    if ATTR_PARENT not in study.user_attrs:
        tracking = Tracking(uri, spec.tracking.experiment or spec.name)
        parent = tracking.start_run(f"tune-{name}", tags={"spec": spec.name, "tune_study": name})
        parent.log_config(resolved(spec))
        study.set_user_attr(ATTR_PARENT, parent.run_id)
    done = _done_count(study)
    _log(f"study '{name}' ({spec.tune.storage}): {done} of {spec.tune.trials} trials finished; "
         f"objective {spec.tune.objective} ({spec.tune.direction})")
    t0 = time.perf_counter()
    if workers <= 1:
        run_worker(spec)
    else:
        if spec_path is None:
            raise ValueError("several workers need the spec file path")
        cmd = [sys.executable, "-m", "harness.cli", "tune", spec_path, "--worker-only",
               "--trials", str(spec.tune.trials)]
        for ov in overrides or []:
            cmd += ["-o", ov]
        from harness.tracking import environ_snapshot
        env = environ_snapshot()
        env.update(worker_threads(workers, env))
        procs = [subprocess.Popen(cmd + ["--worker-index", str(i)], env=env)
                 for i in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            raise RuntimeError(f"tune workers exited with {codes}")
    study = open_study(spec)
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    summary = {"study": name, "trials": len(finished), "complete": len(complete),
               "pruned": len(finished) - len(complete),
               "seconds": round(time.perf_counter() - t0, 1)}
    if complete:
        best = study.best_trial
        summary.update(best_value=best.value, best_params=best.params, best_trial=best.number,
                       best_spec=str(write_best(spec, study)))
        tracking = Tracking(uri, spec.tracking.experiment or spec.name)
        tracking.tracker(study.user_attrs[ATTR_PARENT]).log_metrics(
            {"tune/best_value": best.value}, 0)
    return summary
