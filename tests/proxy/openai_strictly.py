"""Our OpenAI-compatible answers validated strictly against the `openai` package's pydantic
types, with no field they do not declare, as Paddler's tests check them against OpenAI's
schema with no extra keys allowed.

One field is filled in first: the package's newest types require `cache_write_tokens` in a
Responses usage's `input_tokens_details`, which Paddler's schema (spec 3.2: `{cached_tokens}`)
does not have and its tests refuse. We follow Paddler.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from pydantic import BaseModel, TypeAdapter


def strictly(model_type: Any, data: Any) -> Any:
    """`data` validated strictly as `model_type`, with no undeclared field anywhere in it."""
    value = _adapter(model_type).validate_python(_with_cache_write_tokens(copy.deepcopy(data)), strict=True)
    _assert_no_extra(value, "$")
    return value


@functools.cache
def _adapter(model_type: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model_type)  # building one for the event union takes about 0.1 s


def _with_cache_write_tokens(data: Any) -> Any:
    if isinstance(data, dict):
        details = data.get("input_tokens_details")
        if isinstance(details, dict):
            assert "cache_write_tokens" not in details, "a field Paddler's schema refuses"
            details["cache_write_tokens"] = 0
        for value in data.values():
            _with_cache_write_tokens(value)
    elif isinstance(data, list):
        for item in data:
            _with_cache_write_tokens(item)
    return data


def _assert_no_extra(value: Any, path: str) -> None:
    if isinstance(value, BaseModel):
        extra = set(value.model_extra or {})
        assert not extra, f"undeclared fields {sorted(extra)} at {path}"
        for name in type(value).model_fields:
            _assert_no_extra(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_no_extra(item, f"{path}[{index}]")
