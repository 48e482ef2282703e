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
