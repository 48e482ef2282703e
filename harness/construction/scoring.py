"""Per-token entropy and NLL of any HF causal LM, computed block-wise through the LM head.

``[seq, vocab]`` logits are never materialised for a whole sequence: hidden states are projected
through the LM head ``block`` positions at a time and each block is reduced to entropy and NLL at
once. In anchor-only mode the head runs only at the requested positions (what verification
needs). Values are aligned to tokens: ``entropy[b, t]`` is ``H(x_t | x_<t)``, the entropy of the
next-token distribution computed from the hidden state at ``t-1``; position 0 has no prediction
and holds NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)
    nll = -logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return ent, nll


def _hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            position_ids: torch.Tensor | None, past_key_values=None) -> torch.Tensor:
    base = model.get_decoder()
    out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
               past_key_values=past_key_values, use_cache=past_key_values is not None)
    return out.last_hidden_state


BLOCK_BUDGET_BYTES = 256 << 20


def auto_block(batch: int, vocab: int, budget: int = BLOCK_BUDGET_BYTES) -> int:
    """Positions per block so that a block's fp32 logits and two same-sized temporaries
    (log-softmax, probabilities) stay within ``budget`` bytes."""
    return max(16, budget // (12 * max(1, batch) * vocab))


@torch.no_grad()
def score_tokens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 position_ids: torch.Tensor | None = None, block: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and NLL (nats) at every position of ``input_ids [B, T]`` (NaN at t = 0).

    ``block`` positions go through the LM head at a time (default: sized by ``auto_block`` to
    keep each block's logits within ~256 MiB).
    """
    hidden = _hidden(model, input_ids, attention_mask, position_ids)
    head = model.get_output_embeddings()
    B, T = input_ids.shape
    block = block or auto_block(B, head.weight.shape[0])
    ent = torch.full((B, T), float("nan"), dtype=torch.float32, device=input_ids.device)
    nll = torch.full_like(ent, float("nan"))
    for s in range(0, T - 1, block):
        e = min(T - 1, s + block)
        logits = F.linear(hidden[:, s:e], head.weight, head.bias)
        be, bn = _reduce(logits, input_ids[:, s + 1:e + 1])
        ent[:, s + 1:e + 1], nll[:, s + 1:e + 1] = be, bn
    return ent, nll


@torch.no_grad()
def score_positions(model, input_ids: torch.Tensor, positions: list[torch.Tensor],
                    attention_mask: torch.Tensor | None = None,
                    position_ids: torch.Tensor | None = None, past_key_values=None
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Anchor-only mode: entropy and NLL only at ``positions[b]`` (token indices ≥ 1) of row b.

    With ``past_key_values`` (a cache of a prefix shared in length by every row), ``input_ids``
    continue that prefix; ``positions`` index ``input_ids`` and ``position_ids`` must continue
    the prefix's positions."""
    hidden = _hidden(model, input_ids, attention_mask, position_ids, past_key_values)
    head = model.get_output_embeddings()
    out = []
    for b, pos in enumerate(positions):
        pos = pos.to(input_ids.device).long()
        if pos.numel() == 0:
            empty = torch.empty(0, device=input_ids.device)
            out.append((empty, empty))
            continue
        if int(pos.min()) < 1:
            raise ValueError("anchor positions must be >= 1 (position 0 has no prediction)")
        step = auto_block(1, head.weight.shape[0])
        ents, nlls = [], []
        for s in range(0, pos.numel(), step):
            p = pos[s:s + step]
            e, n = _reduce(F.linear(hidden[b, p - 1], head.weight, head.bias), input_ids[b, p])
            ents.append(e)
            nlls.append(n)
        out.append((torch.cat(ents), torch.cat(nlls)))
    return out


def naive_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full ``[B, T, vocab]`` logits in one go (tests and benchmarks only)."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    B, T = input_ids.shape
    ent = torch.full((B, T), float("nan"), dtype=torch.float32)
    nll = torch.full_like(ent, float("nan"))
    e, n = _reduce(logits[:, :-1], input_ids[:, 1:])
    ent[:, 1:], nll[:, 1:] = e, n
    return ent, nll


def anchor_threshold(entropy: torch.Tensor, alpha: float) -> float:
    """EntropyLong's adaptive threshold τ_H = μ_H + α·σ_H over one document's entropies."""
    h = entropy[torch.isfinite(entropy)]
    return float(h.mean() + alpha * h.std(unbiased=False))


def select_anchors(entropy: torch.Tensor, alpha: float) -> torch.Tensor:
    """Token positions whose entropy exceeds τ_H (one document, 1-D entropy)."""
    tau = anchor_threshold(entropy, alpha)
    return torch.nonzero(torch.nan_to_num(entropy, nan=-1.0) > tau).flatten()
