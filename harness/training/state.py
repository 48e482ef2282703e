"""Mid-stage training state: written to a temporary folder and renamed when complete."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def save_state(state_dir: Path, model, opt, step: int) -> None:
    from safetensors.torch import save_model

    tmp = state_dir.with_name(state_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
    torch.save({"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(), "py_rng": random.getstate()},
               tmp / "optim.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    old = state_dir.with_name(state_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if state_dir.exists():
        os.replace(state_dir, old)
    os.replace(tmp, state_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_state(state_dir: Path, model, opt) -> int:
    from safetensors.torch import load_model

    load_model(model, str(state_dir / "model.safetensors"))
    blob = torch.load(state_dir / "optim.pt", weights_only=False)
    opt.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["torch_rng"])
    np.random.set_state(blob["numpy_rng"])
    random.setstate(blob["py_rng"])
    return json.loads((state_dir / "state.json").read_text())["step"]
