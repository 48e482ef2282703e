"""Creating, loading and saving HF checkpoints (atomic writes), and context extension."""
from __future__ import annotations

from pathlib import Path


def tiny_qwen2_config(vocab_size: int, hidden: int, layers: int, heads: int, kv_heads: int,
                      intermediate: int, max_len: int, rope_theta: float, eos_id: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                       intermediate_size=intermediate, max_position_embeddings=max_len,
                       rope_theta=rope_theta, tie_word_embeddings=True, eos_token_id=eos_id,
                       bos_token_id=eos_id, pad_token_id=eos_id, torch_dtype="float32",
                       use_sliding_window=False)


def save_checkpoint(model, tokenizer, out_dir: Path, state_dict: dict | None = None) -> Path:
    """Save an HF folder (config, safetensors, tokenizer) under a temporary name, then rename.

    ``state_dict``: the weights to write when ``model``'s own parameters are shards (FSDP; see
    ``harness.training.state.full_state_dict``).
    """
    from harness.fileio import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
    return Path(out_dir)


def load_model(path: Path | str, dtype=None, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or torch.float32,
                                                 attn_implementation="sdpa",
                                                 use_safetensors=True)
    return model.to(device)


def load_eval_model(path, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                 attn_implementation="sdpa",
                                                 use_safetensors=True).to(device)
    return model.eval()
