"""Causal-LM loss on packed sequences, computed in blocks so full logits never exist at once.

A packed row holds several groups (one attention span each); position ids restart at 0 where a
group begins. The target of position t is token t+1, except where t+1 starts a new group: a
group's first token is never predicted from the previous group (ProLong-style packing).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def packed_labels(input_ids: torch.Tensor, position_ids: torch.Tensor,
                  pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token labels for a packed batch, -100 where no loss is taken."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    starts_next = torch.zeros_like(input_ids, dtype=torch.bool)
    starts_next[:, :-1] = position_ids[:, 1:] == 0
    labels[starts_next] = -100
    if pad_mask is not None:  # pad_mask True where the token is padding
        nxt = torch.zeros_like(pad_mask)
        nxt[:, :-1] = pad_mask[:, 1:]
        labels[nxt | pad_mask] = -100
    return labels


def _block_nll_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits.view(-1, logits.size(-1)), labels.reshape(-1),
                           ignore_index=-100, reduction="sum")


def blockwise_nll(hidden: torch.Tensor, lm_head: torch.nn.Linear, labels: torch.Tensor,
                  block_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of token NLLs and the number of counted tokens, ``[B, T, d]`` hidden states.

    Each block's logits are recomputed in the backward pass (activation checkpointing), so peak
    memory holds one ``[B, block, vocab]`` slice instead of ``[B, T, vocab]``.
    """
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, hidden.size(1), block_size):
        lab = labels[:, s:s + block_size]
        if not (lab != -100).any():
            continue
        h = hidden[:, s:s + block_size]
        if torch.is_grad_enabled() and h.requires_grad:
            total = total + checkpoint(_block_nll_sum, h, lm_head.weight, lm_head.bias, lab,
                                       use_reentrant=False)
        else:
            total = total + _block_nll_sum(h, lm_head.weight, lm_head.bias, lab)
    count = (labels != -100).sum()
    if not count and torch.is_grad_enabled() and hidden.requires_grad:
        # no loss token in this micro-batch (all padding: the loss-budget packer can leave
        # whole rows of it): a zero that still reaches the graph, so backward (and DDP's
        # gradient sync) runs and adds nothing
        total = (hidden.sum() + lm_head.weight.sum()) * 0.0
    return total, count


def packed_lm_loss(model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                   block_size: int = 1024, pad_mask: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of NLL, token count) of an HF causal LM on a packed batch with document masking.

    ``attention_mask=None`` with restarting ``position_ids`` makes transformers build the
    block-diagonal causal mask (SDPA) or use varlen flash attention; ``use_cache=False`` is
    required for that path (a cache disables packed-sequence detection).
    """
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    out = base(input_ids=input_ids, position_ids=position_ids, attention_mask=None,
               use_cache=False)
    labels = packed_labels(input_ids, position_ids, pad_mask)
    return blockwise_nll(out.last_hidden_state, model.get_output_embeddings(), labels, block_size)
