"""Sandbox substitutes for absent benchmark data, and how reports show what did not run.

A fresh clone has no ``../shared/data``: ``$POLICYLONG_SHARED_DATA`` pointed at an empty folder
simulates it (the hub is offline in the tests). With the sandbox corpus, RULER's essay tasks
then use the world's filler as the haystack and LongBench-v2 a multiple-choice set made from
the test-split probe entities; both only when the real data is absent, both labelled as
substitutes in the provenance, the ``policylong eval`` table and the comparison report. A
benchmark that ran nowhere gets a sentence saying why instead of an empty plot."""
import json
import re
from pathlib import Path

import pytest

from benchmarks import longbench_v2 as lb
from harness.config import BenchmarkEntry, load_spec
from harness.evaluation import runner as E
from harness.evaluation.loss_gap import PROBE_SPLITS
from harness.experiments import report as R
from harness.sandbox import world as W

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "harness" / "assets" / "sandbox-model" / "model"


def _script(name: str):
    """``scripts/<name>.py`` loaded as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def fresh_clone(tmp_path, monkeypatch):
    """No staged reference data, no data env vars, the hub offline."""
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    monkeypatch.setenv("POLICYLONG_SHARED_DATA", str(empty))
    for var in ("POLICYLONG_ESSAYS", "POLICYLONG_LONGBENCH_V2"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return empty


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder like a built sandbox's, with only what the substitutes read: probe.jsonl."""
    _, probe = W.generate_corpus(W.WorldSpec(seed=3, n_entities=40, n_filler_docs=4,
                                             n_probe_entities=300))
    root = tmp_path_factory.mktemp("sandbox")
    W.write_jsonl(root / "probe.jsonl", probe)
    return root


def no_hub_essays(monkeypatch):
    """The essays' hub route fails at once (as offline), without importing datasets."""
    from benchmarks.ruler import common

    def essay_words(path):
        if path is None:
            raise ConnectionError("hub offline")
        return common.text_words(json.loads(Path(path).read_text())["text"])

    monkeypatch.setattr(common, "essay_words", essay_words)


def ruler(**params):
    return E.load_benchmark(BenchmarkEntry(name="ruler", tasks=["niah_single_1",
                                                               "niah_single_2"], params=params))


def mc(**params):
    return E.load_benchmark(BenchmarkEntry(name="longbench_v2", params=params))


# ---------------------------------------------------------------- A: the RULER haystack

def test_haystack_is_the_world_filler_in_the_essays_schema_and_deterministic(tmp_path):
    h = W.haystack()
    assert set(h) == {"text"} and h == W.haystack()
    assert W.haystack(seed=1) != h
    sentences = re.findall(r"[^.]+\.", h["text"])
    assert len(sentences) == W.HAYSTACK_SENTENCES
    assert all(s.strip().startswith("The ") for s in sentences[:50])


def test_ruler_essay_tasks_use_the_filler_only_without_the_essays(tokenizer, sandbox,
                                                                  tmp_path, monkeypatch):
    no_hub_essays(monkeypatch)
    bench = ruler(sandbox_dir=str(sandbox))
    noise = bench.samples("niah_single_1", 512, tokenizer, 2)
    assert "substitutes" not in bench.provenance()     # the noise haystack needs no essays
    got = bench.samples("niah_single_2", 512, tokenizer, 2)
    assert "The " in got[0].prompt and "special magic number" in got[0].prompt
    assert got[0].prompt.split("\n")[1][:40] in W.haystack()["text"]
    prov = bench.provenance()
    label = prov["substitutes"]["essay"]
    assert label.startswith("sandbox filler (substitute for PaulGrahamEssays)")
    assert f"v{W.HAYSTACK_VERSION}" in label and "no essays file was found" in label
    assert prov["data"]["essay"]["generator"] == "harness.sandbox.world.haystack"
    assert prov["data"]["essay"]["sha256"]
    again = ruler(sandbox_dir=str(sandbox)).samples("niah_single_2", 512, tokenizer, 2)
    assert [s.prompt for s in again] == [s.prompt for s in got] and noise
    # the substitute is the haystack file's text: the same samples from it as essay_path
    path = tmp_path / "haystack.json"
    path.write_text(json.dumps(W.haystack()))
    from_file = ruler(essay_path=str(path)).samples("niah_single_2", 512, tokenizer, 2)
    assert [s.prompt for s in from_file] == [s.prompt for s in got]


def test_the_shipped_model_reads_ruler_needles_at_its_base_context_and_less_far_past_it(
        tokenizer, sandbox, tmp_path, monkeypatch):
    """The shipped base model (recipe version 4) on RULER's niah_single_1 with the sandbox's
    filler haystack, greedy through transformers: well above chance (0) at 512, its base
    context, and lower at 2,048 (the same weights, positions past training)."""
    import shutil

    from harness.evaluation.backends import HFGreedy

    no_hub_essays(monkeypatch)
    model = tmp_path / "model"
    shutil.copytree(TOKENIZER, model)
    cfg = json.loads((model / "config.json").read_text())
    cfg["max_position_embeddings"] = 2048
    (model / "config.json").write_text(json.dumps(cfg))
    backend = HFGreedy(model, [tokenizer.eos_token_id], dtype="float32")
    bench, scores = ruler(sandbox_dir=str(sandbox)), {}
    for length in (512, 2048):
        got = bench.samples("niah_single_1", length, tokenizer, 8)
        out = backend.generate([tokenizer(x.prompt)["input_ids"] for x in got],
                               [24] * len(got))
        preds = [tokenizer.decode(o, skip_special_tokens=True) for o in out]
        scores[length] = bench.score("niah_single_1", got, preds).value
    assert scores[512] >= 75 and scores[2048] <= scores[512] - 50, scores


def test_ruler_keeps_real_essays_and_does_not_substitute_off_the_sandbox(
        tokenizer, sandbox, fresh_clone, monkeypatch):
    no_hub_essays(monkeypatch)
    essays = "Essays are long. " * 4000
    (fresh_clone / "PaulGrahamEssays.json").write_text(json.dumps({"text": essays}))
    bench = ruler(sandbox_dir=str(sandbox))
    assert "Essays are long." in bench.samples("niah_single_2", 512, tokenizer, 1)[0].prompt
    prov = bench.provenance()
    assert "substitutes" not in prov and prov["data"]["essay"]["path"].endswith(
        "PaulGrahamEssays.json")
    (fresh_clone / "PaulGrahamEssays.json").unlink()
    with pytest.raises(E.NotRun, match="essay haystack unavailable"):
        ruler().samples("niah_single_2", 512, tokenizer, 1)     # not the sandbox: not run


# ---------------------------------------------------------------- B: the multiple-choice set

