import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import ContextExtensionSpec, TrainSpec
from harness.construction.stage_data import Group, pack_groups, position_ids_from_groups, write_stage_dataset
from harness.training.loss import packed_labels, packed_lm_loss
from harness.training.model_io import load_model

REPO = Path(__file__).resolve().parents[1]


def _dataset(tmp_path, tokenizer_dir, n_groups=48, T=128, seed=0):
    import itertools
    from transformers import AutoTokenizer
    from harness.sandbox import world as W

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    texts = list(itertools.islice(W.pretraining_texts(W.WorldSpec(seed=7), seed, 2), n_groups))
    groups = [Group(tok(t)["input_ids"][:T], {"root_id": f"r{i}"}) for i, t in enumerate(texts)]
    ids, gi, placed = pack_groups(groups, T, tok.eos_token_id)
    return write_stage_dataset(tmp_path / "stage", ids, gi, placed, {"method": "test"})


def test_position_ids_restart_per_group():
    gi = np.array([[0, 0, 0, 1, 1, -1, -1]])
    assert position_ids_from_groups(gi).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    ids = torch.arange(7)[None]
    pos = torch.from_numpy(position_ids_from_groups(gi))
    lab = packed_labels(ids, pos, torch.from_numpy(gi < 0))
    # no loss across the group boundary (2 -> 3) nor on/into padding
    assert lab.tolist() == [[1, 2, -100, 4, -100, -100, -100]]


