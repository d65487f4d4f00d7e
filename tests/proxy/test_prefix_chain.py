"""Prefix chains: equal prefixes give equal links, anything else differs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from paddler_trio.protocol import (
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    GenerateEmbeddingBatchParams,
    NoNormalization,
    TextPart,
)
from paddler_trio.proxy.prefix_chain import (
    BLOCK_CHARACTERS,
    MAX_LINKS,
    NO_PREFIX,
    conversation_chain,
    prefix_chain,
    raw_prompt_chain,
)

messages = st.builds(
    ConversationMessage,
    role=st.sampled_from(["system", "user", "assistant", "tool"]),
    content=st.text(max_size=40),
)


def _shared_links(left: tuple[object, ...], right: tuple[object, ...]) -> int:
    shared = 0
    for a, b in zip(left, right, strict=False):
        if a != b:
            break
        shared += 1
    return shared


@given(st.lists(messages, max_size=6), st.lists(messages, max_size=4), st.lists(messages, max_size=4))
def test_a_shared_conversation_prefix_gives_a_shared_chain_prefix(
    common: list[ConversationMessage], left: list[ConversationMessage], right: list[ConversationMessage]
) -> None:
    first = conversation_chain((*common, *left))
    second = conversation_chain((*common, *right))
    expected = len(common) + _shared_links(tuple(left), tuple(right))
    assert _shared_links(first.links, second.links) == expected
    assert len(first.links) == len(common) + len(left)


@given(st.text(max_size=3 * BLOCK_CHARACTERS), st.text(min_size=1, max_size=BLOCK_CHARACTERS))
def test_a_longer_raw_prompt_keeps_every_whole_block_of_the_shorter_one(prompt: str, more: str) -> None:
    short, long = raw_prompt_chain(prompt), raw_prompt_chain(prompt + more)
    whole_blocks = len(prompt) // BLOCK_CHARACTERS
    assert long.links[:whole_blocks] == short.links[:whole_blocks]
    assert short.ends[-1:] == ((len(prompt),) if prompt else ())


@given(st.text(max_size=600), st.text(max_size=600))
def test_different_raw_prompts_have_different_chains(left: str, right: str) -> None:
    assert (raw_prompt_chain(left) == raw_prompt_chain(right)) == (left == right)


def test_the_same_text_as_raw_prompt_and_as_a_message_shares_nothing() -> None:
    raw = raw_prompt_chain("Hello")
    conversation = conversation_chain((ConversationMessage(role="user", content="Hello"),))
    assert not set(raw.links) & set(conversation.links)


def test_role_and_content_parts_are_part_of_a_message_link() -> None:
    as_user = conversation_chain((ConversationMessage(role="user", content="Hi"),))
    as_assistant = conversation_chain((ConversationMessage(role="assistant", content="Hi"),))
    as_parts = conversation_chain((ConversationMessage(role="user", content=(TextPart("Hi"),)),))
    assert len({as_user.links, as_assistant.links, as_parts.links}) == 3


def test_ends_count_the_characters_covered() -> None:
    chain = raw_prompt_chain("x" * (2 * BLOCK_CHARACTERS + 10))
    assert chain.ends == (BLOCK_CHARACTERS, 2 * BLOCK_CHARACTERS, 2 * BLOCK_CHARACTERS + 10)


def test_a_huge_prompt_is_cut_at_the_link_limit() -> None:
    assert len(raw_prompt_chain("x" * (BLOCK_CHARACTERS * (MAX_LINKS + 3))).links) == MAX_LINKS


def test_lone_surrogates_do_not_break_hashing() -> None:
    assert raw_prompt_chain("\ud800").links


def test_requests_map_to_their_chains() -> None:
    history = (ConversationMessage(role="user", content="Hi"),)
    conversation = ContinueFromConversationHistoryParams(
        add_generation_prompt=True, conversation_history=history, enable_thinking=False, max_tokens=8
    )
    assert prefix_chain(conversation) == conversation_chain(history)
    assert prefix_chain(ContinueFromRawPromptParams(max_tokens=8, raw_prompt="Hi")) == raw_prompt_chain("Hi")
    assert prefix_chain(GenerateEmbeddingBatchParams(input_batch=(), normalization_method=NoNormalization())) is NO_PREFIX