def test_mc_items_follow_longbench_v2_schema_and_ask_planted_facts(sandbox):
    probe = [json.loads(x) for x in (sandbox / "probe.jsonl").read_text().splitlines()]
    test = probe[slice(*PROBE_SPLITS["test"])]
    items = W.mc_items(test, seed=0, context_chars=8000)
    assert items == W.mc_items(test, seed=0, context_chars=8000)            # deterministic
    assert items != W.mc_items(test, seed=1, context_chars=8000)
    lb.validate_items(items)
    assert all(list(it) == list(lb.FIELDS) for it in items)
    assert [it["difficulty"] for it in items[:4]] == ["easy", "hard"] * 2
    assert "".join(it["answer"] for it in items[:10]) == "AABBCCDDAA"     # balanced
    for it, e in zip(items, test):
        attr, value = W.mc_question(e, 0)
        choices = [it[f"choice_{c}"] for c in "ABCD"]
        assert it["question"] == f"Which {attr} does {e['entity']} keep?"
        assert it[f"choice_{it['answer']}"] == value and len(set(choices)) == 4
        same_attr = {v for x in test for a, v in x["facts"] + x["lookalike"]["facts"]
                     if a == attr}
        assert set(choices) <= same_attr                      # all values of that attribute
        head = it["context"].split("\n\n")[:2]
        assert e["profile"] in head                           # the evidence sits at the head
        words = set(re.findall(r"[A-Za-z]+", it["context"]))
        if it["difficulty"] == "hard":
            la = dict(map(tuple, e["lookalike"]["facts"]))[attr]
            assert e["lookalike_profile"] in head and la in choices
        else:
            assert not {c for c in choices if c != value} & words
        assert len(it["context"]) >= 8000


def test_longbench_v2_substitutes_test_split_items_only_when_its_data_is_absent(
        tokenizer, sandbox, fresh_clone):
    bench = mc(sandbox_dir=str(sandbox))
    got = bench.samples("overall", 1024, tokenizer, 4)
    items = bench.items()
    probe = [json.loads(x) for x in (sandbox / "probe.jsonl").read_text().splitlines()]
    start, end = PROBE_SPLITS["test"]
    assert [it["_id"].rsplit("-", 2)[-2:] for it in items] == [
        p["id"].split("-") for p in probe[start:end]]
    outside = [p["entity"] for p in probe[:start] + probe[end:]]
    assert not any(name in it["context"] for it in items for name in outside)
    prov = bench.provenance()
    label = prov["substitutes"]["data"]
    assert label.startswith("sandbox multiple-choice (substitute for LongBench-v2)")
    assert f"v{W.MC_VERSION}, seed 0" in label
    assert f"test split of the probe entities ({start}-{end - 1})" in label
    assert prov["data"]["generator"] == "harness.sandbox.world.mc_items"
    assert prov["data"]["probe"]["path"] == str((sandbox / "probe.jsonl").resolve())
    for s in got:   # truncated in the middle like real items; the evidence kept at the head
        assert len(tokenizer(s.prompt)["input_ids"]) <= 1024 - bench.reserve + 16
        assert s.prompt.endswith(lb.COMPLETION_ANSWER_PREFIX)
    item = items[0]
    attr, value = W.mc_question(probe[start], 0)
    assert W.fact(attr, probe[start]["first"], probe[start]["last"], value) in got[0].prompt
    assert got[0].references == [item["answer"]]
    # tuning's split: the validation entities, never the test split's
    val = mc(sandbox_dir=str(sandbox), sandbox_split="validation").items()
    assert val[0]["_id"].endswith(probe[PROBE_SPLITS["validation"][0]]["id"])
    with pytest.raises(ValueError, match="sandbox_split"):
        mc(sandbox_dir=str(sandbox), sandbox_split="train")
    # the real data wins whenever it is there
    real = [dict(items[0], _id="real-1", context="Real text.")]
    (fresh_clone / "longbench_v2_sample.json").write_text(json.dumps(real))
    bench = mc(sandbox_dir=str(sandbox))
    assert bench.items() == real and "substitutes" not in bench.provenance()


def test_longbench_v2_without_data_or_built_sandbox_is_not_run(tmp_path):
    with pytest.raises(E.NotRun, match="hub route failed"):
        mc().items()
    with pytest.raises(E.NotRun, match="policylong sandbox build"):
        mc(sandbox_dir=str(tmp_path / "unbuilt")).items()


def test_the_runner_passes_the_sandbox_only_for_a_sandbox_corpus(tmp_path):
    spec = load_spec(REPO / "runs" / "smoke.yaml")
    from harness.layout import sandbox_dir

    benches = {b.name: b for b in E.load_benchmarks(spec, ["ruler", "longbench_v2"])}
    assert benches["ruler"].sandbox_dir == sandbox_dir(spec.sandbox)
    assert benches["longbench_v2"].sandbox_dir == sandbox_dir(spec.sandbox)
    assert benches["longbench_v2"].sandbox_split == "test"
    entry = BenchmarkEntry(name="longbench_v2", params={"reserve": 100})
    tuned = E.with_sandbox(spec, entry, "validation")
    assert tuned.params == {"sandbox_dir": str(sandbox_dir(spec.sandbox)),
                            "sandbox_split": "validation", "reserve": 100}
    assert E.with_sandbox(spec, BenchmarkEntry(name="helmet_recall")).params == {}
    other = spec.model_copy(update={"corpus": spec.corpus.model_copy(
        update={"path": str(tmp_path / "docs.jsonl")})})
    assert E.with_sandbox(other, entry) is entry


def test_substitutes_reach_the_eval_table_and_the_comparison_entries():
    label = "sandbox multiple-choice (substitute for LongBench-v2): generated"
    results = {"lengths": [512], "benchmarks": {"longbench_v2": {
        "tasks": {"overall": {"512": 25.0}}, "breakdown": {}, "not_run": {},
        "average": {"512": {"mean": 25.0, "num_tasks": 1, "tasks": ["overall"],
                            "reference_tasks": 1, "label": "avg", "missing": {}}},
        "provenance": {"preset": "harness", "data": label,
                       "substitutes": {"data": label}}}}}
    assert f"substitute: longbench_v2 data: {label}" in E.format_table(results)
    ev = E.compare_averages(results)
    assert ev == {"longbench_v2": {"512": 25.0},
                  f"longbench_v2/substitute/data: {label}": {"512": None}}

    class Recorder:
        def log_metrics(self, metrics, step):
            self.metrics = metrics

    rec = Recorder()
    E.log_averages(rec, ev)
    assert rec.metrics == {"eval/longbench_v2/avg/512": 25.0}
    tables = R.score_tables({"rows": {"base": {"eval": ev}}})
    name = next(iter(tables))
    assert name.startswith("longbench_v2") and "substitute data" in name
    notes = " ".join(r[0] for r in tables[name][1] if not any(r[1:]))
    assert "substitute data (base): data: sandbox multiple-choice" in notes


# ---------------------------------------------------------------- D: not-run cells and plots

LB_WHY = ("no LongBench-v2 file (params.path, POLICYLONG_LONGBENCH_V2 or "
          "/x/longbench_v2_sample.json) and the hub route failed: offline")
CONTEXT_WHY = "length past the model's context (512 tokens: max_position_embeddings 512)"


