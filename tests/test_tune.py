"""``policylong tune``: an Optuna study over a micro spec, killed mid-trial and resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_compare import micro_spec_file

REPO = Path(__file__).resolve().parents[1]


def tune_spec(tmp_path) -> Path:
    p = micro_spec_file(tmp_path, None)
    d = yaml.safe_load(p.read_text())
    d["methods"] = [m for m in d["methods"] if m["name"] == "policylong"]
    d["tune"] = {"trials": 3, "storage": f"sqlite:///{tmp_path}/optuna.db", "heartbeat_s": 1,
                 "startup_trials": 1,
                 "space": {"screening.epsilon": {"low": 0.2, "high": 0.6},
                           "screening.epsilon_neg": {"low": -0.3, "high": 0.5},
                           "screening.signal": {"choices": ["entropy", "nll"]}}}
    p.write_text(yaml.safe_dump(d))
    return p


def test_tune_spec_errors_name_the_key(tmp_path):
    from harness.config import SpecError, load_spec
    from harness.experiments.tune import _check

    p = tune_spec(tmp_path)
    with pytest.raises(SpecError, match="tune.space: 'screening.alfa' is not a key"):
        load_spec(p, ["tune.space={screening.alfa: {low: 1, high: 2}}"])
    with pytest.raises(SpecError, match="tune.objective"):
        load_spec(p, ["tune.objective=probe/accuracy"])
    with pytest.raises(SpecError, match="need low < high"):
        load_spec(p, ["tune.space={screening.alpha: {low: 3, high: 2}}"])
    with pytest.raises(SpecError, match="tune.method 'entropylong' is not among"):
        _check(load_spec(p, ["tune.method=entropylong"]))
    with pytest.raises(SpecError, match="shared corpus, model or index"):
        _check(load_spec(p, ["tune.space={retrieval.chunk_size: {low: 64, high: 256, "
                             "integer: true}}"]))


def test_a_resumed_study_proposes_new_thresholds(tmp_path):
    """A worker reopening a study draws on from where the stored trials leave it: with the
    seed alone its sampler proposed trial 0's thresholds again after a restart. A fresh study
    with the same seed still draws the same first trial."""
    from harness.config import load_spec
    from harness.experiments.tune import open_study, suggest

    spec = load_spec(tune_spec(tmp_path))
    first = suggest(open_study(spec).ask(), spec.tune.space)
    again = open_study(spec)                     # the restart: trial 0 is stored, not finished
    assert suggest(again.ask(), spec.tune.space) != first
    other = spec.model_copy(update={"tune": spec.tune.model_copy(
        update={"storage": f"sqlite:///{tmp_path}/other.db"})})
    assert suggest(open_study(other).ask(), other.tune.space) == first


def test_workers_split_the_cores_unless_told_how_many_threads():
    from harness.experiments.tune import worker_threads

    cores = len(os.sched_getaffinity(0))
    assert worker_threads(1, {}) == {"OMP_NUM_THREADS": str(cores)}
    assert worker_threads(cores * 2, {}) == {"OMP_NUM_THREADS": "1"}
    assert worker_threads(2, {"OMP_NUM_THREADS": "3"}) == {}


def test_suggest_keeps_epsilon_neg_below_epsilon():
    import optuna

    from harness.config import SearchDim
    from harness.experiments.tune import suggest

    space = {"screening.epsilon": SearchDim(low=0.1, high=0.3),
             "screening.epsilon_neg": SearchDim(low=-0.2, high=0.9)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        p = suggest(study.ask(), space)
        assert -0.2 <= p["screening.epsilon_neg"] < p["screening.epsilon"] <= 0.3


def _trials(storage: str, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_processes_opening_a_new_storage_at_once_all_succeed(tmp_path):
    """Opening a new sqlite storage creates its tables; without the retry in ``_storage`` one
    of two processes starting together failed with "table ... already exists" (6 of 8 pairs
    here), which killed a tuning run whose study was being read at its start."""
    script = ("import sys, types, warnings; warnings.simplefilter('ignore');"
              "from harness.experiments.tune import _storage;"
              "t = types.SimpleNamespace(storage=sys.argv[1], heartbeat_s=1);"
              "_storage(types.SimpleNamespace(tune=t))")
    for i in range(4):
        url = f"sqlite:///{tmp_path}/s{i}.db"
        procs = [subprocess.Popen([sys.executable, "-c", script, url], cwd=REPO,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]


@pytest.mark.slow
def test_tune_completes_and_resumes_after_a_kill(tmp_path, small_sandbox):
    from optuna.trial import TrialState
    from sqlalchemy.exc import IntegrityError, OperationalError

    from harness.config import load_spec
    from harness.tracking import Tracking
    from harness.experiments.tune import best_spec_path, study_name

    p = tune_spec(tmp_path)
    spec = load_spec(p)
    storage, name = spec.tune.storage, study_name(spec)
    env = dict(os.environ, POLICYLONG_SANDBOX_DIR=str(small_sandbox.parent),
               HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "harness.cli", "tune", str(p)]
    log = open(tmp_path / "tune.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if (tmp_path / "optuna.db").exists():
                try:
                    ts = _trials(storage, name)
                # the study or its tables not made yet, or this reader lost the race to stamp
                # the new storage's schema version with the tune process (as ``_storage``)
                except (KeyError, OperationalError, IntegrityError):
                    ts = []
                # a running trial that has drawn all its parameters (a kill between the trial's
                # creation and its draws leaves nothing to retry as it was: the retry draws anew)
                if any(t.state == TrialState.COMPLETE for t in ts) and \
                        any(t.state == TrialState.RUNNING and set(t.params) == set(spec.tune.space)
                            for t in ts):
                    break
            assert proc.poll() is None, "tune finished before it could be interrupted:\n" + \
                (tmp_path / "tune.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("no trial completed in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
    before = _trials(storage, name)
    first = next(t for t in before if t.state == TrialState.COMPLETE)
    killed = next(t for t in before if t.state == TrialState.RUNNING)
    time.sleep(2.5)   # past the heartbeat grace period (2 x 1 s)

    # resumed by two worker processes sharing the one storage
    r = subprocess.run(cmd + ["--workers", "2"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    # the two workers split this machine's cores instead of each taking all of them
    threads = os.environ.get("OMP_NUM_THREADS") or max(1, len(os.sched_getaffinity(0)) // 2)
    for i in range(2):
        assert f"worker {i}: {threads} CPU threads" in r.stderr
    after = _trials(storage, name)
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # nothing lost, nothing left running; Optuna's MaxTrialsCallback may let the second worker
    # finish the trial it had started when the first one reached the count
    assert 3 <= len(finished) <= 4
    assert not [t for t in after if t.state == TrialState.RUNNING]
    assert len({t.number for t in after}) == len(after)
    # the finished trial was kept, not rerun; the killed one was failed and retried as it was
    again = next(t for t in after if t.number == first.number)
    assert again.state == TrialState.COMPLETE and again.value == first.value
    assert next(t for t in after if t.number == killed.number).state == TrialState.FAIL
    retry = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
    assert set(killed.params) == set(spec.tune.space)
    assert len(retry) == 1 and retry[0].params == killed.params
    # the ready-to-run spec carries the best trial's thresholds
    best = min if spec.tune.direction == "minimize" else max
    top = best((t for t in after if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    tuned = load_spec(best_spec_path(spec))
    assert tuned.screening.epsilon == pytest.approx(top.params["screening.epsilon"])
    assert tuned.screening.signal == top.params["screening.signal"]
    assert [m.name for m in tuned.methods] == ["policylong"]
    # every trial is a nested MLflow run under the study's parent run
    tracking = Tracking(spec.tracking.uri, spec.name)
    runs = tracking.client.search_runs([tracking.experiment_id])
    parent = [x for x in runs if x.info.run_name == f"tune-{name}"]
    assert len(parent) == 1
    trials = tracking.children(parent[0].info.run_id)
    assert {x.data.tags["tune_trial"] for x in trials} >= {str(t.number) for t in finished}
    numbers = [x.data.tags["tune_trial"] for x in trials]
    assert len(numbers) == len(set(numbers)), "a trial was run twice"
    done = [x for x in trials if x.data.tags.get("tune_state") == "COMPLETE"]
    assert {x.data.metrics["tune/value"] for x in done} == \
        {t.value for t in after if t.state == TrialState.COMPLETE}


def test_tuning_and_final_evaluation_never_share_a_probe_entity_or_seed(tmp_path, monkeypatch):
    """The entities and seeds actually handed to ``run_probe`` (and the loss-gap triples) by a
    tuning trial, and by the final evaluation (compare's probe benchmark, ``policylong eval``'s
    probe), come from disjoint splits with distinct seeds. Everything expensive is stubbed:
    the sandbox is a generated probe file, the model is never run."""
    import contextlib

    import optuna
    from transformers import AutoTokenizer

    import benchmarks.probe as bp
    import harness.experiments.compare as C
    import harness.construction.driver
    import harness.experiments.wiring
    import harness.training.model_io
    from harness.evaluation import loss_gap
    import harness.tracking
    from harness.evaluation import runner as evaluate
    from harness.config import SpecError, load_spec
    from harness.evaluation.loss_gap import (PROBE_SPLITS, VALIDATION_SEED_OFFSET, sandbox_short_set,
                                sandbox_triples)
    from harness.sandbox import world as W
    from harness.sandbox.build import ASSET
    from harness.experiments.tune import Objective, _check

    # a sandbox folder with 300 probe entities (ids probe-00000 .. probe-00299, in order)
    sandbox = tmp_path / "sb"
    sandbox.mkdir()
    docs, probe = W.generate_corpus(W.WorldSpec(seed=0, n_entities=4, n_filler_docs=1,
                                                n_probe_entities=300))
    W.write_jsonl(sandbox / "corpus.jsonl", docs)
    W.write_jsonl(sandbox / "probe.jsonl", probe)
    index = {p["id"]: i for i, p in enumerate(probe)}
    monkeypatch.setattr(harness.experiments.wiring, "resolve_inputs",
                        lambda spec: (ASSET / "model", str(sandbox / "corpus.jsonl")))
    monkeypatch.setattr(loss_gap, "probe_entities", lambda spec: [
        json.loads(x) for x in (sandbox / "probe.jsonl").read_text().splitlines()])
    monkeypatch.setattr(harness.training.model_io, "load_eval_model",
                        lambda path, device="cpu": None)
    monkeypatch.setattr(harness.construction.driver, "prepare_resources", lambda *a, **k: None)

    calls: list[dict] = []

    def fake_run_probe(model, tokenizer, probe, lengths, n=64, seed=0, **kw):
        # probe_items reads probe[:n]; record that and the whole list it was given
        calls.append({"given": {p["id"] for p in probe},
                      "used": {p["id"] for p in probe[:n]}, "seed": seed})
        return {L: {"acc": 0.5, "gain": 0.1, "nll": 1.0, "control_nll": 1.1, "n": n,
                    "distance_mean": 1.0} for L in lengths}

    monkeypatch.setattr(bp, "run_probe", fake_run_probe)

    class _Run:
        def __getattr__(self, name):
            return lambda *a, **k: None

    class _Tracking:
        def __init__(self, *a, **k):
            self.client = None

        @contextlib.contextmanager
        def run(self, *a, **k):
            yield _Run()

        def tracker(self, run_id):
            return _Run()

    monkeypatch.setattr(harness.tracking, "Tracking", _Tracking)
    monkeypatch.setattr(harness.tracking, "Tracker", lambda *a, **k: _Run())
    seen_triples = []

    def fake_run_method(spec, label, tracking, parent, resources, tok, triples, **kw):
        seen_triples.append(triples)
        for k in range(spec.stages.count):
            kw["on_stage"](k, str(tmp_path / f"ckpt-{k}" / "model"), {}, _Run())
        return {"eval": {}, "stages": [{}] * spec.stages.count}

    monkeypatch.setattr(C, "run_method", fake_run_method)

    p = tune_spec(tmp_path)
    spec = load_spec(p)
    tok = AutoTokenizer.from_pretrained(str(ASSET / "model"))

    # the final evaluation: the one path compare and `policylong eval` take
    triples, test_probe = loss_gap.probe_set(spec, tok)
    evaluate.evaluate_checkpoint(spec, ASSET / "model", tmp_path / "eval-final")
    final = calls[:]
    assert len(final) == 1
    # tuning: the probe objective's intermediate values and final value, then an eval/...
    # objective, through Objective.__call__
    calls.clear()
    study = optuna.create_study(direction="maximize")
    for objective in ("probe/gain", "eval/probe/avg/1024"):
        s = load_spec(p, [f"tune.objective={objective}"])
        obj = Objective(s, "parent")
        assert obj(study.ask()) == pytest.approx(0.1 if objective == "probe/gain" else 0.5)
    tuning = calls[:]
    # per stage for the first objective, + the final eval of the second (the second's
    # per-stage values are read from the evaluation cached beside each checkpoint: the fake
    # trials share checkpoint paths)
    assert len(tuning) == spec.stages.count + 1

    lo, hi = PROBE_SPLITS["test"]
    vlo, vhi = PROBE_SPLITS["validation"]
    final_ids = set().union(*(c["given"] for c in final))
    tune_ids = set().union(*(c["given"] for c in tuning))
    assert all(lo <= index[i] < hi for i in final_ids)
    assert all(vlo <= index[i] < vhi for i in tune_ids)
    assert final_ids.isdisjoint(tune_ids) and tune_ids
    assert all(c["used"] for c in final + tuning)
    assert {c["seed"] for c in final} == {spec.seed}
    assert {c["seed"] for c in tuning} == {spec.seed + VALIDATION_SEED_OFFSET}
    # the loss-gap triples: test entities for compare, validation entities in a trial; the
    # short-context set is the third split
    assert triples == sandbox_triples(tok, probe, "test") and len(triples) == hi - lo
    assert seen_triples and all(t == sandbox_triples(tok, probe, "validation")
                                for t in seen_triples)
    assert seen_triples[0] != triples
    assert loss_gap.short_set(spec, tok, test_probe) == sandbox_short_set(tok, probe, "short")
    spans = sorted(PROBE_SPLITS.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # a sandbox with too few probe entities is refused with a clear message
    W.write_jsonl(sandbox / "probe.jsonl", probe[:250])
    with pytest.raises(SpecError, match="probe split 'validation' takes entities 200..299"):
        loss_gap.probe_set(spec, tok, "validation")
    with pytest.raises(SpecError, match="n_probe_entities is 200"):
        _check(load_spec(p, ["sandbox.n_probe_entities=200"]))
