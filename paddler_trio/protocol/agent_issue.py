"""Problems an agent reports in its status snapshots (Paddler's ``AgentIssue``).

Wire form (externally tagged): most issues carry a model path,
``{"ModelFileDoesNotExist": {"model_path": "/models/x.gguf"}}``; the others are
``{"ChatTemplateDoesNotCompile": {"error", "model_path": {"model_path"}, "template_content"}}``,
``{"HuggingFaceCannotAcquireLock": {"lock_path", "model_path": {"model_path"}}}`` and
``{"SlotCannotStart": {"error", "slot_index"}}``.

Agents that watch a llama-server (``AgentKind.LLAMA_SERVER``) report the ``LlamaServer*`` issues, ours
(not Paddler's): each names the llama-server (``llamacpp_addr``, as the agent reaches it) and says what
is wrong and what to do in ``description``, a sentence for people.

Issues are hashable and totally ordered like Paddler's derived ``Ord`` (variant, then fields), so a
``frozenset`` of issues serialises as Paddler's sorted ``BTreeSet``.
"""

from __future__ import annotations

from typing import Any, Union, get_args

import attrs


class _OrderedIssue:
    """Orders issues by variant (in Paddler's declaration order), then by field values."""

    __slots__ = ()

    def _sort_key(self) -> tuple[Any, ...]:
        return (_VARIANT_ORDER[type(self)], attrs.astuple(self, recurse=False))  # type: ignore[arg-type]

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, _OrderedIssue):
            return NotImplemented
        return self._sort_key() < other._sort_key()


@attrs.frozen(order=False)
class CacheCannotAcquireLock(_OrderedIssue):
    """The download cache's lock file cannot be taken."""

    model_path: str


@attrs.frozen(order=False)
class CacheDirectoryIsNotWritable(_OrderedIssue):
    """The download cache directory cannot be written."""

    model_path: str


@attrs.frozen(order=False)
class CacheStorageIsFull(_OrderedIssue):
    """No space left for the download."""

    model_path: str


@attrs.frozen(order=False)
class ChatTemplateDoesNotCompile(_OrderedIssue):
    """The model's (or the override's) chat template is not valid Jinja."""

    error: str
    model_path: str
    template_content: str


@attrs.frozen(order=False)
class DownloadInterrupted(_OrderedIssue):
    """The model download stopped halfway."""

    model_path: str


@attrs.frozen(order=False)
class DownloadServerDeniedAccess(_OrderedIssue):
    """The download server answered 401/403."""

    model_path: str


@attrs.frozen(order=False)
class DownloadServerErrored(_OrderedIssue):
    """The download server answered 5xx."""

    model_path: str


@attrs.frozen(order=False)
class DownloadServerIsUnreachable(_OrderedIssue):
    """The download server could not be reached."""

    model_path: str


@attrs.frozen(order=False)
class DownloadServerRejectedRequest(_OrderedIssue):
    """The download server answered another 4xx."""

    model_path: str


@attrs.frozen(order=False)
class DownloadUrlIsMalformed(_OrderedIssue):
    """The model URL does not parse."""

    model_path: str


@attrs.frozen(order=False)
class HuggingFaceCannotAcquireLock(_OrderedIssue):
    """Another process holds the Hugging Face cache lock."""

    lock_path: str
    model_path: str


@attrs.frozen(order=False)
class HuggingFaceModelDoesNotExist(_OrderedIssue):
    """No such repository, revision or file on Hugging Face."""

    model_path: str


@attrs.frozen(order=False)
class HuggingFacePermissions(_OrderedIssue):
    """The Hugging Face repository is gated or private."""

    model_path: str


@attrs.frozen(order=False)
class ModelCacheIsCorrupted(_OrderedIssue):
    """A cached model file is damaged."""

    model_path: str


@attrs.frozen(order=False)
class ModelCannotBeLoaded(_OrderedIssue):
    """llama.cpp refused the model file."""

    model_path: str


@attrs.frozen(order=False)
class ModelDoesNotExistAtUrl(_OrderedIssue):
    """The model URL answered 404."""

    model_path: str


@attrs.frozen(order=False)
class ModelFileDoesNotExist(_OrderedIssue):
    """A ``LocalToAgent`` path that does not exist."""

    model_path: str


@attrs.frozen(order=False)
class MultimodalProjectionCannotBeLoaded(_OrderedIssue):
    """llama.cpp refused the multimodal projection file."""

    model_path: str


@attrs.frozen(order=False)
class SlotCannotStart(_OrderedIssue):
    """A slot (sequence) could not be set up, e.g. more slots than the context allows."""

    error: str
    slot_index: int


@attrs.frozen(order=False)
class UnableToFindChatTemplate(_OrderedIssue):
    """The model has no chat template and no override is set."""

    model_path: str


@attrs.frozen(order=False)
class LlamaServerIsUnreachable(_OrderedIssue):
    """No answer from llama-server: connection refused, timeout, connection cut."""

    description: str
    llamacpp_addr: str


@attrs.frozen(order=False)
class LlamaServerRefusedApiKey(_OrderedIssue):
    """llama-server answered 401: the agent's ``--llamacpp-api-key`` is missing or wrong."""

    description: str
    llamacpp_addr: str


@attrs.frozen(order=False)
class LlamaServerSlotsEndpointIsDisabled(_OrderedIssue):
    """llama-server answered ``/slots`` with 501: it runs with ``--no-slots``."""

    description: str
    llamacpp_addr: str


@attrs.frozen(order=False)
class LlamaServerIsLoadingModel(_OrderedIssue):
    """llama-server answered 503: its model is still loading."""

    description: str
    llamacpp_addr: str


@attrs.frozen(order=False)
class LlamaServerAnsweredUnexpectedly(_OrderedIssue):
    """Any other status, or a ``/slots`` body that is not a list of slots."""

    description: str
    llamacpp_addr: str


@attrs.frozen(order=False)
class LlamaServerAgentReportedError(_OrderedIssue):
    """A Paddler 1.x or Rower agent reported an error that does not say which of the above it is."""

    description: str
    llamacpp_addr: str


AgentIssue = Union[
    CacheCannotAcquireLock,
    CacheDirectoryIsNotWritable,
    CacheStorageIsFull,
    ChatTemplateDoesNotCompile,
    DownloadInterrupted,
    DownloadServerDeniedAccess,
    DownloadServerErrored,
    DownloadServerIsUnreachable,
    DownloadServerRejectedRequest,
    DownloadUrlIsMalformed,
    HuggingFaceCannotAcquireLock,
    HuggingFaceModelDoesNotExist,
    HuggingFacePermissions,
    ModelCacheIsCorrupted,
    ModelCannotBeLoaded,
    ModelDoesNotExistAtUrl,
    ModelFileDoesNotExist,
    MultimodalProjectionCannotBeLoaded,
    SlotCannotStart,
    UnableToFindChatTemplate,
    LlamaServerIsUnreachable,
    LlamaServerRefusedApiKey,
    LlamaServerSlotsEndpointIsDisabled,
    LlamaServerIsLoadingModel,
    LlamaServerAnsweredUnexpectedly,
    LlamaServerAgentReportedError,
]

_VARIANT_ORDER: dict[type, int] = {variant: index for index, variant in enumerate(get_args(AgentIssue))}
