"""The training loop: a short, readable loop over Accelerate (STYLE: nanoGPT / litgpt ``fit``).

Packed rows with document masking, block-wise loss, AdamW (β 0.9/0.95, weight decay 0.1),
cosine schedule with warmup and a floor, gradient clipping, gradient accumulation. Mid-run state
(model, optimizer, step, RNG, data position) is saved atomically every ``save_every`` optimizer
steps, so a killed run resumes on the same loss trajectory.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from harness import faults
from harness.training.loss import packed_labels, packed_lm_loss
from harness.training.schedule import cosine_lr


@dataclasses.dataclass
class LoopSettings:
    steps: int                      # optimizer steps
    micro_batch: int                # rows per forward pass (per process)
    grad_accum: int                 # micro-batches per optimizer step (per process)
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    loss_block: int = 1024
    log_every: int = 10
    save_every: int = 0             # 0: no mid-run state
    seed: int = 0
    # Where this loop sits in the learning-rate schedule: global steps before it and the
    # schedule's total (one warm-up and one decay over every stage of a continuous run);
    # None: the schedule spans this loop alone.
    schedule_start: int = 0
    schedule_total: int | None = None


class RowSource:
    """Rows by global index: ``rows(index)`` returns ``(ids, pos, pad)``, each ``[n, T]``.

    Indexable so that resuming is exact and processes take disjoint rows of the same global
    batch (process p of P takes rows ``p::P``), so the global batch does not depend on P.
    """

    def __init__(self, ids: np.ndarray, pos: np.ndarray, pad: np.ndarray | None = None):
        self.ids, self.pos = ids, pos
        self.pad = pad if pad is not None else np.zeros(ids.shape, dtype=bool)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``index`` (wrapping around: epochs) as (input_ids, position_ids, pad_mask)."""
        idx = np.asarray(list(index)) % len(self.ids)
        return (torch.from_numpy(np.asarray(self.ids[idx], dtype=np.int64)),
                torch.from_numpy(np.asarray(self.pos[idx], dtype=np.int64)),
                torch.from_numpy(np.asarray(self.pad[idx], dtype=bool)))


class PackedLoss(torch.nn.Module):
    """Wraps an HF causal LM so that its forward returns (NLL sum, token count)."""

    def __init__(self, model, block_size: int):
        super().__init__()
        self.model, self.block_size = model, block_size

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, pad: torch.Tensor):
        return packed_lm_loss(self.model, ids, pos, self.block_size, pad_mask=pad)


def _optimizer(model: torch.nn.Module, s: LoopSettings) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": s.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=s.betas, fused=False, foreach=False)


def train_loop(model, source: RowSource, s: LoopSettings, accelerator,
               log: Callable[[dict, int], None] | None = None, state_dir: Path | None = None,
               step_offset: int = 0, progress: bool = True,
               optimizer_from: Path | None = None, optimizer_to: Path | None = None) -> dict:
    """Train ``model`` for ``s.steps`` optimizer steps; returns a summary dict.

    ``log(metrics, step)`` receives ``train/loss``, ``train/lr``, ``train/grad_norm`` and
    ``train/tokens_per_s`` every ``log_every`` steps (step = ``step_offset`` + local step).
    ``optimizer_from``: the optimizer state a previous stage left (continuous schedule),
    loaded when the loop starts at step 0; ``optimizer_to``: where this loop leaves its own.
    """
    from harness.training.state import (full_state_dict, load_optimizer, load_state,
                                        save_state)

    torch.manual_seed(s.seed)
    hf_model = model
    opt = _optimizer(hf_model, s)
    # Forward through the (DDP-/FSDP-)wrapped module so that gradients are synchronised.
    wrapped, opt = accelerator.prepare(PackedLoss(hf_model, s.loss_block), opt)
    start = 0
    if state_dir is not None and (state_dir / "state.json").exists():
        start = load_state(state_dir, accelerator, hf_model, opt)
    elif optimizer_from is not None:
        load_optimizer(optimizer_from, accelerator, opt)
    total = s.schedule_total or s.steps
    world, rank = accelerator.num_processes, accelerator.process_index
    rows_per_step = s.micro_batch * s.grad_accum * world
    bar = None
    if progress and accelerator.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=s.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
    hf_model.train()
    history, t_last, tok_since = [], time.perf_counter(), 0
    for step in range(start, s.steps):
        lr = cosine_lr(s.schedule_start + step, total, s.lr, s.warmup_steps, s.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        base = step * rows_per_step
        loss_sum = torch.zeros((), dtype=torch.float64)
        count_sum = torch.zeros((), dtype=torch.float64)
        # The global batch once: its token count weights every micro-batch as in one process.
        batch = source.rows(range(base, base + rows_per_step))
        n_global = max(1, int((packed_labels(*batch) != -100).sum()))
        for m in range(s.grad_accum):
            idx = [m * s.micro_batch * world + rank + j * world for j in range(s.micro_batch)]
            ids, pos, pad = (t[idx].to(accelerator.device) for t in batch)
            nll, count = wrapped(ids, pos, pad)
            # Sum over processes of the gradients of (nll / n_global) · world == d(mean NLL).
            loss = nll / n_global * world
            accelerator.backward(loss)
            loss_sum += nll.detach().double()
            count_sum += count.double()
        grad_norm = accelerator.clip_grad_norm_(wrapped.parameters(), s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        stats = accelerator.reduce(torch.stack([loss_sum, count_sum]).to(accelerator.device),
                                   reduction="sum")
        mean_loss = (stats[0] / stats[1]).item()
        history.append(mean_loss)
        tok_since += int(n_global)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}")
        if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
            now = time.perf_counter()
            tps = tok_since / max(now - t_last, 1e-9)
            t_last, tok_since = now, 0
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
            if log is not None and accelerator.is_main_process:
                log({"train/loss": mean_loss, "train/lr": lr,
                     "train/grad_norm": float(grad_norm), "train/tokens_per_s": tps},
                    step_offset + step + 1)
        if state_dir is not None and s.save_every and (step + 1) % s.save_every == 0 \
                and step + 1 < s.steps:
            save_state(state_dir, accelerator, hf_model, opt, step + 1)
            faults.point("train")
            if s.schedule_start > 0:
                faults.point("train-late")
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"training loss became {mean_loss} at step {step + 1}")
    if bar is not None:
        bar.close()
    if optimizer_to is not None:
        save_state(optimizer_to, accelerator, hf_model, opt, s.steps, with_model=False)
    # Gathered on every process (FSDP shards); the caller saves it from the main process.
    return {"losses": history, "steps": s.steps, "start_step": start,
            "state_dict": full_state_dict(accelerator, wrapped)}
