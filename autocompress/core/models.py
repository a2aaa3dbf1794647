"""Pydantic building blocks shared by the config sections and device specs."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, model_serializer

__all__ = ["OmitAtDefault"]


class OmitAtDefault(BaseModel):
    """A model whose fields named in ``omit_at_default`` are left out of every dump while they
    hold their default: fields added after files (run configs, their fingerprints, device
    specs) were first written, so those files read and hash as they did before. (Pydantic's own
    ``Field(exclude_if=...)`` needs pydantic >= 2.12, which some runtimes' converters cannot
    install beside.)"""

    omit_at_default: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            fields = type(self).model_fields
            for key in self.omit_at_default:
                default = fields[key].get_default(call_default_factory=True)
                if getattr(self, key) == default:
                    data.pop(key, None)
        return data
