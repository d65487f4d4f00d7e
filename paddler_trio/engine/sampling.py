"""Per-slot llama.cpp sampler chains and the settings that build them.

Chain order is Paddler's: [grammar] -> penalties -> top_k -> top_p -> min_p -> temperature
-> dist(seed); a temperature of 0 ends the chain with greedy instead of temp+dist.
"""

from __future__ import annotations

import json
import random

import attrs
import llama_cpp
from llama_cpp.llama_grammar import json_schema_to_gbnf

from paddler_trio.engine.model import LoadedModel
from paddler_trio.protocol import (
    GbnfGrammar,
    GrammarConstraint,
    GrammarInitializationFailed,
    GrammarSyntaxError,
    InferenceParameters,
    JsonSchemaGrammar,
)
from paddler_trio.engine.request_rejection import RequestRejected


@attrs.frozen
class SamplingSettings:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    penalty_last_n: int
    penalty_repeat: float
    penalty_frequency: float
    penalty_presence: float
    seed: int | None = None

    @classmethod
    def from_parameters(
        cls,
        parameters: InferenceParameters,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        seed: int | None = None,
    ) -> "SamplingSettings":
        """The cluster's parameters, with any per-request overrides on top."""
        return cls(
            temperature=parameters.temperature if temperature is None else temperature,
            top_k=parameters.top_k if top_k is None else top_k,
            top_p=parameters.top_p if top_p is None else top_p,
            min_p=parameters.min_p if min_p is None else min_p,
            penalty_last_n=parameters.penalty_last_n,
            penalty_repeat=parameters.penalty_repeat,
            penalty_frequency=parameters.penalty_frequency,
            penalty_presence=parameters.penalty_presence,
            seed=seed,
        )

    @property
    def is_greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.penalty_last_n != 0 and (
            self.penalty_repeat != 1.0 or self.penalty_frequency != 0.0 or self.penalty_presence != 0.0
        )


@attrs.frozen
class GbnfSource:
    text: str
    root: str


def gbnf_for_constraint(constraint: GrammarConstraint) -> GbnfSource:
    """GBNF text for a request's grammar; a JSON schema is converted with llama.cpp's converter."""
    if isinstance(constraint, GbnfGrammar):
        return GbnfSource(constraint.grammar, constraint.root)
    assert isinstance(constraint, JsonSchemaGrammar)
    try:
        json.loads(constraint.schema)
        return GbnfSource(json_schema_to_gbnf(constraint.schema), "root")
    except Exception as error:  # the converter raises bare Exceptions and assertions
        raise RequestRejected(GrammarSyntaxError(f"Failed to convert JSON schema to grammar: {error}")) from error


class SamplerChain:
    """One C-side `llama_sampler` chain; owned by a single slot, freed with `close()`."""

    def __init__(
        self,
        model: LoadedModel,
        settings: SamplingSettings,
        grammar: GbnfSource | None,
        *,
        context_tokens: int,
    ) -> None:
        self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        try:
            if grammar is not None:
                grammar_sampler = llama_cpp.llama_sampler_init_grammar(
                    model.vocab, grammar.text.encode("utf-8"), grammar.root.encode("utf-8")
                )
                if not grammar_sampler:
                    raise RequestRejected(
                        GrammarInitializationFailed(
                            f"llama.cpp rejected the grammar (syntax error or unknown root rule {grammar.root!r})"
                        )
                    )
                self._add(grammar_sampler)
            if settings.uses_penalties:
                last_n = context_tokens if settings.penalty_last_n < 0 else settings.penalty_last_n
                self._add(
                    llama_cpp.llama_sampler_init_penalties(
                        model.n_vocab,
                        last_n,
                        settings.penalty_repeat,
                        settings.penalty_frequency,
                        settings.penalty_presence,
                    )
                )
            if settings.is_greedy:
                self._add(llama_cpp.llama_sampler_init_greedy())
            else:
                if settings.top_k > 0:
                    self._add(llama_cpp.llama_sampler_init_top_k(settings.top_k))
                self._add(llama_cpp.llama_sampler_init_top_p(settings.top_p, 1))
                self._add(llama_cpp.llama_sampler_init_min_p(settings.min_p, 1))
                self._add(llama_cpp.llama_sampler_init_temp(settings.temperature))
                seed = settings.seed if settings.seed is not None else random.getrandbits(32)
                self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        except BaseException:
            self.close()
            raise

    def _add(self, sampler: llama_cpp.llama_sampler_p) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, context: llama_cpp.llama_context_p, batch_index: int) -> int:
        """Sample from the logits of `batch_index` in the last decode; accepts the token."""
        return llama_cpp.llama_sampler_sample(self._chain, context, batch_index)

    def accept(self, token: int) -> None:
        """Record a token chosen elsewhere (penalty history, grammar state)."""
        llama_cpp.llama_sampler_accept(self._chain, token)

    def close(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
