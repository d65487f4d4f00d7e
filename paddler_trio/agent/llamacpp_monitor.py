"""Watching one llama-server, for `paddler agent --local-llamacpp-addr` (Paddler 1.x's mode).

Every `--monitoring-interval` the monitor asks llama-server for its slots (`GET /slots`: a list
of `{"id", "is_processing", ...}`) and, when that works, for its model (`GET /props`, else
`GET /v1/models`), and writes what it learnt into the agent's status, which the management
link reports to the balancer. Every failure becomes one agent issue that names the llama-server
and says what to do: unreachable, API key refused (401), `/slots` disabled (501), model loading
(503), anything else; a failure reports no slots and no model. The issue goes with the next
poll that works.

Where this differs from Paddler 1.x (spec "Known bugs"): the first poll is done before the agent
joins the balancer, so its first report is never lost; the interval defaults to 1 s instead of
10 s; 503 is told apart from other statuses; the agent reports the model. Polls use a fresh
connection each: llama-server closes idle kept-alive connections, and a poll sent on one it is
closing would fail for nothing. A poll takes at most `POLL_TIMEOUT` per request; a slow poll
delays the next one instead of piling up.
"""

from __future__ import annotations

import logging
from typing import Any

import attrs
import httpx
import trio

from paddler_trio.agent.status import AgentStatus
from paddler_trio.cli_values import SocketAddress
from paddler_trio.protocol import (
    AgentIssue,
    LlamaServerAnsweredUnexpectedly,
    LlamaServerIsLoadingModel,
    LlamaServerIsUnreachable,
    LlamaServerRefusedApiKey,
    LlamaServerSlotsEndpointIsDisabled,
    LlamaServerStatus,
)

_logger = logging.getLogger(__name__)

# Paddler 1.x's reqwest client waited 3 s in all.
POLL_TIMEOUT = 3.0


@attrs.frozen
class LlamaServerModel:
    name: str | None
    path: str | None


@attrs.frozen
class PollOutcome:
    """What one poll learnt: slots and model, or the issue that kept it from learning them."""

    slots_total: int = 0
    slots_processing: int = 0
    model: LlamaServerModel = LlamaServerModel(None, None)
    issue: AgentIssue | None = None


