"""Desired state -> loaded engine: resolve the model, (re)load llama.cpp, report how it went.

One task owns the engine. For every new desired state that needs a reload it first reports
`slots_total = 0` (so the balancer stops dispatching here: Paddler drains while still
advertising its slots, and races new requests), waits until in-flight requests finish,
closes the old engine and opens the new one. A failed load is retried every second with
Paddler's status progression (Fresh -> AttemptedAndRetrying -> Stuck; Applied on success);
its AgentIssues are replaced by the next attempt's, so a successful load clears them.
"""

from __future__ import annotations

import logging

import attrs
import trio

from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.status import AgentStatus
from paddler_trio.engine import engine_errors
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    AgentDesiredState,
    AgentIssue,
    ChatTemplate,
    ChatTemplateDoesNotCompile,
    HuggingFaceModel,
    LocalToAgentModel,
    ModelCannotBeLoaded,
    ModelFileDoesNotExist,
    ModelSource,
    MultimodalProjectionCannotBeLoaded,
    NoModel,
    SlotCannotStart,
    StateApplicationStatus,
    UnableToFindChatTemplate,
    UrlModel,
)

_logger = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0

# Status of the n-th consecutive attempt at one desired state (the last one repeats).
_ATTEMPT_STATUSES = (
    StateApplicationStatus.FRESH,
    StateApplicationStatus.ATTEMPTED_AND_RETRYING,
    StateApplicationStatus.STUCK,
)


@attrs.frozen
class _Plan:
    """What a desired state asks of this agent; equal plans need no reload."""

    settings: EngineSettings | None  # None: no model configured
    chat_template_override: ChatTemplate | None
    projection_issue: AgentIssue | None


class _NotAppliable(Exception):
    """A desired state this agent cannot apply at all (retrying would not help)."""


def _describe(source: ModelSource) -> str:
    if isinstance(source, LocalToAgentModel):
        return source.path
    if isinstance(source, UrlModel):
        return source.url
    if isinstance(source, HuggingFaceModel):
        return f"{source.repo_id}/{source.filename}@{source.revision}"
    return "None"


