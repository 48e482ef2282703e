"""Method parameters: a plugin's ``params`` mapping validated against its own pydantic model,
with errors that name the spec key (``methods.<i>.params.<key>``)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_params(cls: type[Params], raw: dict[str, Any], where: str) -> Params:
    """Validate a method's ``params`` mapping; errors name ``<where>.<key>``."""
    from harness.config import SpecError

    try:
        return cls.model_validate(raw or {})
    except ValidationError as exc:
        lines = [f"invalid method parameters at {where}"]
        for e in exc.errors():
            key = ".".join(str(p) for p in e["loc"])
            known = ", ".join(cls.model_fields) or "none"
            msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {where}.{key}: {msg} (known keys: {known})")
        raise SpecError("\n".join(lines)) from None
