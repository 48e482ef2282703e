"""``train_stage``: one stage of context-extension training, checkpoint in, checkpoint out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from harness.config import ContextExtensionSpec, TrainSpec
from harness.construction.stage_data import StageDataset
from harness.layout import optimizer_dir
from harness.tracking import NULL_TRACKER, Tracker


def plan_steps(n_rows: int, target_length: int, train: TrainSpec, world: int
               ) -> tuple[int, int]:
    """(optimizer steps, gradient-accumulation micro-batches per process) for one stage."""
    rows_per_step = max(1, train.batch_tokens // target_length)
    per_proc = train.micro_batch * world
    if rows_per_step % per_proc:
        raise ValueError(
            f"train.batch_tokens ({train.batch_tokens}) / target length ({target_length}) = "
            f"{rows_per_step} rows per step is not a multiple of train.micro_batch "
            f"({train.micro_batch}) x processes ({world})")
    steps = max(1, n_rows // rows_per_step)
    return steps, rows_per_step // per_proc


def best_attn_implementation() -> str:
    """``flash_attention_2`` on a CUDA device where flash-attn imports (a version transformers
    accepts), else ``sdpa``. Never the hub-kernel fallback: nothing is fetched at run time."""
    import torch

    if not torch.cuda.is_available():
        return "sdpa"
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return "sdpa"
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if is_flash_attn_2_available() else "sdpa"


def load_for_training(checkpoint: Path, extension: ContextExtensionSpec | None,
                      target_length: int, dtype, gradient_checkpointing: bool,
                      attn_implementation: str = "sdpa"):
    """Load ``checkpoint`` for training at ``target_length``, extended by ``extension``.

    ``attn_implementation``: ``sdpa`` (CPU, and GPUs without flash-attn) or
    ``flash_attention_2``; both take packed rows (restarting position ids, no attention mask)
    as separate documents.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from harness.training.extend import extend_config

    config = AutoConfig.from_pretrained(str(checkpoint))
    if extension is not None:
        extend_config(config, extension.rope_theta, extension.rope_scaling,
                      extension.scaling_factor, extension.max_position_embeddings,
                      target_length)
    elif config.max_position_embeddings < target_length:
        raise ValueError(f"{checkpoint}: max_position_embeddings "
                         f"{config.max_position_embeddings} < target length {target_length}; "
                         f"set context_extension in the spec")
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), config=config, dtype=dtype,
                                                 attn_implementation=attn_implementation,
                                                 use_safetensors=True)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    return model



def train_stage(checkpoint: Path | str, dataset: StageDataset | Path | str, train: TrainSpec,
                out_dir: Path | str, tracker: Tracker = NULL_TRACKER,
                extension: ContextExtensionSpec | None = None, step_offset: int = 0,
                accelerator=None, progress: bool = True,
                attn_implementation: str = "sdpa", stage: int = 0, stages: int = 1,
                optimizer_from: Path | None = None) -> Path:
    """Train ``checkpoint`` on one stage dataset and save the result as an HF folder.

    ``stage`` of ``stages``: with ``train.schedule: continuous`` (default) the stages are
    rounds of one run: one warm-up and one cosine decay over ``stages`` x this stage's steps
    (every stage has the same rows), and the optimizer continues from ``optimizer_from`` (the
    state the previous stage left beside its checkpoint, ``optimizer_dir``). ``per_stage``:
    a fresh optimizer and schedule every stage.

    A finished ``out_dir`` (with ``stage_done.json``) is returned as is. Mid-stage state goes
    to ``<out_dir>.state`` every ``train.save_every`` steps and is resumed from after a kill.
    ``attn_implementation`` goes to ``load_for_training`` (``best_attn_implementation()`` picks
    flash-attn on a GPU that has it).
    """
    import torch
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    from harness.training.loop import LoopSettings, RowSource, train_loop
    from harness.training.model_io import save_checkpoint

    out_dir = Path(out_dir)
    if (out_dir / "stage_done.json").exists():
        return out_dir
    ds = dataset if isinstance(dataset, StageDataset) else StageDataset(dataset)
    T = ds.manifest["target_length"]
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available(),
                                     mixed_precision="bf16" if torch.cuda.is_available() else "no")
    dtype = torch.float32  # master weights in fp32; bf16 autocast on GPU via Accelerate
    steps, accum = plan_steps(len(ds), T, train, acc.num_processes)
    model = load_for_training(Path(checkpoint), extension, T, dtype, train.gradient_checkpointing,
                              attn_implementation)
    continuous = train.schedule == "continuous"
    total = steps * (stages if continuous else 1)
    settings = LoopSettings(
        steps=steps, micro_batch=train.micro_batch, grad_accum=accum, lr=train.lr,
        warmup_steps=int(train.warmup_ratio * total), min_lr_ratio=train.min_lr_ratio,
        schedule_start=steps * stage if continuous else 0, schedule_total=total,
        weight_decay=train.weight_decay, betas=(train.beta1, train.beta2),
        grad_clip=train.grad_clip, loss_block=train.loss_block, save_every=train.save_every,
        seed=train.seed, log_every=max(1, min(10, steps // 10)))
    state_dir = out_dir.with_name(out_dir.name + ".state")
    summary = train_loop(model, RowSource(*ds.rows()), settings, acc, log=tracker.log_metrics,
                         state_dir=state_dir, step_offset=step_offset, progress=progress,
                         optimizer_from=optimizer_from if continuous and stage > 0 else None,
                         optimizer_to=optimizer_dir(out_dir) if continuous else None)
    if acc.is_main_process:
        tok = AutoTokenizer.from_pretrained(str(checkpoint))
        save_checkpoint(model, tok, out_dir, state_dict=summary["state_dict"])
        (out_dir / "stage_done.json").write_text(json.dumps(
            {"steps": steps, "final_loss": summary["losses"][-1] if summary["losses"] else None,
             "resumed_from_step": summary["start_step"],
             "schedule": train.schedule, "schedule_steps": [settings.schedule_start,
                                                            settings.schedule_start + steps,
                                                            total],
             "dataset_sha256": ds.manifest.get("dataset_sha256")}, indent=2))
        shutil.rmtree(state_dir, ignore_errors=True)
    acc.wait_for_everyone()
    return out_dir
