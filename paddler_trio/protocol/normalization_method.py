"""How an embedding vector is normalised: ``"None"``, ``"L2"`` or ``{"RmsNorm": {"epsilon": f32}}``."""

from __future__ import annotations

from typing import Union

import attrs


@attrs.frozen
class NoNormalization:
    """``"None"``: the pooled vector as is."""


@attrs.frozen
class L2Normalization:
    """``"L2"``: scaled to unit Euclidean length."""


@attrs.frozen
class RmsNormNormalization:
    """``{"RmsNorm": {"epsilon": f32}}``: divided by its root mean square (plus epsilon)."""

    epsilon: float


NormalizationMethod = Union[NoNormalization, L2Normalization, RmsNormNormalization]