def fresh_clone_results() -> dict:
    """LongBench-v2 not run anywhere; the base model past its context at 1024."""
    def row(lengths, past=()):
        ev = {"ruler/avg3": {str(L): 10.0 for L in lengths},
              "longbench_v2": {str(L): None for L in lengths},
              f"longbench_v2/not_run/overall: {LB_WHY}": {str(L): None for L in lengths}}
        if past:
            for b in ("ruler", "longbench_v2"):
                ev[f"{b}/not_run/all tasks: {CONTEXT_WHY}"] = {str(L): None for L in past}
        return ev

    return {"spec": "fresh", "config_hash": "h",
            "rows": {"base": {"eval": row([512], past=[1024])},
                     "policylong": {"eval": row([512, 1024])}}}


def test_every_not_run_cell_says_why_and_a_benchmark_run_nowhere_has_no_plot(tmp_path):
    res = fresh_clone_results()
    assert R.ran_nowhere(res) == {"longbench_v2": (
        f"longbench_v2 ran for no method at any length, so it has no plot. Why: "
        f"overall: {LB_WHY}; all tasks: {CONTEXT_WHY}")}
    tables = R.score_tables(res)
    for name, (header, body) in tables.items():
        notes = " ".join(r[0].strip() for r in body if not any(r[1:]))
        for r in body:
            for cell in r[1:]:
                if cell.startswith("not run"):
                    ref = cell.split()[-1]
                    assert ref in notes
    ruler_body = next(v for k, v in tables.items() if k.startswith("ruler"))[1]
    base = next(r for r in ruler_body if r[0] == "base")
    assert base[2].startswith("not run [")
    joined = " ".join(r[0].strip() for r in ruler_body if not any(r[1:]))
    assert "length past the model's context (512 tokens:" in joined
    md, html_path, text = R.write_report(res, tmp_path)
    assert not (tmp_path / "plots" / "score_longbench_v2.png").exists()
    assert (tmp_path / "plots" / "score_ruler.png").exists()
    for out in (md.read_text(), html_path.read_text(), text):
        assert "longbench_v2 ran for no method at any length, so it has no plot" in out
        assert "no LongBench-v2 file" in out


def test_loss_benchmark_metrics_get_their_own_tables():
    ev = {"probe": {"512": 0.5}, "probe/gain": {"512": 2.0}, "probe/nll": {"512": 3.0},
          "probe/not_run/probe: lengths [256]: too short": {"256": None}}
    tables = R.score_tables({"rows": {"base": {"eval": ev}}})
    assert sorted(tables) == ["probe", "probe/gain", "probe/nll"]
    assert tables["probe"][1][0][1:3] == ["not run [1]", "0.500"]
    assert tables["probe/gain"][1][0][2] == "2.000"


def test_evaluate_checkpoint_records_lengths_past_the_model(tmp_path, monkeypatch, tokenizer):
    spec = load_spec(REPO / "runs" / "smoke.yaml", [
        f"output_dir={tmp_path}", "eval.lengths=[512, 1024]", "eval.short_context=[]",
        "eval.benchmarks=[{name: ruler, tasks: [niah_single_1]}]"])
    monkeypatch.setattr(E, "model_limit", lambda path: (512, "max_position_embeddings 512"))
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: {"benchmarks": {}})
    ev = E.evaluate_checkpoint(spec, "m", tmp_path / "ev", tokenizer=tokenizer)
    assert ev == {f"ruler/not_run/all tasks: {CONTEXT_WHY}": {"1024": None}}


def test_mlflow_round_trip_keeps_the_substitution(tmp_path):
    from harness.tracking import Tracking, eval_avg_key

    label = "sandbox filler (substitute for PaulGrahamEssays): v1"
    tracking = Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", "t")
    with tracking.run("compare-x", tags={"spec": "t"}) as parent:
        with tracking.run("base", parent=parent, tags={"method_label": "base"}) as child:
            child.log_metrics({eval_avg_key("ruler/avg3", 512): 10.0}, 0)
            child.log_params(E.provenance_params({"ruler": {"provenance": {
                "preset": "harness", "substitutes": {"essay": label}}}}))
    got = R.from_mlflow(tracking, parent.run_id)["rows"]["base"]["eval"]
    assert got[f"ruler/substitute/essay: {label}"] == {512: None}


# ---------------------------------------------------------------- C: the optional format phase

def test_the_shipped_model_is_the_recipe_s_and_its_key_follows_every_phase():
    """The shipped asset was made by the current recipe (its key is the recipe's), and turning
    a phase off or changing the copy warm-up gives another model key (a cached sandbox built
    by another recipe is not taken for this one)."""
    import dataclasses

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    shipped = json.loads((Bd.ASSET / "recipe.json").read_text())
    assert shipped["model_key"] == Bd.model_key(SandboxSpec())
    current = json.loads(json.dumps(dataclasses.asdict(Bd.RECIPE)))
    # a field added to the recipe after the asset was made is absent from its recipe.json (whose
    # bytes the kept study seeds hash); it must sit at the value that leaves the key as it was
    later = {k: current.pop(k) for k in set(current) - set(shipped["recipe"])}
    assert later == {"format_drill_mode": "rows", "format_mc_prompt": "completion",
                     "stages": []}, later
    assert shipped["recipe"] == current
    assert Bd.RECIPE.format_steps > 0 and Bd.RECIPE.copy_warmup_steps > 0
    for change in ({"format_steps": 0}, {"copy_warmup_steps": 100}, {"copy_share": 0.0},
                   {"cot_steps": 100}):
        assert Bd.model_key(SandboxSpec(), dataclasses.replace(Bd.RECIPE, **change)) != \
            shipped["model_key"], change


def test_format_rows_teach_the_answers_of_non_probe_entities(tokenizer):
    import dataclasses

    import numpy as np

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    s = SandboxSpec()
    entities = Bd.format_entities(s, 50, seed=2000)
    _, probe = W.generate_corpus(Bd.world_spec(s))
    assert not {e["entity"] for e in entities} & {p["entity"] for p in probe}
    recipe = dataclasses.replace(Bd.RECIPE, format_steps=4, format_retain_every=4)
    ids, pos, pad = Bd.format_rows(s, tokenizer, recipe)
    B, T = recipe.micro_batch, recipe.context
    assert ids.shape == (4 * B, T) and pos.shape == ids.shape == pad.shape
    # step 3: phase 2's mix, text rows with the loss on every token and copy_share of the rows
    # slice copying (the loss on the slices)
    copy_rows = pad[3 * B:].any(axis=1)
    assert copy_rows.sum() == int(B * recipe.copy_share) and not pad[3 * B:][~copy_rows].any()
    texts = [tokenizer.decode(ids[r]) for r in range(3 * B)]
    assert any("special magic" in t for t in texts)
    assert any(lb.COMPLETION_ANSWER_PREFIX + " (" in t for t in texts)
    for r in range(3 * B):   # loss only on the answers: each run = last prompt token, answer, EOS
        carried = np.flatnonzero(~pad[r])
        runs = np.split(carried, np.flatnonzero(np.diff(carried) > 1) + 1)
        assert runs and all(2 < len(run) < 80 for run in runs)
        for run in runs:
            answer = tokenizer.decode(ids[r, run[1:]])
            assert re.fullmatch(r" \([ABCD]\)<\|endoftext\|>", answer) or re.fullmatch(
                r" [0-9a-f-]+(, [0-9a-f-]+)*\.<\|endoftext\|>", answer), answer


