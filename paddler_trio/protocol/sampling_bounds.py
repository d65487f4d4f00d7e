"""Range checks shared by the cluster's sampling parameters and per-request sampling overrides."""

from __future__ import annotations


def sampling_problems(
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    top_k: int | None = None,
) -> list[str]:
    """Human sentences for every out-of-range value given (None means "not given")."""
    problems: list[str] = []
    if temperature is not None and temperature < 0:
        problems.append(f"temperature must not be negative (got {temperature})")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be greater than 0 and at most 1 (got {top_p})")
    if min_p is not None and not 0 <= min_p <= 1:
        problems.append(f"min_p must be between 0 and 1 (got {min_p})")
    if top_k is not None and top_k < 0:
        problems.append(f"top_k must not be negative (got {top_k})")
    return problems
