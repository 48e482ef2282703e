"""Context extension recorded in the checkpoint's config, so vLLM and transformers load it as
trained.

* ``rope_theta``: the RoPE base override (the papers' only architecture change: Llama-3-8B
  500,000 → 200,000,000 for 128K in NExtLong and EntropyLong);
* ``rope_scaling``: ``linear`` (position interpolation) or ``yarn`` with ``scaling_factor``,
  relative to the model's original ``max_position_embeddings``;
* ``max_position_embeddings`` raised to the target length.

transformers 5 keeps these under ``config.rope_parameters`` (``rope_type``, ``rope_theta``,
``factor``, ``original_max_position_embeddings``), which vLLM reads too.
"""
from __future__ import annotations


def extend_config(config, rope_theta: float | None, rope_scaling: str, factor: float,
                  max_position_embeddings: int | None, target_length: int):
    """Return ``config`` changed in place for the extended context."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    base_theta = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    original = config.max_position_embeddings
    new_max = max(max_position_embeddings or 0, target_length, original)
    params["rope_theta"] = float(rope_theta or base_theta)
    if rope_scaling == "none":
        params["rope_type"] = params.get("rope_type", "default")
    else:
        if factor <= 1.0:
            raise ValueError(f"context_extension.scaling_factor must be > 1 for "
                             f"rope_scaling={rope_scaling!r}, got {factor}")
        params.update({"rope_type": rope_scaling, "factor": float(factor)})
        if rope_scaling == "yarn":
            params["original_max_position_embeddings"] = int(
                params.get("original_max_position_embeddings", original))
    config.rope_parameters = params
    config.max_position_embeddings = int(new_max)
    return config


def extension_summary(config) -> dict:
    p = dict(getattr(config, "rope_parameters", None) or {})
    return {"max_position_embeddings": config.max_position_embeddings, **p}