def test_format_phase_script_rejects_a_field_that_is_not_a_format_field(tmp_path, capsys):
    script = _script("sandbox_format_phase")
    for bad in ("lr=1e-3", "copy_warmup_steps=0", "format_lrr=1e-3", "format_lr", "format_lr=abc",
                "format_steps=1.5", "format_mc_answer=3", "format_steps=5", "cot_steps=5"):
        with pytest.raises(SystemExit) as exc:
            script.main(["--out", str(tmp_path / "m"), "--steps", "2", "--set", bad])
        assert exc.value.code == 2
        assert f"--set {bad!r}" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    # YAML 1.1 reads 3e-4 (no dot) as a string: the field's type decides
    assert script.recipe_changes(["format_lr=3e-4", "format_retain_every=2",
                                  "format_drill_share=0", "copy_share=0.5"]) == {
        "format_lr": 3e-4, "format_retain_every": 2, "format_drill_share": 0.0,
        "copy_share": 0.5}


def test_copying_script_reports_each_model_and_refuses_a_folder_without_a_model(tmp_path,
                                                                                 capsys):
    import json

    import torch
    from transformers import AutoTokenizer

    from harness.sandbox.build import ASSET
    from harness.training.model_io import load_model, save_checkpoint

    script = _script("sandbox_copying")
    with pytest.raises(SystemExit) as exc:
        script.main(["--model", str(tmp_path)])
    assert exc.value.code == 2 and "no config.json" in capsys.readouterr().err

    other = tmp_path / "other"   # the shipped model with its attention outputs scaled down
    model = load_model(ASSET / "model")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(0.1)
    save_checkpoint(model, AutoTokenizer.from_pretrained(str(ASSET / "model")), other)
    out = tmp_path / "copying.json"
    assert script.main(["--model", str(ASSET / "model"), "--model", str(other),
                        "--samples", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    shipped, changed = rows[str(ASSET / "model")], rows[str(other)]
    for r in (shipped, changed):   # the answer " 1234567." is a space, 7 digits, a full stop
        assert len(r["ruler_answer_nll"]) == 9
        assert set(r["copying"]) == {"words", "digits"}
    assert shipped != changed
    printed = capsys.readouterr().out
    assert str(other)[-50:] in printed and "ln 10 = 2.30" in printed


def test_phase_4_rows_hold_both_cot_passes_of_the_benchmark_s_own_prompts(tokenizer, tmp_path):
    """Phase 4 (off in the shipped recipe): each multiple-choice item gives the CoT pass's
    prompt with the planted fact as its answer, and the answer pass's prompt (the benchmark's
    own follow-up, that fact as the CoT) with the letter; the model key counts phase 4 only
    when it is on."""
    import dataclasses

    import numpy as np

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    s = SandboxSpec()
    recipe = dataclasses.replace(Bd.RECIPE, cot_steps=4, format_retain_every=4,
                                 cot_mc_share=1.0)
    assert Bd.model_key(s, recipe) != Bd.model_key(s)
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, cot_lr=5.0)) == Bd.model_key(s)
    ids, pos, pad = Bd.format_rows(s, tokenizer, recipe, phase=4)
    B = recipe.micro_batch
    facts = letters = 0
    for r in range(3 * B):
        carried = np.flatnonzero(~pad[r])
        for run in np.split(carried, np.flatnonzero(np.diff(carried) > 1) + 1):
            prompt = tokenizer.decode(ids[r, run[0] - pos[r, run[0]]:run[0] + 1])
            answer = tokenizer.decode(ids[r, run[1:]])
            if m := re.fullmatch(r" (\w+ \w+) keeps the (\w+) (\w+)\.<\|endoftext\|>", answer):
                facts += 1
                assert prompt.endswith("Let\u2019s think step by step:")
                assert f"Which {m[2]} does {m[1]} keep?" in prompt
                assert f"{m[1]} keeps the {m[2]} {m[3]}." in prompt   # the evidence survived
            else:
                letters += 1
                assert re.fullmatch(r" \(([ABCD])\)<\|endoftext\|>", answer), answer
                fact = re.search(r"step by step: (\w+ \w+ keeps the \w+ (\w+))\.", prompt)
                letter = answer[2]
                assert "The text is too long and omitted here." in prompt
                assert f"({letter}) {fact[2]}\n" in prompt
                assert prompt.endswith(lb.COMPLETION_ANSWER_PREFIX)
    assert facts > 0 and letters > 0
    answers = Bd.cot_examples(s, tokenizer, 60, 4000, tmp_path, 512, passes="answer")
    assert len(answers) == 60 and all(re.fullmatch(r" \([ABCD]\)", a) for _, a in answers)
    with pytest.raises(ValueError, match="cot_passes"):
        Bd.cot_examples(s, tokenizer, 6, 4000, tmp_path, 512, passes="second")
    with pytest.raises(ValueError, match="phase"):
        Bd.format_rows(s, tokenizer, recipe, phase=5)


def test_value_first_mc_answers_name_the_item_s_value_and_its_letter(tokenizer, tmp_path):
    """``format_mc_answer`` (a trial, off in the shipped recipe): the one-pass answer names the
    right choice's value (``value``) or states the planted fact (``fact``) and then gives the
    official answer line, which the official extraction reads off the completion; the
    version-4 default leaves the model key as it was."""
    import dataclasses

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    s = SandboxSpec()
    assert Bd.model_key(s) == Bd.model_key(s, dataclasses.replace(Bd.RECIPE,
                                                                 format_mc_answer="letter"))
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_mc_answer="value")) \
        != Bd.model_key(s)
    letters = Bd.mc_examples(s, tokenizer, 40, 2000, tmp_path, 512)
    for form in ("value", "fact"):
        got = Bd.mc_examples(s, tokenizer, 40, 2000, tmp_path, 512, answer=form)
        assert [p for p, _ in got] == [p for p, _ in letters]   # the same items, other answers
        for (prompt, answer), (_, letter) in zip(got, letters):
            m = re.fullmatch(r" (?:(\w+ \w+) keeps the (\w+) )?(\w+)\. The correct answer is "
                             r"\(([ABCD])\)\.", answer)
            assert m and bool(m[1]) == (form == "fact"), answer
            assert f" ({m[4]})" == letter
            assert lb.extract_answer(lb.COMPLETION_ANSWER_PREFIX + answer) == m[4]
            assert f"({m[4]}) {m[3]}\n" in prompt                 # the value is that choice's
            if form == "fact":
                assert f"{m[1]} keeps the {m[2]} {m[3]}." in prompt
                assert f"Which {m[2]} does {m[1]} keep?" in prompt
    with pytest.raises(ValueError, match="format_mc_answer"):
        Bd.mc_examples(s, tokenizer, 2, 2000, tmp_path, 512, answer="letters")
    with pytest.raises(ValueError, match="entities are too few"):   # not random.sample's error
        W.mc_items(Bd.format_entities(s, 3, 2000), 2000)


