"""Build stage 0 of one method from a spec file, in one process or under torchrun (gloo), and
print the dataset sha256. usage: construct_cli.py SPEC METHOD"""
import json
import os
import sys

import torch

if __name__ == "__main__":
    torch.set_num_threads(1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo")
    from harness.config import load_spec
    from harness.experiments.wiring import construct

    spec = load_spec(sys.argv[1])
    out = construct(spec, sys.argv[2], 0, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        m = json.loads((out / "manifest.json").read_text())
        print("SHA " + m["dataset_sha256"], flush=True)
