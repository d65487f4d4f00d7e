"""The prompt state cache: sequences' KV states kept in host memory after their slot is reused,
so that an agent keeps more conversations than it has slots (`paddler agent --cache-ram-mib`).

When a request is about to overwrite what a free slot holds (its prompt shares less than all of
it), the scheduler first saves that slot's sequence state here (`llama_state_seq_get_data`, a
copy of its KV cells) under the tokens it holds. A later request whose prompt shares a longer
prefix with a saved state than with any free slot, by at least `USEFUL_PREFIX_TOKENS`, has it
restored into a slot (`llama_state_seq_set_data`), cut back to the shared prefix, and prefills
only the rest. Restoring copies memory; prefilling computes, so a restore pays off from a few
tokens on.

Tokens are the identity: a state is only ever restored for a prompt that starts with the tokens
it shares with it. Bounded by bytes: the least recently saved or restored state goes first; a
state larger than the whole budget is not kept. A saved state whose tokens the new one extends
is dropped (the new one serves every prompt the old one could), and a state that a saved one
already extends is not saved again.

Everything here runs on the engine's worker thread (it calls into the context), except
`figures`, a value replaced whole on every change, which the agent's status reads.
"""

from __future__ import annotations

import ctypes
import logging

import attrs
import numpy as np

from paddler_trio.engine.context import DecodingContext

_logger = logging.getLogger(__name__)

MIB = 1024 * 1024

# Fewer shared tokens than this (a BOS, a chat template's opening) are not worth a restore, nor
# taking the slot of another conversation; a sequence shorter than this is not worth saving.
USEFUL_PREFIX_TOKENS = 16


@attrs.frozen
class StateCacheFigures:
    """What the cache holds now, for the agent's status."""

    states: int
    used_bytes: int
    limit_bytes: int


@attrs.define(eq=False)
class SavedState:
    tokens: np.ndarray  # int64 (image stand-ins are beyond int32: engine/multimodal.py), the tokens whose KV `data` holds
    data: ctypes.Array[ctypes.c_uint8]


class StateCache:
    def __init__(self, limit_bytes: int) -> None:
        self._limit = limit_bytes
        self._states: list[SavedState] = []  # least recently used first
        self._used = 0
        self.figures = StateCacheFigures(states=0, used_bytes=0, limit_bytes=limit_bytes)

    @property
    def enabled(self) -> bool:
        return self._limit > 0

    def best_match(self, prompt: np.ndarray) -> tuple[SavedState | None, int]:
        """The saved state sharing the longest token prefix with `prompt`, and that length
        (ties: the most recently used)."""
        best: SavedState | None = None
        best_common = 0
        for state in reversed(self._states):
            common = common_prefix_length(state.tokens, prompt)
            if common > best_common:
                best, best_common = state, common
        return best, best_common

    def save(self, context: DecodingContext, sequence: int, tokens: list[int]) -> None:
        """Keep a copy of `sequence`'s state, whose KV holds `tokens`."""
        if not self.enabled or len(tokens) < USEFUL_PREFIX_TOKENS:
            return
        saved = np.asarray(tokens, dtype=np.int64)
        for state in self._states:
            if _extends(state.tokens, saved):
                self._touch(state)
                return
        size = context.state_size(sequence)
        if size > self._limit:
            _logger.debug(
                "not saving slot %d's %d tokens: its state (%.1f MiB) is larger than the whole cache (%.1f MiB)",
                sequence, len(saved), size / MIB, self._limit / MIB,
            )
            return
        for state in [state for state in self._states if _extends(saved, state.tokens)]:
            self._remove(state, "the new state extends it")
        while self._used + size > self._limit:
            self._remove(self._states[0], "least recently used")
        data = context.save_state(sequence, size)
        if data is None:
            _logger.warning("llama.cpp could not copy slot %d's state; it is not cached", sequence)
            return
        self._states.append(SavedState(saved, data))
        self._used += size
        self._update_figures()
        _logger.debug(
            "saved slot %d's state: %d tokens, %.1f MiB (cache: %d states, %.1f of %.1f MiB)",
            sequence, len(saved), size / MIB, len(self._states), self._used / MIB, self._limit / MIB,
        )

    def restore(self, context: DecodingContext, state: SavedState, sequence: int) -> bool:
        """Load `state` into `sequence` (its KV replaced); False when llama.cpp refuses it."""
        if not context.restore_state(state.data, sequence):
            _logger.warning("llama.cpp could not restore a saved state of %d tokens: dropping it", len(state.tokens))
            context.forget(sequence)
            if state in self._states:
                self._remove(state, "it could not be restored")
            return False
        if state in self._states:  # saving the slot's own state may just have evicted it
            self._touch(state)
        _logger.debug("restored a saved state of %d tokens into slot %d", len(state.tokens), sequence)
        return True

    def _touch(self, state: SavedState) -> None:
        self._states.remove(state)
        self._states.append(state)

    def _remove(self, state: SavedState, reason: str) -> None:
        self._states.remove(state)
        self._used -= len(state.data)
        self._update_figures()
        _logger.debug("evicted a saved state of %d tokens (%s)", len(state.tokens), reason)

    def _update_figures(self) -> None:
        self.figures = StateCacheFigures(states=len(self._states), used_bytes=self._used, limit_bytes=self._limit)


def common_prefix_length(left: np.ndarray, right: np.ndarray) -> int:
    length = min(len(left), len(right))
    differ = np.flatnonzero(left[:length] != right[:length])
    return int(differ[0]) if differ.size else length


def _extends(longer: np.ndarray, shorter: np.ndarray) -> bool:
    """Whether `longer` starts with all of `shorter`."""
    return len(longer) >= len(shorter) and common_prefix_length(longer, shorter) == len(shorter)
