"""Desired state -> applicable state, broadcast to every agent (spec 4.3).

On start and after every store in the state database the desired state is converted
(the chat template override is kept only when `use_chat_template_override` is set), kept
as the applicable state, and sent as `SetState` to every connected agent; a newly
registered agent gets it right away. An agent whose queue could not take the message is
retried every second. Agents that watch a llama-server have no desired state: they never
get one. The applicable state also decides the cluster's token generation
mode (embeddings mode disables generation) that the inference socket announces.
"""

from __future__ import annotations

import logging
import math

import trio

from paddler_trio.management.state_database import MemoryStateDatabase
from paddler_trio.proxy.agent_controller import AgentController
from paddler_trio.proxy.agent_pool import AgentPool
from paddler_trio.protocol import AgentDesiredState, AgentKind, BalancerDesiredState, SetStateNotification

_logger = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0


class Reconciliation:
    def __init__(self, state_database: MemoryStateDatabase, pool: AgentPool) -> None:
        self._database = state_database
        self._pool = pool
        self._retry: set[str] = set()
        self._changed = trio.Event()
        self.applicable_state: AgentDesiredState | None = None
        self.version = 0

    @property
    def token_generation_enabled(self) -> bool:
        state = self.applicable_state
        return state is None or not state.inference_parameters.enable_embeddings

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        seen = self._database.version
        self._apply(await self._database.read())
        task_status.started()
        while True:
            with trio.move_on_after(RETRY_INTERVAL if self._retry else math.inf) as waiting:
                seen = await self._database.wait_stored(seen)
            if waiting.cancelled_caught:
                self._resend_failed()
            else:
                self._apply(await self._database.read())

    def _apply(self, desired_state: BalancerDesiredState) -> None:
        self.applicable_state = desired_state.to_agent_desired_state()
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        self._retry.clear()
        for agent in self._pool.agents:
            self.send_state_to(agent)

    def _resend_failed(self) -> None:
        retry, self._retry = self._retry, set()
        for agent_id in retry:
            agent = self._pool.get(agent_id)
            if agent is not None:
                self.send_state_to(agent)

    def send_state_to(self, agent: AgentController) -> None:
        if self.applicable_state is None or agent.kind is not AgentKind.ENGINE:
            return
        try:
            agent.outbox.send_nowait(SetStateNotification(desired_state=self.applicable_state))
        except trio.WouldBlock:
            _logger.warning("agent %s is not reading its messages: SetState retried in %.0f s", agent.id, RETRY_INTERVAL)
            self._retry.add(agent.id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the agent is leaving

    async def wait_changed(self, seen_version: int) -> int:
        while self.version == seen_version:
            await self._changed.wait()
        return self.version