def test_document_masking_isolates_groups(tiny_model_dir):
    model = load_model(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(1, 500, (1, 30), generator=g)
    b = torch.randint(1, 500, (1, 25), generator=g)
    a2 = torch.randint(1, 500, (1, 30), generator=g)
    pos = torch.cat([torch.arange(30), torch.arange(25)])[None]

    def per_token_nll(ids):
        base = model.get_decoder()(input_ids=ids, position_ids=pos, attention_mask=None,
                                   use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(base)
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")

    with torch.no_grad():
        n1 = per_token_nll(torch.cat([a, b], 1))
        n2 = per_token_nll(torch.cat([a2, b], 1))
    # group b's tokens (predictions 30..53) are unchanged when group a changes
    torch.testing.assert_close(n1[30:], n2[30:], atol=1e-5, rtol=0)
    assert not torch.allclose(n1[:29], n2[:29])
    # and equal to b scored on its own
    with torch.no_grad():
        own = model(input_ids=b, use_cache=False).logits
        ref = torch.nn.functional.cross_entropy(own[0, :-1], b[0, 1:], reduction="none")
    torch.testing.assert_close(n1[30:], ref, atol=1e-5, rtol=0)


def test_blockwise_loss_equals_full(tiny_model_dir):
    model = load_model(tiny_model_dir)
    ids = torch.randint(1, 500, (2, 64), generator=torch.Generator().manual_seed(1))
    pos = torch.cat([torch.arange(40), torch.arange(24)]).repeat(2, 1)
    s1, c1 = packed_lm_loss(model, ids, pos, block_size=7)
    s2, c2 = packed_lm_loss(model, ids, pos, block_size=4096)
    assert c1 == c2 == 2 * (39 + 23)
    torch.testing.assert_close(s1, s2, atol=1e-4, rtol=1e-6)
    s1.backward()
    g1 = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    s2.backward()
    torch.testing.assert_close(g1, model.model.embed_tokens.weight.grad, atol=1e-5, rtol=1e-5)


def _train_cfg(**kw):
    base = dict(lr=3e-3, warmup_ratio=0.1, min_lr_ratio=0.1, batch_tokens=512, micro_batch=2,
                loss_block=64, save_every=0, seed=0)
    base.update(kw)
    return TrainSpec(**base)


def test_train_stage_loss_goes_down_and_extends_context(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    from harness.training.stage import train_stage
    ds = _dataset(tmp_path, tiny_tokenizer_dir, n_groups=160, T=128)
    losses = []

    class Rec:
        def log_metrics(self, m, step):
            losses.append((step, m["train/loss"]))

    ext = ContextExtensionSpec(rope_theta=40000.0, rope_scaling="yarn", scaling_factor=2.0,
                               max_position_embeddings=512)
    out = train_stage(tiny_model_dir, ds, _train_cfg(), tmp_path / "ckpt", tracker=Rec(),
                      extension=ext, progress=False)
    assert (out / "stage_done.json").exists()
    assert losses[-1][1] < losses[0][1] - 0.3, losses
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 512
    assert cfg["rope_parameters"]["rope_theta"] == 40000.0
    assert cfg["rope_parameters"]["rope_type"] == "yarn"
    m = load_model(out)
    assert m.config.rope_parameters["factor"] == 2.0


def _params(path):
    from safetensors.torch import load_file
    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.slow
def test_killed_training_resumes_to_same_parameters(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    ds = _dataset(tmp_path, tiny_tokenizer_dir, n_groups=200, T=128)
    script = REPO / "tests" / "helpers" / "train_stage_cli.py"
    base = [sys.executable, str(script), str(tiny_model_dir), str(ds)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # uninterrupted reference
    subprocess.run(base + [str(tmp_path / "ref"), "0"], check=True, env=env, timeout=600)
    # killed after the first mid-stage state, then resumed
    proc = subprocess.Popen(base + [str(tmp_path / "run"), "0.15"], env=env)
    state = tmp_path / "run.state" / "state.json"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert state.exists(), "no mid-stage state was written"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run" / "stage_done.json").exists()
    killed_at = json.loads(state.read_text())["step"]
    subprocess.run(base + [str(tmp_path / "run"), "0"], check=True, env=env, timeout=600)
    done = json.loads((tmp_path / "run" / "stage_done.json").read_text())
    assert done["resumed_from_step"] >= killed_at > 0
    a, b = _params(tmp_path / "ref"), _params(tmp_path / "run")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_model_dir, tiny_tokenizer_dir):
    ds = _dataset(tmp_path, tiny_tokenizer_dir, n_groups=100, T=128)
    script = REPO / "tests" / "helpers" / "train_stage_cli.py"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tiny_model_dir), str(ds),
                    str(tmp_path / "one"), "0"], check=True, env=env, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29531", str(script), str(tiny_model_dir), str(ds),
                    str(tmp_path / "two"), "0"], check=True, env=env, timeout=600)
    a, b = _params(tmp_path / "one"), _params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_a_micro_batch_of_padding_only_trains_and_adds_no_gradient(tmp_path, tiny_model_dir,
                                                                   tiny_tokenizer_dir):
    """The loss-budget packer can leave whole rows of padding (equal loss tokens for every
    method); a micro-batch made only of them must not stop training (it did: "element 0 of
    tensors does not require grad"), and it contributes a zero gradient."""
    from harness.training.stage import train_stage

    model = load_model(tiny_model_dir)
    ids = torch.randint(1, 100, (2, 64))
    pos = torch.arange(64).repeat(2, 1)
    pad = torch.ones(2, 64, dtype=torch.bool)
    nll, count = packed_lm_loss(model, ids, pos, 32, pad)
    assert int(count) == 0 and nll.requires_grad
    nll.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    # a stage whose last micro-batch is all padding trains to the end
    path = _dataset(tmp_path, tiny_tokenizer_dir, n_groups=40, T=128)
    from harness.construction.stage_data import StageDataset
    ds = StageDataset(path)
    x, gi = np.array(ds.input_ids), np.array(ds.group_index)
    cfg = _train_cfg()
    per_step = cfg.batch_tokens // 128
    n = max(per_step, (len(x) // per_step) * per_step)
    x, gi = np.resize(x, (n, 128)), np.resize(gi, (n, 128))
    x[-cfg.micro_batch:], gi[-cfg.micro_batch:] = 0, -1          # the last micro-batch: padding
    padded = write_stage_dataset(tmp_path / "padded", x, gi, [], {"method": "test"})
    out = train_stage(tiny_model_dir, padded, cfg, tmp_path / "ckpt", progress=False)
    assert json.loads((out / "stage_done.json").read_text())["final_loss"] is not None


def test_block_expansion_computes_what_the_model_did_until_trained(tmp_path, tiny_model_dir):
    from harness.training.model_io import expand_blocks, save_checkpoint

    model = load_model(tiny_model_dir)
    n = len(model.model.layers)
    ids = torch.randint(1, model.config.vocab_size, (2, 24),
                        generator=torch.Generator().manual_seed(0))
    grown = expand_blocks(model, 2 * n)
    assert len(model.model.layers) == n   # the original is left as it was
    assert grown.config.num_hidden_layers == 2 * n == len(grown.model.layers)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert torch.allclose(grown(input_ids=ids).logits, before, atol=1e-5)
    save_checkpoint(grown, None, tmp_path / "grown")
    again = load_model(tmp_path / "grown")
    assert again.config.num_hidden_layers == 2 * n
    with torch.no_grad():
        assert torch.allclose(again(input_ids=ids).logits, before, atol=1e-5)
    # the zeroed projections get gradient, so the new blocks train and the output moves
    opt = torch.optim.SGD(grown.parameters(), lr=0.5)
    grown(input_ids=ids, labels=ids).loss.backward()
    new = grown.model.layers[1]
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0
    opt.step()
    assert new.self_attn.o_proj.weight.abs().sum() > 0
    with torch.no_grad():
        assert not torch.allclose(grown(input_ids=ids).logits, before, atol=1e-4)
    for bad in (n, 2 * n + 1):
        with pytest.raises(ValueError, match=f"layers must be in .* got {bad}"):
            expand_blocks(model, bad)


def test_the_inserted_blocks_are_named_and_alone_left_trainable(tiny_model_dir):
    from harness.training.model_io import (expand_blocks, expanded_block_indices,
                                           freeze_all_but_blocks)

    model = load_model(tiny_model_dir)
    assert expanded_block_indices(2, 4) == [1, 3] and expanded_block_indices(2, 3) == [2]
    assert expanded_block_indices(4, 6) == [2, 5]
    for layers in (3, 4):
        grown = expand_blocks(model, layers)
        new = expanded_block_indices(2, layers)
        zeroed = [i for i, b in enumerate(grown.model.layers)
                  if not b.self_attn.o_proj.weight.any() and not b.mlp.down_proj.weight.any()]
        assert zeroed == new
        left = freeze_all_but_blocks(grown, new)
        trainable = {n for n, p in grown.named_parameters() if p.requires_grad}
        assert trainable and all(any(n.startswith(f"model.layers.{i}.") for i in new)
                                 for n in trainable)
        assert left == sum(p.numel() for p in grown.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no block \\[7\\]"):
        freeze_all_but_blocks(model, [7])
    with pytest.raises(ValueError, match="layers must be in"):
        expanded_block_indices(2, 5)


def test_task_arithmetic_adds_each_fine_tunes_change(tmp_path, tiny_model_dir):
    from harness.training.model_io import add_task_vectors, expand_blocks, save_checkpoint

    base = load_model(tiny_model_dir)
    ref = base.state_dict()
    tuned = []
    for seed in (1, 2):   # two "fine-tunes": the base's weights moved by fixed random steps
        m = load_model(tiny_model_dir)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        tuned.append(m)
    states = [m.state_dict() for m in tuned]
    key = "model.layers.0.self_attn.q_proj.weight"
    for w in ([0.0, 0.0], [1.0, 0.0], [0.5, -0.25]):
        st = add_task_vectors(base, tuned, w).state_dict()
        want = ref[key] + w[0] * (states[0][key] - ref[key]) + w[1] * (states[1][key] - ref[key])
        assert torch.allclose(st[key], want, atol=1e-6), w
    assert torch.equal(base.state_dict()[key], ref[key])   # the inputs are left as they were
    with pytest.raises(ValueError, match="one weight per fine-tuned model"):
        add_task_vectors(base, tuned, [1.0])
    with pytest.raises(ValueError, match="differ in parameters .*layers.2"):
        add_task_vectors(base, [expand_blocks(tuned[0], 3)], [1.0])

    # the script: a merged folder that loads and computes the merge's logits; a clear error
    save_checkpoint(tuned[0], None, tmp_path / "a")
    script = Path(__file__).resolve().parents[1] / "scripts" / "sandbox_merge.py"
    run = subprocess.run([sys.executable, str(script), "--base", str(tiny_model_dir),
                          "--add", f"{tmp_path / 'a'}:0.5", "--out", str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ids = torch.randint(1, base.config.vocab_size, (1, 16),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = load_model(tmp_path / "m")(input_ids=ids).logits
        want = add_task_vectors(base, [tuned[0]], [0.5])(input_ids=ids).logits
        assert torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, base(input_ids=ids).logits, atol=1e-4)
    assert json.loads((tmp_path / "m" / "merge.json").read_text()) == {
        "base": str(tiny_model_dir), "add": [[str(tmp_path / "a"), 0.5]]}
    # the record is written before the folder appears: one that fails leaves no folder
    with pytest.raises(OSError, match="nothing was left behind"):
        save_checkpoint(tuned[0], None, tmp_path / "r", files={"no/such/dir.json": "{}"})
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.tmp").exists()
    bad = subprocess.run([sys.executable, str(script), "--add", f"{tmp_path / 'a'}:half",
                          "--out", str(tmp_path / "m2")], capture_output=True, text=True)
    assert bad.returncode == 2 and "weight 'half' is not a number" in bad.stderr
    assert not (tmp_path / "m2").exists()