def test_in_place_letter_drills_state_the_fact_and_take_their_share_of_phase_3(tokenizer, tmp_path):
    """``format_drill_share`` (a trial, 0 in the shipped recipe): each drill is the one-pass
    prompt's tail with the asked fact stated and the answer line up to the letter of the choice
    holding that fact's value; that share of phase 3's format rows are drill rows whose loss
    falls on the letter and after it; the share 0 keeps version 4's rows and key."""
    import dataclasses
    import hashlib

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd
    import torch

    from harness.training.loss import packed_labels

    s = SandboxSpec()
    drills = Bd.mc_drills(s, tokenizer, 250, 3000, tmp_path)
    assert len(drills) == 250
    assert {a for _, a in drills} == {"A).", "B).", "C).", "D)."}
    assert Bd.mc_drills(s, tokenizer, 1044, 3000, tmp_path)[:250] == drills   # any count
    for prompt, answer in drills:
        m = re.fullmatch(r"What is the correct answer to this question: Which (\w+) does (\w+ \w+) "
                         r"keep\?\nChoices:\n\(A\) (\w+)\n\(B\) (\w+)\n\(C\) (\w+)\n\(D\) (\w+)\n\n"
                         r"Format your response as follows: .*\n\nThe correct answer is "
                         r"(\w+ \w+) keeps the (\w+) (\w+)\. The correct answer is \(", prompt)
        assert m, prompt
        assert (m[7], m[8]) == (m[2], m[1])                  # the fact the question asks
        assert m[3 + "ABCD".index(answer[0])] == m[9]          # the answer holds its value
        assert lb.extract_answer(prompt[prompt.index(lb.COMPLETION_ANSWER_PREFIX):] + answer) \
            == answer[0]
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.0)) \
        == Bd.model_key(s)
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.3)) \
        != Bd.model_key(s)

    def rows(share, mode="rows"):
        r = dataclasses.replace(Bd.RECIPE, format_steps=8, format_mc_share=0.9,
                                format_mc_answer="fact", format_drill_share=share,
                                format_drill_mode=mode)
        return Bd.format_rows(s, tokenizer, r)

    def digest(x):
        return hashlib.sha256(b"".join(a.tobytes() for a in x)).hexdigest()

    plain, mixed = rows(0.0), rows(0.5)
    assert digest(plain) == digest(rows(0.0)) != digest(mixed)
    ids, pos, pad = mixed
    drill_rows = [k for k in range(len(ids))
                  if tokenizer.decode(ids[k][:40]).startswith("What is the correct answer")]
    assert len(drill_rows) == 24              # half of the 6 format steps' 8 rows
    assert drill_rows != list(range(min(drill_rows), min(drill_rows) + 24))   # spread
    for k in drill_rows:                      # loss on each drill's letter and after it
        said = tokenizer.decode(ids[k][~pad[k]])
        assert re.fullmatch(r"(\([ABCD]\)\.<\|endoftext\|>){2,}", said), said
    with pytest.raises(ValueError, match="format_drill_share"):
        rows(1.0)

    # format_drill_mode="steps": the drill rows make whole batches, the loss on the letter alone
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.3,
                                               format_drill_mode="rows")) \
        == Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.3))
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.3,
                                               format_drill_mode="steps")) \
        != Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_drill_share=0.3))
    by_step = rows(0.5, "steps")
    assert digest(by_step) != digest(mixed)
    ids, pos, pad = by_step
    B = Bd.RECIPE.micro_batch
    is_drill = [tokenizer.decode(ids[k][:40]).startswith("What is the correct answer")
                for k in range(len(ids))]
    assert sum(is_drill) == 24
    batches = {tuple(is_drill[b * B:(b + 1) * B]) for b in range(len(ids) // B)}
    assert batches == {(True,) * B, (False,) * B}            # no batch mixes the two
    assert is_drill[:3 * B] != [True] * (3 * B)               # the drill steps are spread
    for k in (k for k in range(len(ids)) if is_drill[k]):     # loss on each letter alone
        said = tokenizer.decode(ids[k][~pad[k]])
        assert re.fullmatch(r"(\([ABCD]){2,}", said), said
    labels = packed_labels(*(torch.from_numpy(x[is_drill]) for x in (ids, pos, pad)))
    assert {tokenizer.decode([t]).strip() for t in labels[labels != -100].tolist()} \
        == set("ABCD")
    assert len(labels[labels != -100]) >= 2 * 24          # two or more drills a row
    with pytest.raises(ValueError, match="format_drill_mode"):
        rows(0.5, "step")


def test_value_form_drills_state_the_value_alone_in_phase_3_and_in_the_measurement(
        tokenizer, tmp_path):
    """With ``format_mc_answer`` ``value`` the drills state what that form's response states:
    the value alone before the answer line, otherwise the fact drills' text; phase 3's drill
    rows follow the form, and the measuring script's in-place prompts do too."""
    import dataclasses

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    s = SandboxSpec()
    facts = Bd.mc_drills(s, tokenizer, 30, 3000, tmp_path)
    values = Bd.mc_drills(s, tokenizer, 30, 3000, tmp_path, "value")
    assert [a for _, a in values] == [a for _, a in facts]
    for (f, _), (v, a) in zip(facts, values):
        m = re.fullmatch(r"(.*\nThe correct answer is) (\w+ \w+) keeps the (\w+) (\w+)\. "
                         r"The correct answer is \(", f, re.S)
        assert m and v == f"{m[1]} {m[4]}. The correct answer is ("
        assert f"({a[0]}) {m[4]}\n" in v and "keeps the" not in v
    with pytest.raises(ValueError, match="stated"):
        Bd.mc_drills(s, tokenizer, 2, 3000, tmp_path, "letter")

    def drill_text(answer):
        r = dataclasses.replace(Bd.RECIPE, format_steps=8, format_mc_share=0.9,
                                format_mc_answer=answer, format_drill_share=0.5,
                                format_drill_mode="steps")
        ids, _, _ = Bd.format_rows(s, tokenizer, r)
        return [tokenizer.decode(x) for x in ids
                if tokenizer.decode(x[:40]).startswith("What is the correct answer")]

    by_value, by_fact = drill_text("value"), drill_text("fact")
    assert len(by_value) == len(by_fact) == 24
    assert not any("keeps the" in t for t in by_value)
    assert all("keeps the" in t for t in by_fact)
    assert all(re.search(r"The correct answer is \w+\. The correct answer is \([ABCD]", t)
               for t in by_value)

    script = _script("sandbox_mc_cot")
    item = {"question": "Which lantern does Lozen Braibrem keep?", "answer": "C",
            "choice_A": "moshath", "choice_B": "chevar", "choice_C": "dravin", "choice_D": "kelp"}
    assert script._letter_prompt("<prompt>", item, "value") == (
        "<prompt> dravin. The correct answer is (")
    assert script._letter_prompt("<prompt>", item) == (
        "<prompt> Lozen Braibrem keeps the lantern dravin. The correct answer is (")


def test_open_prompt_examples_and_drills_write_the_whole_answer_line(tokenizer, tmp_path):
    """``format_mc_prompt`` ``open`` (a trial; ``completion`` in the shipped recipe): the same
    items' prompts less the completion form's answer prefix, the responses and drills then
    writing the whole answer line; the default keeps version 4's key, ``open`` changes it, and
    the measuring script reads the open form's responses as the benchmark does."""
    import dataclasses

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd

    s = SandboxSpec()
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_mc_prompt="completion")) \
        == Bd.model_key(s) != Bd.model_key(s, dataclasses.replace(Bd.RECIPE,
                                                                   format_mc_prompt="open"))
    line = lb.COMPLETION_ANSWER_PREFIX
    for answer in ("letter", "value"):
        shut = Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, answer)
        opened = Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, answer, "open")
        assert len(opened) == len(shut) == 20
        for (p, a), (q, b) in zip(opened, shut):
            assert p.endswith("\n\n") and p + line == q
            letter = re.search(r"\(([ABCD])\)", b)[1]
            assert lb.extract_answer(a) == letter == lb.extract_answer(line + b)
            assert a == (f"{line} ({letter})." if answer == "letter" else b.lstrip())
    for stated in ("fact", "value"):
        shut = Bd.mc_drills(s, tokenizer, 20, 3000, tmp_path, stated)
        opened = Bd.mc_drills(s, tokenizer, 20, 3000, tmp_path, stated, "open")
        for (p, a), (q, b) in zip(opened, shut):
            head, _, tail = p.rpartition("\n\n")
            assert a == b and q == f"{head}\n\n{line} {tail}"
            assert p.count(line) == 2                    # the format line's and the answer line's
    # open-spaced: the open prompt, the response after a space, so that the value is the one
    # token it is among the choices (after the blank line alone it splits into pieces)
    for (p, a), (q, b) in zip(Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, "letter",
                                             "open-spaced"),
                              Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, "letter",
                                             "open")):
        assert p == q and a == " " + b
    for (p, a), (q, b) in zip(Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, "value",
                                             "open-spaced"),
                              Bd.mc_examples(s, tokenizer, 20, 2000, tmp_path, 512, "value",
                                             "open")):
        assert p == q and a == " " + b
        value = a.split(".")[0]
        ids = tokenizer(value, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] in tokenizer(p)["input_ids"]
        assert len(tokenizer(b.split(".")[0], add_special_tokens=False)["input_ids"]) > 1
    for (p, a), (q, b) in zip(Bd.mc_drills(s, tokenizer, 20, 3000, tmp_path, "value",
                                           "open-spaced"),
                              Bd.mc_drills(s, tokenizer, 20, 3000, tmp_path, "value", "open")):
        head, _, tail = q.rpartition("\n\n")
        assert a == b and p == f"{head}\n\n {tail}"
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_mc_prompt="open")) != \
        Bd.model_key(s, dataclasses.replace(Bd.RECIPE, format_mc_prompt="open-spaced"))
    with pytest.raises(ValueError, match="format_mc_prompt"):
        Bd.mc_examples(s, tokenizer, 2, 2000, tmp_path, 512, "value", "chat")
    with pytest.raises(ValueError, match="format_mc_prompt"):
        Bd.format_rows(s, tokenizer, dataclasses.replace(Bd.RECIPE, format_steps=8,
                                                         format_mc_prompt="opne"))

    script = _script("sandbox_mc_cot")
    item = {"question": "Which lantern does Lozen Braibrem keep?", "answer": "C",
            "choice_A": "moshath", "choice_B": "chevar", "choice_C": "dravin", "choice_D": "kelp"}
    assert script._letter_prompt("<prompt>\n\n", item, "value", "") == (
        "<prompt>\n\ndravin. The correct answer is (")
    assert script._letter_prompt("<prompt>\n\n", item, "value", " ") == (
        "<prompt>\n\n dravin. The correct answer is (")
    assert script._letters([" (C)", "dravin. The correct answer is (C)."], "") == {
        "None": 1, "C": 1}
    assert script._letters([" (C)"], line) == {"C": 1}


