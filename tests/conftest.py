import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import itertools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def shared_cache_dir(tmp_path_factory):
    """One token-store and chunk-index cache for the session (``$POLICYLONG_CACHE_DIR``, which
    subprocesses inherit): each corpus is embedded once, not once per comparison. A test of
    building those caches removes the variable or names its own folder."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POLICYLONG_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """A small Qwen2-pipeline BPE tokenizer trained on sandbox text (about a second)."""
    from harness.sandbox import world as W
    from harness.sandbox.tokenizer import train_tokenizer

    spec = W.WorldSpec(seed=7)
    texts = list(itertools.islice(W.pretraining_texts(spec, 0, 4), 600))
    texts.append(" ".join(W.World(spec).lexicon()))
    out = tmp_path_factory.mktemp("tok")
    return train_tokenizer(texts, 1024, out, model_max_length=1 << 20)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A randomly initialised 2-layer Qwen2 with the tiny tokenizer, as an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.training.model_io import save_checkpoint, tiny_qwen2_config

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    cfg = tiny_qwen2_config(len(tok), 64, 2, 4, 2, 128, 256, 10000.0, tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return save_checkpoint(model, tok, tmp_path_factory.mktemp("model") / "tiny")


# A small sandbox world (about 76K tokens): embedding the default world's chunks costs minutes
SMALL_SANDBOX = {"n_entities": 300, "n_filler_docs": 100}


@pytest.fixture(scope="session")
def sandbox_root(tmp_path_factory):
    """One folder of built sandboxes for the whole session (each under its spec's key, as
    ``POLICYLONG_SANDBOX_DIR`` holds them). Tests read these sandboxes; a test that changes a
    sandbox's files copies them first."""
    return tmp_path_factory.mktemp("sandboxes")


@pytest.fixture(scope="session")
def small_sandbox(sandbox_root):
    """The small world (``SMALL_SANDBOX``) with the shipped model, built once a session."""
    from harness.config import SandboxSpec
    from harness.sandbox.build import build_sandbox
    return build_sandbox(SandboxSpec(**SMALL_SANDBOX), out_root=sandbox_root)


@pytest.fixture(scope="session")
def default_sandbox(sandbox_root):
    """The default world (``SandboxSpec()``) with the shipped model, built once a session."""
    from harness.config import SandboxSpec
    from harness.sandbox.build import build_sandbox
    return build_sandbox(SandboxSpec(), out_root=sandbox_root)
