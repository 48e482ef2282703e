"""Pre-flight memory estimate: refuse a training length that cannot fit, before any work.

The estimate is ours (no paper gives one) and deliberately counts only what cannot be avoided,
so that it refuses what surely does not fit and lets borderline settings try:

- weights, gradients and AdamW's two moments in fp32: 16 bytes per parameter;
- activations kept for the backward pass: per token and layer, the residual stream, the
  attention inputs/outputs and the MLP's hidden states in fp32 (``4·(8·h + 3·i)`` bytes), once
  per layer, or for one layer plus the layer inputs under gradient checkpointing;
- attention: without a fused kernel (CPU SDPA with the block-diagonal document mask, or no
  flash attention on GPU) the scores ``[heads, T, T]`` in fp32 are materialised per layer and the
  mask ``[T, T]`` once; with flash attention both are O(T) and counted as zero;
- the LM head's logits for one loss block (``loss_block × vocab``, fp32, with its gradient).
"""
from __future__ import annotations

import importlib.util

GiB = 1 << 30


def param_count(cfg) -> int:
    h, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    i = cfg.intermediate_size
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or h // heads
    attn = h * heads * hd * 2 + 2 * h * kv * hd + (heads + 2 * kv) * hd   # q, o, k, v, biases
    layer = attn + 3 * h * i + 2 * h
    emb = V * h * (1 if getattr(cfg, "tie_word_embeddings", False) else 2)
    return L * layer + emb + h


def training_estimate(cfg, T: int, micro_batch: int, loss_block: int, checkpointing: bool,
                      fused_attention: bool) -> dict[str, int]:
    """Bytes per training process, by part."""
    h, L, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    i, heads = cfg.intermediate_size, cfg.num_attention_heads
    kept_layers = 1 if checkpointing else L
    parts = {
        "weights, gradients and optimizer state": 16 * param_count(cfg),
        "activations": micro_batch * T * (4 * (8 * h + 3 * i) * kept_layers
                                          + (4 * h * L if checkpointing else 0)),
        "attention scores and mask": 0 if fused_attention else
            micro_batch * (4 * heads * T * T * kept_layers + 4 * T * T),
        "logits of one loss block": micro_batch * min(loss_block, T) * V * 4 * 2,
    }
    return parts


def available_bytes(device: str) -> tuple[int, str]:
    if device == "cuda":
        import torch
        free, _total = torch.cuda.mem_get_info()
        return int(free), "free GPU memory"
    import psutil
    return int(psutil.virtual_memory().available), "available host memory"


def check_training_fits(cfg, T: int, micro_batch: int, loss_block: int, checkpointing: bool,
                        device: str | None = None, available: int | None = None) -> dict:
    """Raise ``SpecError`` naming the settings when the estimate exceeds what is available."""
    from harness.config import SpecError

    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    fused = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
    parts = training_estimate(cfg, T, micro_batch, loss_block, checkpointing, fused)
    need = sum(parts.values())
    what = "the given limit"
    if available is None:
        available, what = available_bytes(device)
    if need > available:
        detail = "; ".join(f"{k} {v / GiB:.1f}" for k, v in parts.items() if v)
        hints = ["lower train.micro_batch"]
        if not checkpointing:
            hints.append("set train.gradient_checkpointing: true")
        if not fused:
            hints.append("train on a GPU with flash attention (the attention term is then "
                         "linear in the length)")
        hints.append("or lower stages.target_length")
        raise SpecError(
            f"stages.target_length {T} with train.micro_batch {micro_batch} needs an estimated "
            f"{need / GiB:.1f} GiB per process ({detail} GiB) but {available / GiB:.1f} GiB of "
            f"{what} is there on {device}: " + ", ".join(hints))
    return {"estimate_bytes": need, "available_bytes": available, "parts": parts}