@pytest.mark.extended     # a sandbox trial script, not the harness
def test_letter_drill_script_trains_reports_and_refuses_bad_arguments(tmp_path):
    import json
    import random

    from harness.fileio import sha256_file
    from harness.sandbox.build import ASSET

    script = _script("sandbox_letter_drill")
    for bad in (["--eval-every", "30"], ["--steps", "0"]):
        with pytest.raises(SystemExit) as exc:
            script.main(["--out", str(tmp_path / "bad"), *bad])
        assert exc.value.code == 2
    assert not (tmp_path / "bad").exists()
    prompt, letter = script.drill(random.Random(0), ["chevar", "moshath", "dravin", "sword", "kelp"])
    value = prompt.rsplit("\n", 1)[1].split(".")[0]
    assert f"({letter}) {value}\n" in prompt and prompt.endswith("The correct answer is (")
    assert script.main(["--out", str(tmp_path / "m"), "--steps", "25", "--eval-every", "25",
                        "-n", "8", "--lr", "1e-2"]) == 0
    report = json.loads((tmp_path / "m" / "letter_drill.json").read_text())
    first, last = report["history"]
    assert first["step"] == 0 and last["step"] == 25 and "loss" in last
    assert sum(last["predicted"].values()) == 8
    assert sha256_file(tmp_path / "m" / "model.safetensors") != sha256_file(
        ASSET / "model" / "model.safetensors")                  # it trained
    # the in-place form: the drills of phase 3's mix, measured on the held-out ones
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path / "bad"), "--form", "inplace"])
    assert script.main(["--out", str(tmp_path / "p"), "--form", "in-place", "--steps", "25",
                        "--eval-every", "25", "-n", "8", "--lr", "1e-2"]) == 0
    report = json.loads((tmp_path / "p" / "letter_drill.json").read_text())
    assert report["form"] == "in-place" and [h["step"] for h in report["history"]] == [0, 25]
    assert sum(report["history"][-1]["predicted"].values()) == 8
    assert sha256_file(tmp_path / "p" / "model.safetensors") != sha256_file(
        tmp_path / "m" / "model.safetensors")


