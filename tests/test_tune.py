"""``policylong tune``: an Optuna study over a micro spec, killed mid-trial and resumed."""
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
    from harness.tune import _check

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


def test_suggest_keeps_epsilon_neg_below_epsilon():
    import optuna

    from harness.config import SearchDim
    from harness.tune import suggest

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
              "from harness.tune import _storage;"
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
def test_tune_completes_and_resumes_after_a_kill(tmp_path):
    from optuna.trial import TrialState
    from sqlalchemy.exc import OperationalError

    from harness.config import load_spec
    from harness.tracking import Tracking
    from harness.tune import best_spec_path, study_name

    p = tune_spec(tmp_path)
    spec = load_spec(p)
    storage, name = spec.tune.storage, study_name(spec)
    env = dict(os.environ, POLICYLONG_SANDBOX_DIR=str(tmp_path / "sandbox"), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "harness.cli", "tune", str(p)]
    log = open(tmp_path / "tune.log", "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            if (tmp_path / "optuna.db").exists():
                try:
                    ts = _trials(storage, name)
                except (KeyError, OperationalError):   # the study or its tables not made yet
                    ts = []
                if any(t.state == TrialState.COMPLETE for t in ts) and \
                        any(t.state == TrialState.RUNNING for t in ts):
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
