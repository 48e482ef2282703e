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


def save_checkpoint(model, tokenizer, out_dir: Path, state_dict: dict | None = None,
                    files: dict[str, str] | None = None) -> Path:
    """Save an HF folder (config, safetensors, tokenizer) under a temporary name, then rename.

    ``state_dict``: the weights to write when ``model``'s own parameters are shards (FSDP; see
    ``harness.training.state.full_state_dict``). ``files``: name -> text of files to write
    beside them before the rename (a record of how the weights were made), so that a folder
    that exists is complete.
    """
    from harness.fileio import atomic_dir

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
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


def _group_ends(n: int, layers: int) -> set[int]:
    """The original blocks after which block expansion inserts a copy: LLaMA Pro splits the
    ``n`` blocks into ``layers - n`` groups and appends one identity copy to each."""
    new = layers - n
    return {round((g + 1) * n / new) - 1 for g in range(new)}


def expanded_block_indices(n: int, layers: int) -> list[int]:
    """The indices, in the deepened model, of the blocks ``expand_blocks`` inserted into a
    model of ``n`` blocks grown to ``layers`` (the blocks LLaMA Pro trains while the original
    ones stay frozen)."""
    if not n < layers <= 2 * n:
        raise ValueError(f"expanded_block_indices: layers must be in ({n}, {2 * n}], got {layers}")
    ends, out, i = _group_ends(n, layers), [], 0
    for b in range(n):
        i += 1
        if b in ends:
            out.append(i)
            i += 1
    return out


def freeze_all_but_blocks(model, blocks: list[int]) -> int:
    """Freeze every parameter of ``model`` (embeddings, norms, head included) except those of
    the decoder blocks at ``blocks``, as LLaMA Pro trains only the blocks it inserted; returns
    the number of parameters left trainable."""
    n = len(model.model.layers)
    bad = [b for b in blocks if not 0 <= b < n]
    if bad:
        raise ValueError(f"freeze_all_but_blocks: no block {bad} in a model of {n} blocks")
    for p in model.parameters():
        p.requires_grad_(False)
    left = 0
    for b in blocks:
        for p in model.model.layers[b].parameters():
            p.requires_grad_(True)
            left += p.numel()
    return left


def expand_blocks(model, layers: int):
    """Deepen a decoder-only HF model to ``layers`` blocks by block expansion (Wu et al. 2024,
    "LLaMA Pro: Progressive LLaMA with Block Expansion", arXiv:2401.02415): after each of
    ``layers - n`` evenly spaced groups of the ``n`` blocks a copy of the group's last block is
    inserted with its attention output and MLP down projections zeroed, so that every new
    block adds nothing to the residual stream and the deepened model computes exactly what the
    original did, until training moves the zeroed projections. Returns a new model (the
    original is left as it was); its config says ``layers`` blocks."""
    import copy

    import torch

    blocks = model.model.layers
    n = len(blocks)
    if not n < layers <= 2 * n:
        raise ValueError(f"expand_blocks: layers must be in ({n}, {2 * n}] for a model of {n} "
                         f"blocks (one new block at most after each), got {layers}")
    kinds = getattr(model.config, "layer_types", None)
    if kinds is not None and len(set(kinds)) > 1:
        raise ValueError("expand_blocks: models with mixed layer types are not supported")
    ends = _group_ends(n, layers)
    out = copy.deepcopy(model)
    grown = []
    for i, block in enumerate(out.model.layers):
        grown.append(block)
        if i in ends:
            extra = copy.deepcopy(block)
            with torch.no_grad():
                extra.self_attn.o_proj.weight.zero_()
                extra.mlp.down_proj.weight.zero_()
                for proj in (extra.self_attn.o_proj, extra.mlp.down_proj):
                    if proj.bias is not None:
                        proj.bias.zero_()
            grown.append(extra)
    for i, block in enumerate(grown):
        block.self_attn.layer_idx = i
    out.model.layers = torch.nn.ModuleList(grown)
    cfg = out.config
    cfg.num_hidden_layers = layers
    if kinds is not None:
        cfg.layer_types = [kinds[0]] * layers
    return out


def add_task_vectors(base, fine_tuned: list, weights: list[float]):
    """Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic",
    arXiv:2212.04089): ``base + sum_i weights[i] * (fine_tuned[i] - base)``, parameter by
    parameter, for models fine-tuned from ``base`` (same architecture, same parameter names and
    shapes). Weights of 0 give ``base``; one model with weight 1 gives that model. Returns a new
    model (the inputs are left as they were); every parameter that differs in name or shape is
    named in the error before anything is computed."""
    import copy

    import torch

    if len(fine_tuned) != len(weights) or not fine_tuned:
        raise ValueError(f"add_task_vectors: one weight per fine-tuned model, got "
                         f"{len(fine_tuned)} models and {len(weights)} weights")
    ref = base.state_dict()
    states = [m.state_dict() for m in fine_tuned]
    for i, st in enumerate(states):
        missing = sorted(set(ref) ^ set(st))
        if missing:
            raise ValueError(f"add_task_vectors: model {i} and the base differ in parameters "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
        shapes = [k for k in ref if st[k].shape != ref[k].shape]
        if shapes:
            raise ValueError(f"add_task_vectors: model {i} and the base differ in the shape of "
                             f"{shapes[:5]}{' ...' if len(shapes) > 5 else ''}")
    out = copy.deepcopy(base)
    merged = {}
    with torch.no_grad():
        for k, v in ref.items():
            if not torch.is_floating_point(v):
                merged[k] = v.clone()
                continue
            acc = v.double().clone()
            for st, w in zip(states, weights):
                acc += float(w) * (st[k].double() - v.double())
            merged[k] = acc.to(v.dtype)
    out.load_state_dict(merged)
    return out