def test_recipe_stages_repeat_the_trial_scripts_and_are_checked_before_work(tmp_path,
                                                                           monkeypatch):
    """A recipe's stages (a drill, then phase 3's mix with changed fields) give bit for bit the
    weights of the trial scripts run one after the other from the same weights; an empty list
    keeps version 4's key; a malformed stage is refused before any training."""
    import dataclasses

    import torch
    from transformers import AutoTokenizer

    from harness.config import SandboxSpec
    from harness.sandbox import build as Bd
    from harness.training.model_io import load_model

    shipped = Bd.ASSET / "model"
    drill, mix = _script("sandbox_letter_drill"), _script("sandbox_format_phase")
    assert drill.main(["--model", str(shipped), "--out", str(tmp_path / "a"), "--steps", "2",
                       "--form", "in-place-open-spaced", "-n", "4", "--copy-every", "2"]) == 0
    assert mix.main(["--model", str(tmp_path / "a"), "--out", str(tmp_path / "b"), "--steps",
                     "2", "--set", "format_mc_share=0", "--set", "format_seed_offset=9500",
                     "--set", "format_retain_every=2", "--set", "copy_share=0.5"]) == 0
    recipe = dataclasses.replace(Bd.RECIPE, stages=(
        {"drill": "in-place-open-spaced", "steps": 2, "copy_every": 2},
        {"mix": {"format_mc_share": 0, "format_seed_offset": 9500, "format_retain_every": 2,
                 "copy_share": 0.5}, "steps": 2}))
    model, tok = load_model(shipped), AutoTokenizer.from_pretrained(str(shipped))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Bd.run_stages(SandboxSpec(), model, tok, recipe)
    scripted = load_model(tmp_path / "b").state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, scripted[name]), name
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # copy_every 2: step 0 is drills (a letter each, about 3 a row), step 1 slice copying
    ids, pos, pad = Bd.drill_stage_data(SandboxSpec(), tok, "in-place", 2, tmp_path)
    B = Bd.RECIPE.micro_batch
    plain = (~pad[:B]).sum(axis=1)
    ids, pos, pad = Bd.drill_stage_data(SandboxSpec(), tok, "in-place", 2, tmp_path,
                                        copy_every=2)
    assert ((~pad[:B]).sum(axis=1) == plain).all() and plain.max() <= 2 * 4
    assert (~pad[B:]).sum(axis=1).min() > 2 * 8   # slices of 8-30 tokens, then EOS
    # the key: no stages is version 4's, each stage's settings count
    s = SandboxSpec()
    assert Bd.model_key(s, dataclasses.replace(Bd.RECIPE, stages=[])) == Bd.model_key(s)
    keys = {Bd.model_key(s, r) for r in (Bd.RECIPE, recipe, dataclasses.replace(
        recipe, stages=recipe.stages[:1]), dataclasses.replace(recipe, stages=(
            recipe.stages[0], {**recipe.stages[1], "steps": 3})))}
    assert len(keys) == 4
    # malformed stages: refused by name, before the tokenizer is trained
    monkeypatch.setattr(Bd, "train_sandbox_tokenizer", lambda *a, **k: pytest.fail("worked"))
    for stage, message in (({"drill": "alone", "steps": 2}, "drill must be one of"),
                           ({"drill": "in-place", "steps": 0}, "positive integer"),
                           ({"drill": "in-place"}, "expected"),
                           ({"drill": "in-place", "steps": 2, "copy_every": 1}, "copy_every"),
                           ({"drill": "in-place", "steps": 2, "mix": {}}, "expected"),
                           ({"mix": {"lr": 1.0}, "steps": 2}, "'lr' is not a field"),
                           ({"mix": {"format_lr": "fast"}, "steps": 2}, "format_lr takes a"),
                           ({"mix": {"format_steps": 5}, "steps": 2}, "its steps")):
        bad = dataclasses.replace(Bd.RECIPE, stages=(recipe.stages[0], stage))
        with pytest.raises(ValueError, match=r"stages\[1\].*" + re.escape(message)):
            Bd.pretrain(s, tmp_path / "never", bad)
    assert not (tmp_path / "never").exists()


def test_in_place_drill_rows_carry_the_letter_alone_and_are_not_the_held_out_ones(tokenizer,
                                                                                  tmp_path):
    import torch

    from harness.config import SandboxSpec
    from harness.sandbox.build import DRILL_STAGE_SEED, drill_forms, drill_stage_rows, mc_drills
    from harness.training.loss import packed_labels

    drill = _script("sandbox_letter_drill")
    assert drill.HELD_OUT_SEED == _script("sandbox_mc_cot").DRILL_SEED != DRILL_STAGE_SEED
    ids, pos, pad = drill_stage_rows(SandboxSpec(), tokenizer, 4, 512, tmp_path)
    labels = packed_labels(*(torch.from_numpy(x) for x in (ids, pos, pad)))
    letters = [tokenizer.decode([t]).strip() for t in labels[labels != -100].tolist()]
    assert set(letters) == set("ABCD") and len(letters) >= 4 * 2   # two or more drills a row
    text = tokenizer.decode(ids[0].tolist())
    assert text.startswith("What is the correct answer to this question")
    held_out = {p for p, _ in mc_drills(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED,
                                        tmp_path)}
    trained = {p for p, _ in mc_drills(SandboxSpec(), tokenizer, 20, DRILL_STAGE_SEED,
                                       tmp_path)}
    assert len(held_out) == len(trained) == 20 and not held_out & trained
    # the no-format form: the same drills less the format line, nothing else
    plain = drill_forms(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED, tmp_path,
                        "in-place-no-format")
    full = mc_drills(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED, tmp_path)
    for (p, a), (q, b) in zip(plain, full):
        assert a == b and "Format your response" not in p and "insert answer here" not in p
        assert len(p) < len(q) and p.startswith(q[:q.index("\nFormat")])
        assert p.endswith(q[q.index("\n\nThe correct answer is ") + 2:])
        assert p.count("The correct answer is") == 2
    # the value-only form: that, with the restated fact cut to its value
    bare = drill_forms(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED, tmp_path,
                       "in-place-value-only")
    for (p, a), (q, b) in zip(bare, plain):
        value = q.rsplit(". The correct answer is (", 1)[0].rsplit(" ", 1)[1]
        assert a == b and p == q[:q.rindex("\n\n") + 2] + f"{value}. The correct answer is ("
        assert f") {value}\n" in p and p.count("The correct answer is") == 1
    # the value-prefixed form: that, with the prompt's own answer prefix before the value
    prefixed = drill_forms(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED,
                           tmp_path, "in-place-value-prefixed")
    for (p, a), (q, b) in zip(prefixed, bare):
        cut = q.rindex("\n\n") + 2
        assert a == b and p == q[:cut] + "The correct answer is " + q[cut:]
        assert "Format your response" not in p and p.count("The correct answer is") == 2
    # the value-after-format form: the value-only one with the format line kept
    after = drill_forms(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED, tmp_path,
                        "in-place-value-after-format")
    for (p, a), (q, b), (f, _) in zip(after, bare, full):
        assert a == b and p == f[:f.rindex("\n\n") + 2] + q[q.rindex("\n\n") + 2:]
        assert "(insert answer here)" in p and p.count("The correct answer is") == 2
    # the open-spaced form: that, with a space before the value (which then is one token)
    spaced = drill_forms(SandboxSpec(), tokenizer, 20, drill.HELD_OUT_SEED, tmp_path,
                         "in-place-open-spaced")
    for (p, a), (q, b) in zip(spaced, after):
        cut = q.rindex("\n\n") + 2
        assert a == b and p == q[:cut] + " " + q[cut:]


