"""A request's prompt prefix as a chain of hashes, computed without a tokenizer.

Link i is a hash of link i-1 and the i-th piece of the request, so two requests share their
first k links exactly when their first k pieces are equal (up to hash collisions): matching a
request against what an agent was sent is a lookup per link, never a text comparison.

- Conversations (native `continue_from_conversation_history`, OpenAI chat, Responses): one
  piece per message, in order. The chain starts from the request's tools, which chat templates
  render ahead of the messages, so that requests with other tools share nothing.
- Requests the reverse proxy passes to a llama-server (`passed_through_chain`): the same two
  kinds, read from the request's JSON (`messages`, else a string `prompt`).
- Raw prompts (native `continue_from_raw_prompt`, OpenAI `/v1/completions`): one piece per
  `BLOCK_CHARACTERS` characters of the prompt; a last, shorter block is a link too (a longer
  prompt that continues it differs there, so only whole blocks match across prompts).

Each link also carries how many characters of the request it covers up to its end: the size
of what an agent holding that link would not have to prefill again (characters stand in for
tokens, which only the agent knows).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs

from paddler_trio.protocol import (
    AgentRequest,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    ConversationMessage,
    to_json,
)

BLOCK_CHARACTERS = 256
# 8 bytes: collisions are negligible among the few thousand prefixes a balancer remembers.
DIGEST_BYTES = 8
# A chain stops after this many links (1 MiB of raw prompt): hashing a huge prompt block by
# block would hold up the balancer's event loop, and no agent cache spans that much.
MAX_LINKS = 4096


@attrs.frozen
class PrefixChain:
    links: tuple[bytes, ...] = ()
    # Characters of the request covered from its start to the end of each link.
    ends: tuple[int, ...] = ()


NO_PREFIX = PrefixChain()


def prefix_chain(request: AgentRequest) -> PrefixChain:
    """The chain of a generation request; `NO_PREFIX` for anything else (embeddings, questions)."""
    if isinstance(request, ContinueFromConversationHistoryParams):
        return conversation_chain(request.conversation_history, tools_json=to_json(request.tools))
    if isinstance(request, ContinueFromRawPromptParams):
        return raw_prompt_chain(request.raw_prompt)
    return NO_PREFIX


def conversation_chain(messages: tuple[ConversationMessage, ...], *, tools_json: str = "[]") -> PrefixChain:
    # The wire JSON of a message is canonical: attrs fields in a fixed order, content parts,
    # tool calls and names included.
    pieces = [to_json(message) for message in messages[:MAX_LINKS]]
    return _chain(b"conversation", tools_json.encode(), pieces)


def raw_prompt_chain(prompt: str) -> PrefixChain:
    end = min(len(prompt), BLOCK_CHARACTERS * MAX_LINKS)
    pieces = [prompt[start : start + BLOCK_CHARACTERS] for start in range(0, end, BLOCK_CHARACTERS)]
    return _chain(b"raw-prompt", b"", pieces)


def passed_through_chain(body: Any) -> PrefixChain:
    """The chain of a JSON request body bound for a llama-server: its `messages` (with its
    `tools`) as a conversation, else its `prompt` when that is text; `NO_PREFIX` otherwise."""
    if not isinstance(body, dict):
        return NO_PREFIX
    messages = body.get("messages")
    if isinstance(messages, list):
        pieces = [json.dumps(message, sort_keys=True) for message in messages[:MAX_LINKS]]
        return _chain(b"passed-through", json.dumps(body.get("tools"), sort_keys=True).encode(), pieces)
    prompt = body.get("prompt")
    return raw_prompt_chain(prompt) if isinstance(prompt, str) else NO_PREFIX


def _chain(kind: bytes, seed: bytes, pieces: list[str]) -> PrefixChain:
    previous = hashlib.blake2b(seed, digest_size=DIGEST_BYTES, person=kind).digest()
    links: list[bytes] = []
    ends: list[int] = []
    covered = 0
    for piece in pieces:
        previous = hashlib.blake2b(previous + piece.encode("utf-8", "surrogatepass"), digest_size=DIGEST_BYTES).digest()
        covered += len(piece)
        links.append(previous)
        ends.append(covered)
    return PrefixChain(tuple(links), tuple(ends))
