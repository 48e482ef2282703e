"""A fair experiment: equal loss-carrying tokens, one training run across stages, no hidden
root reuse, and a stage hash that sees what a stage depends on."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.construction.stage_data import Group, Packer, position_ids_from_groups
from harness.training.loss import packed_labels

REPO = Path(__file__).resolve().parents[1]


def _groups(n, lo, hi, seed=0, contexts=False):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = int(rng.integers(lo, hi))
        prov = {"root_id": f"r{i}"}
        out.append(Group(rng.integers(5, 500, size=k).tolist(), prov))
    return out


def _loss_count(ids, gidx):
    pos = torch.from_numpy(position_ids_from_groups(gidx))
    lab = packed_labels(torch.from_numpy(ids.astype(np.int64)), pos, torch.from_numpy(gidx < 0))
    return int((lab != -100).sum())


@pytest.mark.parametrize("attention", ["group", "row"])
@pytest.mark.parametrize("sizes", [(20, 200), (150, 1000), (1000, 1025)])
def test_packer_meets_the_loss_budget_exactly_as_the_training_loss_counts(attention, sizes):
    T, rows = 1024, 8
    budget = int(0.98 * rows * (T - 1))
    p = Packer(T, rows, budget, pad_id=0, attention=attention)
    for g in _groups(400, *sizes):
        if p.add(g):
            break
    assert p.done
    ids, gidx, placed = p.arrays()
    assert ids.shape == (rows, T)
    # the budget is what the training loss's own mask counts, not a row count
    assert _loss_count(ids, gidx) == budget == p.summary()["loss_tokens"]
    assert p.summary()["pad_tokens"] == int((gidx < 0).sum())
    # every placed group is where groups.jsonl will say it is
    for g, row, s, e in placed:
        assert ids[row, s:e].tolist() == g.tokens
    if attention == "row":   # one attention span per row: positions never restart inside it
        for r in range(rows):
            real = gidx[r][gidx[r] >= 0]
            assert len(set(real.tolist())) <= 1


def test_packer_is_deterministic_and_depends_on_its_input():
    def run(seed):
        p = Packer(512, 4, 1900, 0)
        for g in _groups(100, 30, 300, seed=seed):
            if p.add(g):
                break
        ids, gidx, _ = p.arrays()
        return ids.tobytes() + gidx.tobytes()
    assert run(0) == run(0)
    assert run(0) != run(1)


def test_packer_refuses_an_impossible_budget_and_oversized_groups():
    with pytest.raises(ValueError, match="cannot fit"):
        Packer(128, 2, 2 * 127 + 1, 0)
    p = Packer(128, 2, 100, 0)
    with pytest.raises(ValueError, match="exceeds the target length 128"):
        p.add(Group(list(range(129)), {"root_id": "big"}))


def test_root_stream_never_repeats_without_reuse():
    from harness.construction.driver import root_stream
    seen = [d for _, _, d in root_stream(50, 3, 10)]
    assert len(seen) == 40 and len(set(seen)) == 40
    again = [d for (_, _, d), _ in zip(root_stream(50, 3, 0, reuse=True), range(120))]
    assert len(again) == 120 and len(set(again)) == 50


def test_corpus_too_small_for_the_run_is_refused_with_the_numbers():
    from harness.config import Spec
    from harness.construction.driver import check_budget
    from harness.data.corpus import CorpusError

    spec = Spec.model_validate({"name": "x", "stages": {"count": 4, "tokens_per_stage": 8192,
                                                        "target_length": 1024},
                               "screening": {"window": 512}})
    with pytest.raises(CorpusError, match=r"stages\.count 4 x stages\.tokens_per_stage 8,192 "
                                          r"= 32,768 tokens"):
        check_budget(spec, "c.jsonl", 100, 30_000)
    check_budget(spec, "c.jsonl", 100, 40_000)
    reuse = spec.model_copy(update={"stages": spec.stages.model_copy(
        update={"allow_root_reuse": True})})
    check_budget(reuse, "c.jsonl", 100, 30_000)


def test_stage_config_hash_sees_method_stage_and_parameters():
    from harness.config import Spec
    from harness.construction.driver import StageContext, stage_config_hash
    from methods.nextlong import NExtLong
    from methods.standard import Standard

    spec = Spec.model_validate({"name": "x", "stages": {"count": 2, "tokens_per_stage": 8192,
                                                        "target_length": 1024},
                               "screening": {"window": 512}})

    def h(method, stage=0, spec=spec):
        ctx = StageContext(spec=spec, stage=stage, target_length=1024, token_budget=8192,
                           seed=0, resources=None, screening_model=None,
                           params=method.params.model_dump(mode="json"), work_dir=Path("."))
        return stage_config_hash(ctx, method)

    base = h(Standard())
    assert base == h(Standard())                                     # stable
    assert base != h(NExtLong())                                     # method
    assert base != h(Standard(), stage=1)                            # stage
    assert base != h(Standard({"document_masking": True}))           # parameter
    assert h(NExtLong()) != h(NExtLong({"granularity": 256}))
    eps = spec.model_copy(update={"screening": spec.screening.model_copy(
        update={"epsilon": 0.5})})
    assert base != h(Standard(), spec=eps)                            # construction settings

    def screening(**kw):
        return spec.model_copy(update={"screening": spec.screening.model_copy(update=kw)})

    assert base == h(Standard(), spec=screening(prefix_cache_mb=0))   # speed only
    assert base != h(Standard(), spec=screening(early_stop=True))     # changes the data
    assert base == h(Standard(), spec=screening(early_stop=False))


def _tiny_dataset(tmp_path, tok_dir, name, rows=8, T=64, seed=0):
    from transformers import AutoTokenizer
    from harness.construction.stage_data import write_stage_dataset

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    budget = int(0.98 * rows * (T - 1))
    p = Packer(T, rows, budget, tok.eos_token_id)
    for g in _groups(200, 10, 60, seed=seed):
        g.tokens = [t % len(tok) for t in g.tokens]
        if p.add(g):
            break
    ids, gidx, placed = p.arrays()
    return write_stage_dataset(tmp_path / name, ids, gidx, placed, {"method": "t"})


def test_continuous_schedule_warms_up_once_and_carries_the_optimizer(tmp_path, tiny_model_dir,
                                                                     tiny_tokenizer_dir):
    from harness.config import TrainSpec
    from harness.training.stage import optimizer_dir, train_stage

    lrs: list[tuple[int, float]] = []

    class Rec:
        def log_metrics(self, m, step):
            if "train/lr" in m:
                lrs.append((step, m["train/lr"]))

    cfg = TrainSpec(lr=1e-3, warmup_ratio=0.25, min_lr_ratio=0.0, batch_tokens=2 * 64,
                    micro_batch=2, loss_block=64)
    ckpt, offset = tiny_model_dir, 0
    for k in range(3):
        ds = _tiny_dataset(tmp_path, tiny_tokenizer_dir, f"ds{k}", seed=k)
        out = tmp_path / f"ckpt{k}"
        ckpt = train_stage(ckpt, ds, cfg, out, tracker=Rec(), step_offset=offset, stage=k,
                           stages=3, progress=False,
                           optimizer_from=optimizer_dir(tmp_path / f"ckpt{k - 1}") if k else None)
        done = json.loads((out / "stage_done.json").read_text())
        assert done["schedule_steps"] == [4 * k, 4 * k + 4, 12]
        offset += done["steps"]
        assert (optimizer_dir(out) / "optim.pt").exists()
    vals = [v for _, v in sorted(lrs)]
    assert [s for s, _ in sorted(lrs)] == list(range(1, 13))
    peak = int(np.argmax(vals))
    assert peak == 2                                      # one warm-up: 3 of 12 steps
    assert all(b <= a + 1e-12 for a, b in zip(vals[peak:], vals[peak + 1:]))   # never rises
    assert vals[-1] < 0.05 * vals[peak]                   # one decay over the whole budget

    # per_stage: the old behaviour, each stage warms up again
    lrs.clear()
    cfg2 = cfg.model_copy(update={"schedule": "per_stage"})
    ckpt = tiny_model_dir
    for k in range(2):
        ds = _tiny_dataset(tmp_path, tiny_tokenizer_dir, f"ds{k}", seed=k)
        ckpt = train_stage(ckpt, ds, cfg2, tmp_path / f"p{k}", tracker=Rec(),
                           step_offset=4 * k, stage=k, stages=2, progress=False)
    vals = [v for _, v in sorted(lrs)]
    assert vals[4] > vals[3]


def test_continuing_the_optimizer_changes_the_next_stage(tmp_path, tiny_model_dir,
                                                         tiny_tokenizer_dir):
    """Stage 1 trained with the optimizer state of stage 0 differs from stage 1 trained with
    a fresh optimizer: the state is really used."""
    from safetensors.torch import load_file

    from harness.config import TrainSpec
    from harness.training.stage import optimizer_dir, train_stage

    cfg = TrainSpec(lr=1e-3, warmup_ratio=0.0, batch_tokens=2 * 64, micro_batch=2,
                    loss_block=64)
    ds0 = _tiny_dataset(tmp_path, tiny_tokenizer_dir, "d0", seed=0)
    ds1 = _tiny_dataset(tmp_path, tiny_tokenizer_dir, "d1", seed=1)
    c0 = train_stage(tiny_model_dir, ds0, cfg, tmp_path / "c0", stage=0, stages=2,
                     progress=False)
    a = train_stage(c0, ds1, cfg, tmp_path / "a", stage=1, stages=2, progress=False,
                    optimizer_from=optimizer_dir(c0))
    b = train_stage(c0, ds1, cfg.model_copy(update={"schedule": "per_stage"}), tmp_path / "b",
                    stage=1, stages=2, progress=False)
    wa = load_file(str(a / "model.safetensors"))
    wb = load_file(str(b / "model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)


def test_compare_refuses_methods_with_unequal_loss_tokens():
    from harness.experiments.compare import BudgetError, check_budgets

    rows = {"a": {"stages": [{"loss_tokens": 1000.0}, {"loss_tokens": 1000.0}]},
            "b": {"stages": [{"loss_tokens": 996.0}, {"loss_tokens": 1000.0}]},
            "base": {"stages": [{}]}}
    check_budgets(rows)                           # 0.4 %: reported
    rows["b"]["stages"][1]["loss_tokens"] = 980.0
    with pytest.raises(BudgetError, match=r"stage 1: .*differ by 2\.0 %.*a 1,000, b 980"):
        check_budgets(rows)


def test_large_groups_are_refit_by_their_own_rule_to_fill_the_rows():
    """EntropyLong-sized groups (1-2K tokens of contexts + root in 2K rows) cannot fill rows
    whole; the packer rebuilds a group with fewer contexts for the room left instead of
    setting groups aside forever, and the rebuilt group still ends with its whole root."""
    import random

    from methods._common import contexts_then_root

    rng = np.random.default_rng(0)
    T, rows = 2048, 8
    budget = int(0.98 * rows * (T - 1))
    p = Packer(T, rows, budget, 0)
    roots = {}
    for i in range(200):
        root = rng.integers(5, 500, size=int(rng.integers(80, 200)))
        ctxs = [(rng.integers(5, 500, size=128), {"chunk_id": j, "doc_id": f"d{j}"})
                for j in range(int(rng.integers(8, 16)))]
        g = contexts_then_root(ctxs, root, T, random.Random(i), f"r{i}", [5, 20])
        roots[f"r{i}"] = root.tolist()
        if p.add(g):
            break
    assert p.done and p.summary()["groups_refitted"] > 0
    ids, gidx, placed = p.arrays()
    assert _loss_count(ids, gidx) == budget
    for g, row, s, e in placed:
        prov = g.provenance
        if "refit_to" in prov:
            assert len(g.tokens) <= prov["refit_to"]
            if "truncated_to" not in prov:
                assert g.tokens[prov["root_start"]:prov["root_end"]] == roots[prov["root_id"]]