def test_mc_cot_script_counts_the_second_hop_in_place():
    from types import SimpleNamespace

    script = _script("sandbox_mc_cot")
    item = {"question": "Which lantern does Lozen Braibrem keep?", "answer": "B",
            "choice_A": "moshath", "choice_B": "chevar", "choice_C": "dravin", "choice_D": "kelp"}
    x = SimpleNamespace(meta={"item": item})
    responses = [" Lozen Braibrem keeps the lantern chevar. The correct answer is (B).",
                 " Lozen Braibrem keeps the lantern dravin. The correct answer is (A).",
                 " Futhor Braibrem keeps the horse kelp. The correct answer is (D).",
                 " sword. The correct answer is (C).",
                 " (A)."]
    got = script._second_hop([x] * 5, responses, lb.COMPLETION_ANSWER_PREFIX)
    assert got == {"value_first": 1, "asked": 2, "named": 3, "agree": 2}
    assert script._fact(item) == ("Lozen Braibrem keeps the lantern chevar.",
                                  "Lozen Braibrem keeps the lantern")
    assert script._second_hop([x], [responses[1].replace("(A)", "(C)")],
                              lb.COMPLETION_ANSWER_PREFIX)["agree"] == 1
    # the second hop in place: the true fact, then the answer line up to the letter
    assert script._letter_prompt("<prompt>", item) == (
        "<prompt> Lozen Braibrem keeps the lantern chevar. The correct answer is (")
    with pytest.raises(SystemExit):
        script.main(["m", "--sandbox", "s", "--drills", "-1"])


def test_mc_cot_script_asks_about_the_split_it_is_given(tokenizer, sandbox):
    """``--split validation`` (choosing among trial models) asks about the validation
    entities, the default the test ones, and each is scored against its own items."""
    script = _script("sandbox_mc_cot")
    probe = [json.loads(x) for x in (sandbox / "probe.jsonl").read_text().splitlines()]
    said = []

    class Always:   # answers (A) to every one-pass prompt, remembering what it was asked
        def generate(self, ids, max_new):
            said.extend(tokenizer.decode(x) for x in ids)
            return [tokenizer(" (A).", add_special_tokens=False)["input_ids"] for _ in ids]

    for split in ("test", "validation"):
        said.clear()
        [row] = script.measure(tokenizer, Always(), sandbox, [512], 8, False, split=split)
        start, _ = PROBE_SPLITS[split]
        asked = [f"{p['first']} {p['last']} keep?" for p in probe[start:start + 8]]
        assert all(any(q in x for x in said) for q in asked), split
        items = mc(sandbox_dir=str(sandbox), sandbox_split=split).items()[:8]
        assert row["n"] == 8
        assert row["one_pass"] == 100 * sum(it["answer"] == "A" for it in items) / 8
    other = [f"{p['first']} {p['last']} keep?" for p in probe[:8]]
    assert not any(q in x for q in other for x in said)   # validation asked no test entity


def test_mc_cot_script_scores_held_out_drills_by_their_letters(tokenizer):
    """``--drills``: a backend that reads each drill's stated value off its choices scores
    every drill; one that always answers ``B`` scores the drills whose answer is ``B``."""
    script = _script("sandbox_mc_cot")

    def letter_of(prompt: str) -> str:
        value = prompt.rsplit(". The correct answer is (", 1)[0].rsplit(" ", 1)[1]
        return re.search(rf"\(([ABCD])\) {value}\n", prompt)[1]

    class Answering:
        def __init__(self, answer):
            self.answer = answer

        def generate(self, ids, max_new):
            assert max_new == [1] * len(ids)
            return [tokenizer(self.answer(tokenizer.decode(x, skip_special_tokens=True)),
                              add_special_tokens=False)["input_ids"] for x in ids]

    right = script.held_out_drills(tokenizer, Answering(letter_of), 40)
    assert right["n"] == 40 and right["right"] == 40
    assert set(right["letters"]) == set("ABCD") and sum(right["letters"].values()) == 40
    always_b = script.held_out_drills(tokenizer, Answering(lambda _: "B"), 40)
    assert always_b["letters"] == {"B": 40}
    assert always_b["right"] == right["letters"]["B"] < 40


@pytest.mark.extended     # a sandbox trial script, not the harness
def test_letter_drill_script_deepens_the_model_when_asked_and_refuses_an_impossible_depth(
        tmp_path, capsys):
    import json

    script = _script("sandbox_letter_drill")
    with pytest.raises(SystemExit) as exc:
        script.main(["--out", str(tmp_path / "bad"), "--grow-to", "5", "--steps", "25"])
    assert exc.value.code == 2 and "--grow-to 5: expand_blocks: layers must be in" in (
        capsys.readouterr().err)
    assert not (tmp_path / "bad").exists()
    assert script.main(["--out", str(tmp_path / "m"), "--grow-to", "4", "--steps", "25",
                        "--eval-every", "25", "-n", "8"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    report = json.loads((tmp_path / "m" / "letter_drill.json").read_text())
    assert config["num_hidden_layers"] == 4 and len(config["layer_types"]) == 4
    assert report["grow_to"] == 4 and [h["step"] for h in report["history"]] == [0, 25]
    assert not report["freeze_original"]

    # LLaMA Pro's way: the inserted blocks train, everything the given model had stays as it was
    import torch
    from safetensors.torch import load_file

    with pytest.raises(SystemExit) as exc:
        script.main(["--out", str(tmp_path / "bad"), "--freeze-original", "--steps", "25"])
    assert exc.value.code == 2 and "--freeze-original needs --grow-to" in capsys.readouterr().err
    assert script.main(["--out", str(tmp_path / "f"), "--grow-to", "4", "--freeze-original",
                        "--steps", "25", "--eval-every", "25", "-n", "8"]) == 0
    shipped = load_file(str(script.ASSET_MODEL / "model.safetensors"))
    frozen = load_file(str(tmp_path / "f" / "model.safetensors"))
    free = load_file(str(tmp_path / "m" / "model.safetensors"))
    moved = lambda st, a, b: any(not torch.equal(st[k.replace(f"layers.{b}.", f"layers.{a}.")],
                                                 shipped[k])
                                 for k in shipped if f"layers.{b}." in k)
    for grown, original in ((0, 0), (2, 1)):
        assert not moved(frozen, grown, original)
        assert moved(free, grown, original)   # without the flag they train too
    assert torch.equal(frozen["model.embed_tokens.weight"], shipped["model.embed_tokens.weight"])
    for inserted in (1, 3):
        assert frozen[f"model.layers.{inserted}.mlp.down_proj.weight"].abs().sum() > 0
    report = json.loads((tmp_path / "f" / "letter_drill.json").read_text())
    assert report["freeze_original"] and 0 < report["trainable_parameters"]