class LlamaServerMonitor:
    def __init__(
        self,
        status: AgentStatus,
        *,
        local_addr: SocketAddress,
        external_addr: SocketAddress,
        api_key: str | None,
        interval: float,
    ) -> None:
        self._status = status
        self._local_addr = local_addr
        self._external_addr = external_addr
        self._api_key = api_key
        self._interval = interval
        host = f"[{local_addr.host}]" if ":" in local_addr.host else local_addr.host
        self._base_url = f"http://{host}:{local_addr.port}"
        self._last: PollOutcome | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll until cancelled; ready once the first poll has been reported."""
        headers = {"Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        async with httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers,
            timeout=httpx.Timeout(POLL_TIMEOUT),
            limits=httpx.Limits(max_keepalive_connections=0),
        ) as client:
            started = trio.current_time()
            self._report(await self.poll(client))
            task_status.started()
            while True:
                await trio.sleep_until(started + self._interval)
                started = trio.current_time()
                self._report(await self.poll(client))

    async def poll(self, client: httpx.AsyncClient) -> PollOutcome:
        slots = await self._get(client, "/slots")
        if not isinstance(slots, httpx.Response):
            return PollOutcome(issue=slots)
        if slots.status_code != 200:
            return PollOutcome(issue=self._issue_of_status(slots))
        try:
            total, processing = _count_slots(slots.json())
        except ValueError as error:
            return PollOutcome(
                issue=LlamaServerAnsweredUnexpectedly(
                    description=f"llama-server at {self._local_addr} answered GET /slots with something other than "
                    f"a list of slots: {error}",
                    llamacpp_addr=str(self._local_addr),
                )
            )
        return PollOutcome(slots_total=total, slots_processing=processing, model=await self._model(client))

    async def _get(self, client: httpx.AsyncClient, path: str) -> httpx.Response | AgentIssue:
        try:
            return await client.get(path)
        except httpx.TimeoutException:
            reason = f"no answer to GET {path} within {POLL_TIMEOUT:g} s"
        except httpx.TransportError as error:
            reason = _transport_failure(error)
        return LlamaServerIsUnreachable(
            description=f"cannot reach llama-server at {self._local_addr}: {reason}; is it running, and listening there?",
            llamacpp_addr=str(self._local_addr),
        )

    def _issue_of_status(self, response: httpx.Response) -> AgentIssue:
        addr = str(self._local_addr)
        code = response.status_code
        if code == 401:
            advice = (
                "llama-server's --api-key does not match the agent's --llamacpp-api-key"
                if self._api_key
                else "llama-server has an --api-key: give the agent the same key with --llamacpp-api-key"
            )
            return LlamaServerRefusedApiKey(
                description=f"llama-server at {addr} refused the agent (HTTP 401 on GET /slots): {advice}",
                llamacpp_addr=addr,
            )
        if code == 501:
            return LlamaServerSlotsEndpointIsDisabled(
                description=f"llama-server at {addr} has its /slots endpoint disabled (HTTP 501): the agent reads "
                "the slots there; start llama-server without --no-slots (or with --slots)",
                llamacpp_addr=addr,
            )
        if code == 503:
            return LlamaServerIsLoadingModel(
                description=f"llama-server at {addr} is loading its model (HTTP 503: {_error_message(response)})",
                llamacpp_addr=addr,
            )
        return LlamaServerAnsweredUnexpectedly(
            description=f"llama-server at {addr} answered GET /slots with HTTP {code}: {_error_message(response)}",
            llamacpp_addr=addr,
        )

    async def _model(self, client: httpx.AsyncClient) -> LlamaServerModel:
        """llama-server's model: `/props` has its name and path; `/v1/models` (older servers) its name."""
        props = await self._get(client, "/props")
        if isinstance(props, httpx.Response) and props.status_code == 200:
            fields = _json_object(props)
            name, path = fields.get("model_alias"), fields.get("model_path")
            if isinstance(name, str) and name:
                return LlamaServerModel(name, path if isinstance(path, str) and path else None)
        models = await self._get(client, "/v1/models")
        if isinstance(models, httpx.Response) and models.status_code == 200:
            data = _json_object(models).get("data")
            if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
                return LlamaServerModel(data[0]["id"], None)
        return LlamaServerModel(None, None)

    def _report(self, outcome: PollOutcome) -> None:
        self._log_change(outcome)
        self._last = outcome
        self._status.update(
            issues=() if outcome.issue is None else (outcome.issue,),
            slots_total=outcome.slots_total,
            slots_processing=outcome.slots_processing,
            model_path=outcome.model.path,
            llama_server=LlamaServerStatus(external_llamacpp_addr=str(self._external_addr), model_name=outcome.model.name),
            fresh=True,
        )

    def _log_change(self, outcome: PollOutcome) -> None:
        last = self._last
        if outcome.issue is not None:
            if last is None or last.issue != outcome.issue:
                _logger.warning("%s", outcome.issue.description)  # type: ignore[union-attr]
            return
        if last is None or last.issue is not None or (last.slots_total, last.model) != (outcome.slots_total, outcome.model):
            _logger.info(
                "llama-server at %s answers: %d slots, model %s",
                self._local_addr,
                outcome.slots_total,
                outcome.model.name or "unknown (neither /props nor /v1/models names it)",
            )


def _count_slots(body: Any) -> tuple[int, int]:
    """(total, processing) of a `/slots` body; ValueError when it is not a list of slots."""
    if not isinstance(body, list):
        raise ValueError(f"expected a JSON array, got {type(body).__name__}")
    processing = 0
    for index, slot in enumerate(body):
        if not isinstance(slot, dict) or not isinstance(slot.get("id"), int) or not isinstance(slot.get("is_processing"), bool):
            raise ValueError(f'slot {index} is not an object with an integer "id" and a boolean "is_processing"')
        processing += slot["is_processing"]
    return len(body), processing


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_message(response: httpx.Response) -> str:
    """llama-server's `{"error": {"message"}}`, else the start of the body."""
    error = _json_object(response).get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return response.text[:200] or "empty body"


def _transport_failure(error: httpx.TransportError) -> str:
    """The root cause of a failed request, e.g. `[Errno 111] Connection refused` (Trio gathers the
    failed attempts of a connect in an exception group; the first one stands for them)."""
    cause: BaseException = error
    while True:
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        elif cause.__cause__ is not None or cause.__context__ is not None:
            cause = cause.__cause__ or cause.__context__  # type: ignore[assignment]
        else:
            return str(cause) or str(error) or type(error).__name__
