"""Run train_stage in a subprocess (for kill/resume and multi-process tests).

usage: train_stage_cli.py CHECKPOINT DATASET OUT SLEEP_PER_STEP
"""
import sys
import time

import torch

from harness.config import TrainSpec
from harness.training import loop
from harness.training.stage import train_stage

ckpt, ds, out, delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
torch.set_num_threads(1)
if delay:
    orig = loop.cosine_lr

    def slow(*a, **k):  # slows each step so a test can kill mid-stage
        time.sleep(delay)
        return orig(*a, **k)

    loop.cosine_lr = slow
cfg = TrainSpec(lr=3e-3, warmup_ratio=0.1, min_lr_ratio=0.1, batch_tokens=512, micro_batch=2,
                loss_block=64, save_every=2, seed=0)
train_stage(ckpt, ds, cfg, out, progress=False)
