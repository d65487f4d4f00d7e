"""The agent's own status (Paddler's SlotAggregatedStatus): what it reports in every snapshot.

Every change bumps `version` and wakes whoever waits for a change (the link publishes a
snapshot then, and the drain before a reload waits for `slots_processing` to reach 0).
Download progress (`download_*`) is written by `DownloadProgress.publish`, throttled.
An agent that watches a llama-server writes its slots, model and issues from each poll
(`llamacpp_monitor.py`) and sets `llama_server`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import trio

from paddler_trio.protocol import (
    AgentIssue,
    ChatTemplate,
    LlamaServerStatus,
    SlotAggregatedStatusSnapshot,
    StateApplicationStatus,
)


class _Unchanged:
    """Marker for `AgentStatus.update(model_path=..., multimodal_projection_path=..., chat_template_override=...)`:
    keep the current value."""


class AgentStatus:
    def __init__(self, desired_slots_total: int) -> None:
        self.desired_slots_total = desired_slots_total
        self.download_current = 0
        self.download_filename: str | None = None
        self.download_total = 0
        self.issues: frozenset[AgentIssue] = frozenset()
        self.model_path: str | None = None
        # The mmproj file loaded with the model: a status extension, sent only to balancers that
        # offer them (`management_link.py`), so it is not in `snapshot()`.
        self.multimodal_projection_path: str | None = None
        self.slots_processing = 0
        # Requests taken over the links (all balancers'), counted in `slots_processing` too.
        self.requests_in_flight = 0
        self.slots_total = 0
        self.state_application_status = StateApplicationStatus.FRESH
        # The latest desired state's, from the moment it arrives (as Paddler answers
        # GetChatTemplateOverride), whether or not a model is loaded with it yet.
        self.chat_template_override: ChatTemplate | None = None
        # Shutting down: every snapshot reports no slots, so the balancer sends nothing new.
        self.draining = False
        # Set only by an agent that watches a llama-server.
        self.llama_server: LlamaServerStatus | None = None
        self.version = 0
        self._changed = trio.Event()

    def snapshot(self, *, held_elsewhere: int = 0) -> SlotAggregatedStatusSnapshot:
        """What one balancer is told. `held_elsewhere`: the requests in flight for other balancers
        (an agent serving several); they count as slots this balancer cannot have, so that its own
        count of its requests against `slots_total` stays true."""
        return SlotAggregatedStatusSnapshot(
            # A watched llama-server has the slots it was started with (-np): nothing else is desired.
            desired_slots_total=self.slots_total if self.llama_server is not None else self.desired_slots_total,
            download_current=self.download_current,
            download_filename=self.download_filename,
            # Idle (no download) reads as indeterminate too, as in Paddler.
            download_indeterminate=self.download_total == 0,
            download_total=self.download_total,
            issues=self.issues,
            model_path=self.model_path,
            slots_processing=self.slots_processing - held_elsewhere,
            slots_total=0 if self.draining else max(0, self.slots_total - held_elsewhere),
            state_application_status=self.state_application_status,
            uses_chat_template_override=self.chat_template_override is not None,
            version=self.version,
            llama_server=self.llama_server,
        )

    def update(
        self,
        *,
        issues: Iterable[AgentIssue] | None = None,
        model_path: str | None | type[_Unchanged] = _Unchanged,
        multimodal_projection_path: str | None | type[_Unchanged] = _Unchanged,
        slots_total: int | None = None,
        state_application_status: StateApplicationStatus | None = None,
        chat_template_override: ChatTemplate | None | type[_Unchanged] = _Unchanged,
        slots_processing: int | None = None,
        llama_server: LlamaServerStatus | None = None,
        fresh: bool = False,
    ) -> None:
        """Change the given fields at once (one version bump); a field left out keeps its value
        (`model_path=None` clears the model path, `multimodal_projection_path=None` the projector,
        `chat_template_override=None` the override).
        `slots_processing` and `llama_server` are for a watched llama-server: our own requests
        count through `take_slot` and `release_slot`. `fresh`: the version is bumped even when
        nothing changed, because a new poll of llama-server is news in itself (the balancer puts a
        llama-server it took out of rotation back only on a report newer than the failure)."""
        changed = False
        if issues is not None and frozenset(issues) != self.issues:
            self.issues, changed = frozenset(issues), True
        if model_path is not _Unchanged and model_path != self.model_path:
            self.model_path, changed = model_path, True  # type: ignore[assignment]
        if multimodal_projection_path is not _Unchanged and multimodal_projection_path != self.multimodal_projection_path:
            self.multimodal_projection_path, changed = multimodal_projection_path, True  # type: ignore[assignment]
        if slots_total is not None and slots_total != self.slots_total:
            self.slots_total, changed = slots_total, True
        if state_application_status is not None and state_application_status != self.state_application_status:
            self.state_application_status, changed = state_application_status, True
        if chat_template_override is not _Unchanged and chat_template_override != self.chat_template_override:
            self.chat_template_override, changed = chat_template_override, True  # type: ignore[assignment]
        if slots_processing is not None and slots_processing != self.slots_processing:
            self.slots_processing, changed = slots_processing, True
        if llama_server is not None and llama_server != self.llama_server:
            self.llama_server, changed = llama_server, True
        if changed or fresh:
            self._bump()

    def update_download(self, *, filename: str | None, current: int, total: int) -> None:
        """Progress of the model download under way (`filename=None`, 0, 0: none); `total` 0: size unknown."""
        if (filename, current, total) != (self.download_filename, self.download_current, self.download_total):
            self.download_filename, self.download_current, self.download_total = filename, current, total
            self._bump()

    def stop_taking_requests(self) -> None:
        """From now on report no slots (whatever a model load reports later): the agent drains."""
        if not self.draining:
            self.draining = True
            self._bump()

    @property
    def every_slot_taken(self) -> bool:
        """A model is loaded and each of its slots serves a request (from any balancer)."""
        return 0 < self.slots_total <= self.slots_processing

    def take_slot(self) -> None:
        """A request arrived: it counts in `slots_processing` until `release_slot()`."""
        self.slots_processing += 1
        self.requests_in_flight += 1
        self._bump()

    def release_slot(self) -> None:
        self.slots_processing -= 1
        self.requests_in_flight -= 1
        self._bump()

    async def wait_for_change(self, seen_version: int) -> None:
        """Return once `version` differs from `seen_version`."""
        while self.version == seen_version:
            await self._changed.wait()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return as soon as `condition()` holds; callers act on it before their next checkpoint."""
        while not condition():
            await self._changed.wait()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
