"""Mid-stage training state: written to a temporary folder and renamed when complete.

One process (or DDP, whose replicas are identical) writes the model and optimizer from the main
process. Under FSDP every rank holds a shard, so every rank takes part: Accelerate's
``save_state`` / ``load_state`` write and read the sharded model and optimizer (the state-dict
type of ``runs/accelerate/fsdp.yaml``), and the main process adds the step and RNG states.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def save_state(state_dir: Path, accelerator, model, opt, step: int,
               with_model: bool = True) -> None:
    """Called on every process (under FSDP each writes its shard). ``with_model=False``: the
    optimizer alone (what a continuous schedule carries to the next stage; the weights are
    the stage's checkpoint). Under FSDP Accelerate writes the sharded model with it."""
    from safetensors.torch import save_model

    tmp = state_dir.with_name(state_dir.name + ".tmp")
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    if _sharded(accelerator):
        accelerator.save_state(str(tmp / "sharded"))
    elif main:
        if with_model:
            save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
        torch.save({"optimizer": opt.state_dict()}, tmp / "optim.pt")
    accelerator.wait_for_everyone()
    if main:
        torch.save({"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
                    "py_rng": random.getstate()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step}))
        old = state_dir.with_name(state_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            os.replace(state_dir, old)
        os.replace(tmp, state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_state(state_dir: Path, accelerator, model, opt) -> int:
    """Restore after ``accelerator.prepare``; returns the step to resume from."""
    from safetensors.torch import load_model

    if _sharded(accelerator):
        accelerator.load_state(str(state_dir / "sharded"))
    else:
        load_model(model, str(state_dir / "model.safetensors"))
        opt.load_state_dict(torch.load(state_dir / "optim.pt", weights_only=False)["optimizer"])
    rng = torch.load(state_dir / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch_rng"])
    np.random.set_state(rng["numpy_rng"])
    random.setstate(rng["py_rng"])
    return json.loads((state_dir / "state.json").read_text())["step"]


def load_optimizer(state_dir: Path, accelerator, opt) -> None:
    """The optimizer state of ``state_dir`` (written by ``save_state``) into ``opt``, after
    ``accelerator.prepare``; the model's weights are left as loaded."""
    if not (state_dir / "state.json").exists():
        raise FileNotFoundError(f"{state_dir}: no optimizer state to continue from (the "
                                f"previous stage did not finish)")
    if _sharded(accelerator):
        accelerator.load_state(str(state_dir / "sharded"))
    else:
        opt.load_state_dict(torch.load(state_dir / "optim.pt", weights_only=False)["optimizer"])


def full_state_dict(accelerator, wrapped) -> dict:
    """The whole model's state dict, keys as in the HF model; call it on every process.

    Under FSDP this gathers the shards (every rank must call it); otherwise it is the unwrapped
    module's own state dict. ``wrapped`` is the prepared training module (``PackedLoss``), whose
    HF model sits under ``model.``.
    """
    sd = accelerator.get_state_dict(wrapped)
    return {k.removeprefix("model."): v for k, v in sd.items()}
