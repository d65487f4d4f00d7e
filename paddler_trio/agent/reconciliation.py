"""Desired state -> loaded engine: resolve the model, (re)load llama.cpp, report how it went.

One task owns the engine. For every new desired state it first resolves the model source and
the multimodal projection's (mmproj) to local files (downloading them if needed) while the
current engine keeps serving; a newer desired state cancels a resolution under way (a partial
URL download is resumed later).
If the resolved plan (model file, mmproj file, engine-relevant inference parameters, chat
template override) equals the loaded one, nothing is reloaded. Otherwise it reports
`slots_total = 0` (so the balancer stops dispatching here before the drain: Paddler
drains while still advertising its slots, and races new requests), waits until in-flight
requests finish, closes the old engine and opens the new one; a request that slipped in
after the drain waits for the new engine (`EngineHolder`).

Failures (resolution or load) are retried every second with Paddler's status progression
(Fresh -> AttemptedAndRetrying -> Stuck; Applied on success); those retrying cannot fix
end as AttemptedAndNotAppliable until the next desired state (an mmproj that llama.cpp
refuses, e.g. one made for a model of another width, is one of those). Each attempt's
AgentIssues replace the previous ones, so a success clears them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import attrs
import trio

from paddler_trio.agent.download_progress import DownloadProgress
from paddler_trio.agent.engine_holder import EngineHolder
from paddler_trio.agent.model_source_unavailable import ModelSourceUnavailable
from paddler_trio.agent.model_sources import describe_model_source, resolve_model_source
from paddler_trio.agent.status import AgentStatus
from paddler_trio.engine import engine_errors
from paddler_trio.engine.engine import Engine, EngineSettings
from paddler_trio.protocol import (
    AgentDesiredState,
    AgentIssue,
    ChatTemplate,
    ChatTemplateDoesNotCompile,
    InferenceParameters,
    ModelCannotBeLoaded,
    ModelFileDoesNotExist,
    ModelSource,
    MultimodalProjectionCannotBeLoaded,
    NoModel,
    SlotCannotStart,
    StateApplicationStatus,
    UnableToFindChatTemplate,
)

_logger = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0

# Status of the n-th consecutive attempt at one desired state (the last one repeats).
_ATTEMPT_STATUSES = (
    StateApplicationStatus.FRESH,
    StateApplicationStatus.ATTEMPTED_AND_RETRYING,
    StateApplicationStatus.STUCK,
)

T = TypeVar("T")


@attrs.frozen
class _Plan:
    """What a desired state asks of this agent; equal plans need no reload."""

    settings: EngineSettings | None  # None: no model configured
    chat_template_override: ChatTemplate | None
    # Applied to a running engine without a reload (`Engine.image_resize_to_fit`).
    image_resize_to_fit: int = attrs.field(eq=False)


@attrs.define(eq=False)
class _Loaded:
    """An engine being served, owned by its own task (`_own_engine`)."""

    plan: _Plan
    engine: Engine
    issues: tuple[AgentIssue, ...]
    unload: trio.Event = attrs.field(factory=trio.Event)  # set: close the engine
    closed: trio.Event = attrs.field(factory=trio.Event)


class _Superseded(Exception):
    """A newer desired state arrived: drop the current one."""


def _engine_relevant(parameters: InferenceParameters) -> InferenceParameters:
    """The parameters with the ones a loaded engine does not depend on reset, so changing them
    never reloads: `embedding_batch_size` is the balancer's fan-out cap, `image_resize_to_fit` is
    set on the running engine (`_Plan.image_resize_to_fit`)."""
    defaults = InferenceParameters()
    return attrs.evolve(
        parameters,
        embedding_batch_size=defaults.embedding_batch_size,
        image_resize_to_fit=defaults.image_resize_to_fit,
    )


class Reconciliation:
    def __init__(
        self,
        status: AgentStatus,
        engines: EngineHolder,
        *,
        slots: int,
        threads: int | None = None,
        allow_amx: bool = False,
        cache_ram_mib: int = 0,
        agent_name: str | None = None,
    ) -> None:
        self._status = status
        self._agent_name = agent_name
        self._engines = engines
        self._slots = slots
        self._threads = threads
        self._allow_amx = allow_amx
        self._cache_ram_mib = cache_ram_mib
        self._progress = DownloadProgress()
        self._desired: AgentDesiredState | None = None
        self._desired_version = 0
        self._desired_changed = trio.Event()
        # Cancelled by a newer desired state: the resolution or load under way is for an old one.
        self._superseding: trio.CancelScope | None = None

    def set_desired_state(self, desired: AgentDesiredState) -> None:
        """Called for every SetState; a repeat of the current state (e.g. after a reconnect) is a no-op."""
        if desired == self._desired:
            return
        self._desired = desired
        self._desired_state_changed()

    def _desired_state_changed(self) -> None:
        self._desired_version += 1
        self._desired_changed.set()
        self._desired_changed = trio.Event()
        if self._superseding is not None:
            self._superseding.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self._progress.publish, self._status)
            task_status.started()
            await self._reconcile(nursery)

    async def _reconcile(self, engine_nursery: trio.Nursery) -> None:
        loaded: _Loaded | None = None
        handled = 0
        while True:
            await self._wait_for_desired_state_after(handled)
            handled = self._desired_version
            assert self._desired is not None
            desired = self._desired
            if loaded is not None and loaded.closed.is_set():
                loaded = None  # its engine failed (and asked for this new attempt)
            self._status.update(
                # The previous desired state's problems go with it; the loaded engine's stay.
                issues=loaded.issues if loaded is not None else (),
                state_application_status=StateApplicationStatus.FRESH,
                chat_template_override=desired.chat_template_override,
            )
            try:
                plan = await self._retrying(handled, functools.partial(self._plan, desired))
                if loaded is not None and loaded.plan == plan:
                    _logger.info("desired state changed, but nothing this agent loads did: no reload")
                    loaded.engine.image_resize_to_fit = plan.image_resize_to_fit
                    self._report_serving(loaded)
                    continue
                if loaded is not None:
                    await self._unload(loaded)
                    loaded = None
                if plan.settings is None:
                    _logger.warning("no model configured in the desired state; waiting for one")
                    self._engines.end_swap()
                    self._status.update(
                        issues=(),
                        model_path=None,
                        multimodal_projection_path=None,
                        slots_total=0,
                        state_application_status=StateApplicationStatus.APPLIED,
                    )
                    continue
                self._engines.begin_swap()
                loaded = await self._retrying(handled, functools.partial(engine_nursery.start, self._own_engine, plan))
                self._report_serving(loaded)
            except _Superseded:
                self._engines.end_swap()

    async def _wait_for_desired_state_after(self, version: int) -> None:
        while self._desired_version == version:
            await self._desired_changed.wait()

    async def _retrying(self, handled: int, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """`attempt_once()`, again every second while it fails with `ModelSourceUnavailable` or an
        engine error, until it succeeds; `_Superseded` as soon as a newer desired state arrives."""
        attempt = 0
        last_failure = ""
        while True:
            self._status.update(state_application_status=_ATTEMPT_STATUSES[min(attempt, len(_ATTEMPT_STATUSES) - 1)])
            retry = True
            try:
                return await self._unless_superseded(handled, attempt_once)
            except _Superseded:
                raise
            except ModelSourceUnavailable as problem:
                issues, failure, retry = (problem.issue,), str(problem), problem.retry
            except engine_errors.EngineError as error:
                issues, failure = _issues_for_load_failure(error, self._slots), str(error)
                # llama.cpp refuses the same mmproj file for the same model every time.
                retry = not isinstance(error, engine_errors.MultimodalProjectionCannotBeLoaded)
            except Exception as error:  # a llama.cpp failure we have no issue for: log it, retry
                _logger.exception("applying the desired state failed")
                issues, failure = (), repr(error)
            self._engines.end_swap()  # requests waiting for an engine get their answer now
            if failure != last_failure:
                _logger.error(
                    "cannot apply the desired state: %s%s",
                    failure,
                    f" (retrying every {RETRY_INTERVAL:g} s)" if retry else " (not retried)",
                )
                last_failure = failure
            self._status.update(issues=issues)
            if not retry:
                self._status.update(state_application_status=StateApplicationStatus.ATTEMPTED_AND_NOT_APPLIABLE)
                await self._wait_for_desired_state_after(handled)
                raise _Superseded()
            with trio.move_on_after(RETRY_INTERVAL):
                await self._wait_for_desired_state_after(handled)
            if self._desired_version != handled:
                raise _Superseded()
            attempt += 1

    async def _unless_superseded(self, handled: int, work: Callable[[], Awaitable[T]]) -> T:
        with trio.CancelScope() as scope:
            self._superseding = scope
            if self._desired_version != handled:
                scope.cancel()
            try:
                return await work()
            finally:
                self._superseding = None
        raise _Superseded()

    async def _resolve_projection(self, source: ModelSource) -> str | None:
        """The mmproj's local path (None for "None"); a missing local file is reported as Paddler
        does for a projection, `MultimodalProjectionCannotBeLoaded`."""
        try:
            return await resolve_model_source(source, self._progress)
        except ModelSourceUnavailable as problem:
            if isinstance(problem.issue, ModelFileDoesNotExist):
                path = describe_model_source(source)
                raise ModelSourceUnavailable(
                    MultimodalProjectionCannotBeLoaded(model_path=path), f"multimodal projection file {path} does not exist"
                ) from problem
            raise

    async def _plan(self, desired: AgentDesiredState) -> _Plan:
        model_path = await resolve_model_source(desired.model, self._progress)
        override = desired.chat_template_override
        settings = None
        if model_path is None and not isinstance(desired.multimodal_projection, NoModel):
            _logger.warning("a multimodal projection but no model in the desired state: the projection waits for a model")
        if model_path is not None:
            projection_path = await self._resolve_projection(desired.multimodal_projection)
            settings = EngineSettings(
                model_path=model_path,
                slots=self._slots,
                inference_parameters=_engine_relevant(desired.inference_parameters),
                chat_template_override=override.content if override is not None else None,
                n_threads=self._threads,
                allow_amx=self._allow_amx,
                cache_ram_mib=self._cache_ram_mib,
                agent_name=self._agent_name,
                multimodal_projection_path=projection_path,
            )
        return _Plan(
            settings=settings,
            chat_template_override=override,
            image_resize_to_fit=desired.inference_parameters.image_resize_to_fit,
        )

    async def _own_engine(self, plan: _Plan, *, task_status: trio.TaskStatus[_Loaded]) -> None:
        """Open the engine of `plan` and serve with it until `unload` is set; a failure to open
        it is raised to the `nursery.start` caller, a failure after that is logged and
        answered with a new attempt at the desired state."""
        settings = plan.settings
        assert settings is not None
        loaded: _Loaded | None = None
        try:
            async with Engine.open(settings) as engine:
                _logger.info("model %s loaded with %d slots", settings.model_path, settings.slots)
                engine.image_resize_to_fit = plan.image_resize_to_fit
                loaded = _Loaded(plan=plan, engine=engine, issues=_chat_template_issues(engine))
                self._engines.publish(engine)
                task_status.started(loaded)
                await loaded.unload.wait()
        except Exception:
            if loaded is None:
                raise
            _logger.exception("the engine of %s failed; loading it again", settings.model_path)
            self._engines.withdraw()
            self._status.update(issues=(), model_path=None, multimodal_projection_path=None, slots_total=0)
            self._desired_state_changed()  # the same desired state, applied again
        finally:
            if loaded is not None:
                loaded.closed.set()

    def _report_serving(self, loaded: _Loaded) -> None:
        assert loaded.plan.settings is not None
        self._status.update(
            issues=loaded.issues,
            model_path=loaded.plan.settings.model_path,
            multimodal_projection_path=loaded.plan.settings.multimodal_projection_path,
            slots_total=loaded.plan.settings.slots,
            state_application_status=StateApplicationStatus.APPLIED,
        )

    async def _unload(self, loaded: _Loaded) -> None:
        """Report no slots, let in-flight requests finish, close the engine."""
        settings = loaded.plan.settings
        assert settings is not None
        _logger.info(
            "desired state changed: draining %d in-flight requests before unloading", self._status.slots_processing
        )
        self._engines.begin_swap()
        # Report no slots first, so the balancer stops dispatching here before the drain.
        self._status.update(slots_total=0)
        await self._status.wait_until(lambda: self._status.slots_processing == 0)
        _logger.info("drained: unloading %s", settings.model_path)
        self._engines.withdraw()
        self._status.update(issues=(), model_path=None, multimodal_projection_path=None)
        loaded.unload.set()
        await loaded.closed.wait()


def _issues_for_load_failure(error: engine_errors.EngineError, slots: int) -> tuple[AgentIssue, ...]:
    if isinstance(error, engine_errors.ModelFileDoesNotExist):
        return (ModelFileDoesNotExist(model_path=error.model_path),)
    if isinstance(error, engine_errors.ModelCannotBeLoaded):
        return (ModelCannotBeLoaded(model_path=error.model_path),)
    if isinstance(error, engine_errors.MultimodalProjectionCannotBeLoaded):
        return (MultimodalProjectionCannotBeLoaded(model_path=error.model_path),)
    if isinstance(error, (engine_errors.ContextCannotBeCreated, engine_errors.InvalidEngineSettings)):
        return tuple(SlotCannotStart(error=str(error), slot_index=index) for index in range(slots))
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