class Reconciliation:
    def __init__(
        self, status: AgentStatus, engines: EngineHolder, *, slots: int, threads: int | None = None
    ) -> None:
        self._status = status
        self._engines = engines
        self._slots = slots
        self._threads = threads
        self._desired: AgentDesiredState | None = None
        self._desired_version = 0
        self._desired_changed = trio.Event()

    def set_desired_state(self, desired: AgentDesiredState) -> None:
        """Called for every SetState; a repeat of the current state (e.g. after a reconnect) is a no-op."""
        if desired == self._desired:
            return
        self._desired = desired
        self._desired_version += 1
        self._desired_changed.set()
        self._desired_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        handled_version = 0
        while True:
            await self._wait_for_desired_state_after(handled_version)
            handled_version = self._desired_version
            assert self._desired is not None
            desired = self._desired
            self._status.update(
                state_application_status=StateApplicationStatus.FRESH,
                uses_chat_template_override=desired.chat_template_override is not None,
            )
            try:
                plan = self._plan(desired)
            except _NotAppliable as reason:
                _logger.error("cannot apply the desired state: %s", reason)
                self._status.update(
                    issues=(), state_application_status=StateApplicationStatus.ATTEMPTED_AND_NOT_APPLIABLE
                )
                continue
            if plan.settings is None:
                _logger.warning("no model configured in the desired state; waiting for one")
                self._status.update(
                    issues=_optional(plan.projection_issue),
                    model_path=None,
                    slots_total=0,
                    state_application_status=StateApplicationStatus.APPLIED,
                )
                continue
            # Returns once a newer desired state needs another plan; the loop then applies the newest.
            await self._apply(plan, handled_version)

    async def _wait_for_desired_state_after(self, version: int) -> None:
        while self._desired_version == version:
            await self._desired_changed.wait()

    def _plan(self, desired: AgentDesiredState) -> _Plan:
        model = desired.model
        if isinstance(model, (UrlModel, HuggingFaceModel)):
            kind = "Url" if isinstance(model, UrlModel) else "HuggingFace"
            raise _NotAppliable(
                f"{kind} model sources ({_describe(model)}) are not supported by this agent yet; "
                "use a LocalToAgent path"
            )
        projection_issue: AgentIssue | None = None
        if not isinstance(desired.multimodal_projection, NoModel):
            path = _describe(desired.multimodal_projection)
            _logger.error("multimodal projections are not supported by this agent yet; ignoring %s", path)
            projection_issue = MultimodalProjectionCannotBeLoaded(model_path=path)
        override = desired.chat_template_override
        settings = None
        if isinstance(model, LocalToAgentModel):
            settings = EngineSettings(
                model_path=model.path,
                slots=self._slots,
                inference_parameters=desired.inference_parameters,
                chat_template_override=override.content if override is not None else None,
                n_threads=self._threads,
            )
        return _Plan(settings=settings, chat_template_override=override, projection_issue=projection_issue)

    async def _apply(self, plan: _Plan, handled_version: int) -> None:
        """Load `plan`, retrying every second, and serve with it until a desired state that
        needs another plan arrives."""
        settings = plan.settings
        assert settings is not None
        attempt = 0
        last_failure = ""
        while True:
            self._status.update(state_application_status=_ATTEMPT_STATUSES[min(attempt, len(_ATTEMPT_STATUSES) - 1)])
            try:
                async with Engine.open(settings) as engine:
                    _logger.info("model %s loaded with %d slots", settings.model_path, settings.slots)
                    await self._serve(engine, plan, handled_version)
                    return
            except engine_errors.EngineError as error:
                issues = _issues_for_load_failure(error, settings)
                failure = str(error)
            except Exception as error:  # a llama.cpp failure we have no issue for: log it, retry
                _logger.exception("the engine for %s failed", settings.model_path)
                issues, failure = (), repr(error)
            if failure != last_failure:
                _logger.error("cannot apply the desired state: %s (retrying every %.0f s)", failure, RETRY_INTERVAL)
                last_failure = failure
            self._status.update(issues=issues + _optional(plan.projection_issue), model_path=None, slots_total=0)
            with trio.move_on_after(RETRY_INTERVAL):
                await self._wait_for_desired_state_after(handled_version)
            if self._desired_version != handled_version:
                return
            attempt += 1

    async def _serve(self, engine: Engine, plan: _Plan, handled_version: int) -> None:
        settings = engine.settings
        self._engines.publish(engine, plan.chat_template_override)
        try:
            self._status.update(
                issues=_chat_template_issues(engine) + _optional(plan.projection_issue),
                model_path=settings.model_path,
                slots_total=settings.slots,
                state_application_status=StateApplicationStatus.APPLIED,
            )
            while True:
                await self._wait_for_desired_state_after(handled_version)
                handled_version = self._desired_version
                assert self._desired is not None
                try:
                    if self._plan(self._desired) == plan:
                        continue
                except _NotAppliable:
                    pass
                break
            _logger.info(
                "desired state changed: draining %d in-flight requests before unloading", self._status.slots_processing
            )
            # Report no slots first, so the balancer stops dispatching here before the drain.
            self._status.update(slots_total=0)
            await self._status.wait_until(lambda: self._status.slots_processing == 0)
        finally:
            self._engines.withdraw()
            self._status.update(issues=(), model_path=None, slots_total=0)


def _optional(issue: AgentIssue | None) -> tuple[AgentIssue, ...]:
    return (issue,) if issue is not None else ()


def _issues_for_load_failure(error: engine_errors.EngineError, settings: EngineSettings) -> tuple[AgentIssue, ...]:
    if isinstance(error, engine_errors.ModelFileDoesNotExist):
        return (ModelFileDoesNotExist(model_path=error.model_path),)
    if isinstance(error, engine_errors.ModelCannotBeLoaded):
        return (ModelCannotBeLoaded(model_path=error.model_path),)
    if isinstance(error, (engine_errors.ContextCannotBeCreated, engine_errors.InvalidEngineSettings)):
        return tuple(SlotCannotStart(error=str(error), slot_index=index) for index in range(settings.slots))
    return ()


def _chat_template_issues(engine: Engine) -> tuple[AgentIssue, ...]:
    problem = engine.chat_template_problem
    model_path = engine.settings.model_path
    if isinstance(problem, engine_errors.ChatTemplateDoesNotCompile):
        return (
            ChatTemplateDoesNotCompile(
                error=problem.error, model_path=model_path, template_content=problem.template_content
            ),
        )
    if isinstance(problem, engine_errors.UnableToFindChatTemplate) and not engine.embeddings_mode:
        # Paddler skips the chat template in embeddings mode: no generation, nothing to report.
        return (UnableToFindChatTemplate(model_path=model_path),)
    return ()
