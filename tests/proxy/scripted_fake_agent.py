"""A scripted fake agent for balancer load and fault tests (never a stand-in for llama.cpp
in a feature test).

It speaks the agent socket protocol (spec 5) exactly like a real agent: connects to
`/api/v1/agent_socket/{id}` with trio-websocket, reads `Version`, registers with N slots
and a model path, applies `SetState`, answers generation requests with scripted
`ContentToken`s (a configurable delay before each) then `Done`, embedding requests with
one vector per document then `Done`, metadata and chat template questions from its script,
and honours `StopRespondingTo` (it ends the stream with `Done`, as a real agent does).
It can freeze (stop answering new requests) and drop its connection abruptly.

Like our agent, it offers our request extensions (`paddler_trio.protocol.request_extensions`) on
its upgrade request. With `as_paddler` it is exactly as strict as a Paddler 4.x agent instead: it
does not offer them, and a request with a field Paddler's request structs do not have
(`deny_unknown_fields`) gets no answer at all, as Paddler's agent drops a message it cannot
decode; such frames are kept in `dropped`.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from paddler_trio.protocol import (
    AgentBoundMessage,
    AgentDesiredState,
    ChatTemplate,
    ChatTemplateOverrideResponse,
    ContentToken,
    ContinueFromConversationHistoryParams,
    ContinueFromRawPromptParams,
    Embedding,
    EmbeddingDone,
    EmbeddingProduced,
    GenerateEmbeddingBatchParams,
    GenerationDone,
    GetChatTemplateOverrideRequest,
    GetModelMetadataRequest,
    ModelMetadata,
    ModelMetadataResponse,
    PoolingType,
    RegisterAgentNotification,
    RequestEnvelope,
    ResponseEnvelope,
    SetStateNotification,
    SlotAggregatedStatusSnapshot,
    StateApplicationStatus,
    StopRespondingToNotification,
    TokenUsage,
    UpdateAgentStatusNotification,
    VersionNotification,
    from_json,
    to_json,
)
from paddler_trio.protocol.request_extensions import REQUEST_EXTENSIONS_HEADER, REQUEST_EXTENSIONS_VERSION

# The keys of Paddler 4.x's request structs (spec 2.2). The nested types Paddler shares with us
# (content parts, tools, grammars) our own decoder already checks as strictly.
PADDLER_REQUEST_FIELDS = {
    "ContinueFromRawPrompt": frozenset({"grammar", "max_tokens", "raw_prompt"}),
    "ContinueFromConversationHistory": frozenset(
        {"add_generation_prompt", "conversation_history", "enable_thinking", "grammar", "max_tokens", "parse_tool_calls", "tools"}
    ),
    "GenerateEmbeddingBatch": frozenset({"input_batch", "normalization_method"}),
}
PADDLER_MESSAGE_FIELDS = frozenset({"role", "content"})


def paddler_cannot_decode(frame: str) -> bool:
    """Whether a Paddler 4.x agent fails to decode this frame: a request with a field it does not have."""
    request = json.loads(frame).get("Request", {}).get("request")
    if not isinstance(request, dict):
        return False
    ((kind, params),) = request.items()
    if not params.keys() <= PADDLER_REQUEST_FIELDS.get(kind, params.keys()):
        return True
    return any(not message.keys() <= PADDLER_MESSAGE_FIELDS for message in params.get("conversation_history", ()))


def status_snapshot(*, slots: int, model_path: str | None, version: int = 1) -> SlotAggregatedStatusSnapshot:
    return SlotAggregatedStatusSnapshot(
        desired_slots_total=slots,
        download_current=0,
        download_filename=None,
        download_indeterminate=False,
        download_total=0,
        issues=frozenset(),
        model_path=model_path,
        slots_processing=0,
        slots_total=slots if model_path is not None else 0,
        state_application_status=StateApplicationStatus.APPLIED,
        uses_chat_template_override=False,
        version=version,
    )


@attrs.define(eq=False)
class ScriptedFakeAgent:
    management_addr: str
    slots: int = 1
    name: str | None = None
    agent_id: str = attrs.field(factory=lambda: "fake-" + secrets.token_hex(4))
    model_path: str | None = "/models/scripted-fake.gguf"
    tokens: tuple[str, ...] = ("Hello", ",", " world")
    token_delay: float = 0.0
    metadata: dict[str, str] = attrs.field(factory=lambda: {"general.architecture": "scripted-fake"})
    chat_template: ChatTemplate | None = None
    metadata_delay: float = 0.0
    as_paddler: bool = False  # see the module docstring
    # The usage its `Done` reports.
    prompt_tokens: int = 3
    cached_prompt_tokens: int = 0
    # Observations for the tests.
    version_seen: str | None = None
    set_states: list[AgentDesiredState] = attrs.field(factory=list)
    requests: list[RequestEnvelope[Any]] = attrs.field(factory=list)
    stops: list[str] = attrs.field(factory=list)
    active: set[str] = attrs.field(factory=set)
    max_active: int = 0
    finished: list[str] = attrs.field(factory=list)
    dropped: list[str] = attrs.field(factory=list)
    frozen: bool = False
    _ws: WebSocketConnection | None = None
    _stop_events: dict[str, trio.Event] = attrs.field(factory=dict)
    _status_version: int = 1

    @property
    def url(self) -> str:
        return f"ws://{self.management_addr}/api/v1/agent_socket/{self.agent_id}"

    async def run(self, *, task_status: trio.TaskStatus[ScriptedFakeAgent] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, register, then serve until the balancer or `drop()` ends the connection."""
        try:
            offer = [] if self.as_paddler else [(REQUEST_EXTENSIONS_HEADER.encode(), REQUEST_EXTENSIONS_VERSION.encode())]
            async with open_websocket_url(self.url, extra_headers=offer) as ws:
                self._ws = ws
                version = from_json(await ws.get_message(), AgentBoundMessage)
                assert isinstance(version, VersionNotification), version
                self.version_seen = version.version
                await self._send(
                    RegisterAgentNotification(
                        name=self.name,
                        slot_aggregated_status_snapshot=status_snapshot(slots=self.slots, model_path=self.model_path),
                    )
                )
                async with trio.open_nursery() as nursery:
                    task_status.started(self)
                    while True:
                        frame = await ws.get_message()
                        if self.as_paddler and paddler_cannot_decode(frame):
                            self.dropped.append(frame)
                            continue
                        self._handle(nursery, from_json(frame, AgentBoundMessage))
        except* (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the balancer closed the socket, or the test dropped it

    async def drop(self) -> None:
        """Cut the TCP connection without a WebSocket close handshake."""
        assert self._ws is not None
        await self._ws._stream.aclose()  # noqa: SLF001 - an abrupt drop is the point

    async def report_status(self, *, slots_total: int, model_path: str | None, slots_processing: int = 0) -> None:
        """Send `UpdateAgentStatus` with a newer version."""
        self._status_version += 1
        snapshot = attrs.evolve(
            status_snapshot(slots=self.slots, model_path=model_path, version=self._status_version),
            slots_total=slots_total,
            slots_processing=slots_processing,
        )
        await self._send(UpdateAgentStatusNotification(slot_aggregated_status_snapshot=snapshot))

    def _handle(self, nursery: trio.Nursery, message: Any) -> None:
        if isinstance(message, SetStateNotification):
            self.set_states.append(message.desired_state)
        elif isinstance(message, StopRespondingToNotification):
            self.stops.append(message.request_id)
            event = self._stop_events.get(message.request_id)
            if event is not None:
                event.set()
        elif isinstance(message, RequestEnvelope):
            self.requests.append(message)
            request = message.request
            if isinstance(request, GetModelMetadataRequest):
                nursery.start_soon(self._answer_metadata, message.id)
            elif isinstance(request, GetChatTemplateOverrideRequest):
                nursery.start_soon(self._reply, message.id, ChatTemplateOverrideResponse(self.chat_template))
            elif self.frozen:
                self.active.add(message.id)  # holds the slot, never answers
            elif isinstance(request, GenerateEmbeddingBatchParams):
                nursery.start_soon(self._embed, message.id, request)
            elif isinstance(request, (ContinueFromRawPromptParams, ContinueFromConversationHistoryParams)):
                nursery.start_soon(self._generate, message.id)

    async def _generate(self, request_id: str) -> None:
        stop = self._stop_events[request_id] = trio.Event()
        self.active.add(request_id)
        self.max_active = max(self.max_active, len(self.active))
        sent = 0
        try:
            for token in self.tokens:
                with trio.move_on_after(self.token_delay):
                    await stop.wait()
                if stop.is_set():
                    break
                await self._reply(request_id, ContentToken(token))
                sent += 1
            usage = TokenUsage(
                prompt_tokens=self.prompt_tokens, cached_prompt_tokens=self.cached_prompt_tokens, content_tokens=sent
            )
            await self._reply(request_id, GenerationDone(usage=usage))
        finally:
            self.active.discard(request_id)
            self.finished.append(request_id)
            del self._stop_events[request_id]

    async def _embed(self, request_id: str, params: GenerateEmbeddingBatchParams) -> None:
        self.active.add(request_id)
        self.max_active = max(self.max_active, len(self.active))
        try:
            for document in params.input_batch:
                await trio.sleep(self.token_delay)
                embedding = Embedding(
                    embedding=(float(len(document.content)), 1.0),
                    normalization_method=params.normalization_method,
                    pooling_type=PoolingType.LAST,
                    source_document_id=document.id,
                )
                await self._reply(request_id, EmbeddingProduced(embedding))
            await self._reply(request_id, EmbeddingDone())
        finally:
            self.active.discard(request_id)
            self.finished.append(request_id)

    async def _answer_metadata(self, request_id: str) -> None:
        await trio.sleep(self.metadata_delay)
        await self._reply(request_id, ModelMetadataResponse(ModelMetadata(self.metadata)))

    async def _reply(self, request_id: str, response: Any) -> None:
        await self._send(ResponseEnvelope(generated_by=None, request_id=request_id, response=response))

    async def _send(self, message: Any) -> None:
        assert self._ws is not None
        await self._ws.send_message(to_json(message))
