"""Hypothesis strategies for every protocol type, derived from the attrs classes' field types."""

from __future__ import annotations

import enum
import functools
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin

import attrs
from hypothesis import strategies as st

from paddler_trio.protocol import RequestEnvelope, ResponseEnvelope

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


SHORT_KEYS = st.text(max_size=8)


def json_values(keys: st.SearchStrategy[str] = SHORT_KEYS) -> st.SearchStrategy[Any]:
    """Any JSON value (as decoded by ``json.loads``), a few levels deep."""
    return st.recursive(
        json_scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
        max_leaves=12,
    )


@functools.cache
def for_type(annotation: Any) -> st.SearchStrategy[Any]:
    """Values of a protocol type: finite floats, every field of every class filled in."""
    if annotation is Any:
        return json_values()
    if annotation is str:
        return st.text(max_size=12)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-(2**40), max_value=2**40)
    if annotation is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if annotation is types.NoneType:
        return st.none()
    origin = get_origin(annotation)
    arguments = get_args(annotation)
    if origin in (Union, types.UnionType):
        return st.one_of(*(for_type(member) for member in arguments))
    if origin is tuple:
        return st.lists(for_type(arguments[0]), max_size=3).map(tuple)
    if origin is frozenset:
        return st.frozensets(for_type(arguments[0]), max_size=3)
    if origin in (dict, Mapping):
        return st.dictionaries(st.text(max_size=8), for_type(arguments[1]), max_size=3)
    if origin is RequestEnvelope:
        return st.builds(RequestEnvelope, id=for_type(str), request=for_type(arguments[0]))
    if origin is ResponseEnvelope:
        return st.builds(
            ResponseEnvelope,
            generated_by=for_type(str | None),
            request_id=for_type(str),
            response=for_type(arguments[0]),
        )
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and attrs.has(annotation):
        fields = attrs.fields(attrs.resolve_types(annotation))
        return st.builds(annotation, **{field.name: for_type(field.type) for field in fields})
    raise TypeError(f"no strategy for {annotation!r}")
