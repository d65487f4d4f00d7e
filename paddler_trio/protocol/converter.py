"""The one cattrs converter: protocol values to Paddler's exact JSON and back.

Conventions it implements (serde's, as Paddler uses them):

* Externally tagged enums: a unit variant is the bare string ``"Variant"``, a newtype variant is
  ``{"Variant": <inner value>}``, a struct variant is ``{"Variant": {fields}}``. Every tagged class
  serialises to its own tagged form, so ``to_json(ContentToken("Hi"))`` is ``{"ContentToken":"Hi"}``.
  Message-level classes carry every tag they need: ``to_json(StopRespondingToNotification("r"))`` is
  ``{"Notification":{"StopRespondingTo":"r"}}`` and an envelope is ``{"Response":{...}}``: a whole frame.
* Payload layers: in an envelope, a request payload gets its request tag
  (``{"ContinueFromRawPrompt": {...}}``) and a generation or embedding result gets
  ``{"GeneratedToken": ...}`` / ``{"Embedding": ...}`` around its own tagged form.
* Internally tagged unions (content parts, grammars, tools): ``{"type": "<tag>", ...fields}``.
* Every struct rejects unknown and missing required fields; fields with a default may be omitted.
  ``InferenceParameters`` requires every field, as Paddler does. Types are strict: a string is never
  an integer, a boolean is never a number; an integer is accepted where a float is expected.
* Output includes every field (None as null) except the optional keys Paddler omits: a tool's absent
  ``parameters`` and schema keywords, and our additive per-request sampling overrides, message
  tool-call keys and status fields.

Every decoding failure raises ``WireFormatError`` with a sentence naming the field and its JSON path.
"""

from __future__ import annotations

import json
import operator
import types
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar, Union, get_args, get_origin

import attrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from paddler_trio.protocol.agent_controller_snapshot import AgentControllerSnapshot
from paddler_trio.protocol.agent_issue import AgentIssue, ChatTemplateDoesNotCompile, HuggingFaceCannotAcquireLock
from paddler_trio.protocol.agent_kind import AgentKind, LegacyStatusStream
from paddler_trio.protocol.agent_socket_messages import (
    AgentBoundMessage,
    AgentRequest,
    AgentResponse,
    BalancerBoundMessage,
    ChatTemplateOverrideResponse,
    DeregisterAgentNotification,
    GetChatTemplateOverrideRequest,
    GetModelMetadataRequest,
    ModelMetadataResponse,
    RegisterAgentNotification,
    SetStateNotification,
    UpdateAgentStatusNotification,
    VersionNotification,
)
from paddler_trio.protocol.cache_dtype import CacheDtype
from paddler_trio.protocol.continue_from_conversation_history_params import ContinueFromConversationHistoryParams
from paddler_trio.protocol.continue_from_raw_prompt_params import ContinueFromRawPromptParams
from paddler_trio.protocol.conversation_message import (
    ContentPart,
    ConversationMessage,
    ImageUrlPart,
    MessageToolCall,
    TextPart,
)
from paddler_trio.protocol.embedding_result import (
    DocumentExceedsBatchSize,
    EmbeddingDone,
    EmbeddingError,
    EmbeddingProduced,
    EmbeddingRejectedDueToActiveTokenGeneration,
    EmbeddingResult,
    EmbeddingsDisabled,
    NoEmbeddingsProduced,
)
from paddler_trio.protocol.envelopes import ErrorEnvelope, RequestEnvelope, ResponseEnvelope
from paddler_trio.protocol.generate_embedding_batch_params import GenerateEmbeddingBatchParams
from paddler_trio.protocol.generated_token_result import (
    ContentToken,
    GeneratedTokenResult,
    GenerationDone,
    ImageExceedsBatchSize,
    InvalidJsonArguments,
    ReasoningToken,
    ToolCallArguments,
    ToolCallToken,
    UndeterminableToken,
    UnrecognizedToolCallFormat,
    ValidJsonArguments,
)
from paddler_trio.protocol.grammar_constraint import GbnfGrammar, GrammarConstraint, JsonSchemaGrammar
from paddler_trio.protocol.inference_parameters import InferenceParameters
from paddler_trio.protocol.inference_socket_messages import (
    InferenceClientBoundMessage,
    InferenceRequest,
    InferenceResponse,
    InferenceServerBoundMessage,
    TokenGenerationDisabledNotification,
    TokenGenerationEnabledNotification,
)
from paddler_trio.protocol.model_metadata import ModelMetadata
from paddler_trio.protocol.model_source import HuggingFaceModel, LocalToAgentModel, ModelSource, NoModel, UrlModel
from paddler_trio.protocol.normalization_method import (
    L2Normalization,
    NoNormalization,
    NormalizationMethod,
    RmsNormNormalization,
)
from paddler_trio.protocol.pooling_type import PoolingType
from paddler_trio.protocol.request_extensions import MESSAGE_EXTENSION_FIELDS, SAMPLING_OVERRIDE_FIELDS
from paddler_trio.protocol.slot_aggregated_status_snapshot import SlotAggregatedStatusSnapshot
from paddler_trio.protocol.state_application_status import StateApplicationStatus
from paddler_trio.protocol.status_extensions import STATUS_EXTENSION_FIELDS
from paddler_trio.protocol.stop_responding_to_notification import StopRespondingToNotification
from paddler_trio.protocol.tool import FunctionDefinition, FunctionTool, ParametersSchema
from paddler_trio.protocol.wire_format_error import WireFormatError

T = TypeVar("T")

_UNIT = "unit"
_NEWTYPE = "newtype"
_STRUCT = "struct"

# Every externally tagged class: its tag path (outermost first) and the shape of its payload.
_EXTERNAL_TAGS: dict[type, tuple[tuple[str, ...], str]] = {
    **{cls: ((cls.__name__,), _NEWTYPE) for cls in get_args(GeneratedTokenResult)},
    GenerationDone: (("Done",), _STRUCT),
    ImageExceedsBatchSize: (("ImageExceedsBatchSize",), _STRUCT),
    UnrecognizedToolCallFormat: (("UnrecognizedToolCallFormat",), _STRUCT),
    ValidJsonArguments: (("ValidJson",), _NEWTYPE),
    InvalidJsonArguments: (("InvalidJson",), _NEWTYPE),
    EmbeddingProduced: (("Embedding",), _NEWTYPE),
    DocumentExceedsBatchSize: (("DocumentExceedsBatchSize",), _STRUCT),
    EmbeddingDone: (("Done",), _UNIT),
    EmbeddingsDisabled: (("EmbeddingsDisabled",), _UNIT),
    EmbeddingError: (("Error",), _NEWTYPE),
    EmbeddingRejectedDueToActiveTokenGeneration: (("EmbeddingRejectedDueToActiveTokenGeneration",), _UNIT),
    NoEmbeddingsProduced: (("NoEmbeddingsProduced",), _UNIT),
    NoNormalization: (("None",), _UNIT),
    L2Normalization: (("L2",), _UNIT),
    RmsNormNormalization: (("RmsNorm",), _STRUCT),
    NoModel: (("None",), _UNIT),
    HuggingFaceModel: (("HuggingFace",), _STRUCT),
    UrlModel: (("Url",), _STRUCT),
    LocalToAgentModel: (("LocalToAgent",), _NEWTYPE),
    **{cls: ((cls.__name__,), _STRUCT) for cls in get_args(AgentIssue)},
    GetChatTemplateOverrideRequest: (("GetChatTemplateOverride",), _UNIT),
    GetModelMetadataRequest: (("GetModelMetadata",), _UNIT),
    ChatTemplateOverrideResponse: (("ChatTemplateOverride",), _NEWTYPE),
    ModelMetadataResponse: (("ModelMetadata",), _NEWTYPE),
    RequestEnvelope: (("Request",), _STRUCT),
    ResponseEnvelope: (("Response",), _STRUCT),
    ErrorEnvelope: (("Error",), _STRUCT),
    StopRespondingToNotification: (("Notification", "StopRespondingTo"), _NEWTYPE),
    TokenGenerationDisabledNotification: (("Notification", "TokenGenerationDisabled"), _UNIT),
    TokenGenerationEnabledNotification: (("Notification", "TokenGenerationEnabled"), _UNIT),
    VersionNotification: (("Notification", "Version"), _STRUCT),
    SetStateNotification: (("Notification", "SetState"), _STRUCT),
    RegisterAgentNotification: (("Notification", "RegisterAgent"), _STRUCT),
    UpdateAgentStatusNotification: (("Notification", "UpdateAgentStatus"), _STRUCT),
    DeregisterAgentNotification: (("Notification", "DeregisterAgent"), _UNIT),
}

# Internally tagged classes: the value of their "type" key.
_INTERNAL_TAGS: dict[type, str] = {
    TextPart: "text",
    ImageUrlPart: "image_url",
    GbnfGrammar: "gbnf",
    JsonSchemaGrammar: "json_schema",
    FunctionTool: "function",
    MessageToolCall: "function",
}

# Request payloads that are plain structs on their own and get this tag inside a RequestEnvelope.
_REQUEST_TAGS: dict[type, str] = {
    ContinueFromConversationHistoryParams: "ContinueFromConversationHistory",
    ContinueFromRawPromptParams: "ContinueFromRawPrompt",
    GenerateEmbeddingBatchParams: "GenerateEmbeddingBatch",
}

# Response payloads wrapped in one more tag inside a ResponseEnvelope, and that layer's union name.
_RESPONSE_LAYERS: dict[type, tuple[str, str]] = {
    **{cls: ("GeneratedToken", "GeneratedTokenResult") for cls in get_args(GeneratedTokenResult)},
    **{cls: ("Embedding", "EmbeddingResult") for cls in get_args(EmbeddingResult)},
}

_UNION_NAMES: dict[Any, str] = {
    GeneratedTokenResult: "GeneratedTokenResult",
    ToolCallArguments: "ToolCallArguments",
    EmbeddingResult: "EmbeddingResult",
    NormalizationMethod: "NormalizationMethod",
    ModelSource: "ModelSource",
    AgentIssue: "AgentIssue",
    ContentPart: "ContentPart",
    GrammarConstraint: "GrammarConstraint",
    InferenceRequest: "InferenceRequest",
    InferenceResponse: "InferenceResponse",
    AgentRequest: "AgentRequest",
    AgentResponse: "AgentResponse",
    InferenceServerBoundMessage: "InferenceServerBoundMessage",
    InferenceClientBoundMessage: "InferenceClientBoundMessage",
    AgentBoundMessage: "AgentBoundMessage",
    BalancerBoundMessage: "BalancerBoundMessage",
}

# Optional keys left out of the JSON when None.
_OMITTED_WHEN_NONE: dict[type, tuple[str, ...]] = {
    ParametersSchema: ("properties", "required", "additionalProperties"),
    FunctionDefinition: ("parameters",),
    ContinueFromConversationHistoryParams: SAMPLING_OVERRIDE_FIELDS,
    ContinueFromRawPromptParams: SAMPLING_OVERRIDE_FIELDS,
    ConversationMessage: MESSAGE_EXTENSION_FIELDS,
    # Ours, left out of the JSON when None: the prompt state cache (`status_extensions.py`) and,
    # for agents that watch a llama-server, its status; Paddler's agents and clients never see them.
    SlotAggregatedStatusSnapshot: (*STATUS_EXTENSION_FIELDS, "llama_server"),
    AgentControllerSnapshot: (*STATUS_EXTENSION_FIELDS, "llama_server", "legacy_status_stream"),
}

# Structs whose every field is required on the wire even though the Python class has defaults.
_ALL_FIELDS_REQUIRED: frozenset[type] = frozenset({InferenceParameters})

_ENUMS: tuple[type, ...] = (PoolingType, CacheDtype, StateApplicationStatus, AgentKind, LegacyStatusStream)

_ISSUES_WITH_NESTED_MODEL_PATH: frozenset[type] = frozenset({ChatTemplateDoesNotCompile, HuggingFaceCannotAcquireLock})

_PRIMITIVES: tuple[type, ...] = (str, int, float, bool)

_converter = make_converter(forbid_extra_keys=True, detailed_validation=True)
_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_encode_string: Callable[[str], str] = json.encoder.encode_basestring

# Token results written by to_json's fast path.
_TOKEN_TAGS: dict[type, str] = {
    cls: cls.__name__ for cls in (ContentToken, ReasoningToken, ToolCallToken, UndeterminableToken)
}


class _DecodeError(Exception):
    """Problems found while structuring: (path relative to the value structured, description)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__(problems)
        self.problems = problems


def _fail(description: str) -> NoReturn:
    raise _DecodeError([("", description)])


def _kind(value: Any) -> str:
    """The JSON kind of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a Python {type(value).__name__}"


def _quoted(names: Any) -> str:
    return ", ".join(f'"{name}"' for name in names)


def _problems(exc: BaseException, path: str) -> list[tuple[str, str]]:
    """Flatten a structuring failure (ours or cattrs' exception groups) into (JSON path, description)."""
    if isinstance(exc, _DecodeError):
        return [(path + relative, description) for relative, description in exc.problems]
    if isinstance(exc, ClassValidationError):
        owner = exc.cl.__name__
        found: list[tuple[str, str]] = []
        with_notes, without_notes = exc.group_exceptions()
        missing = [note.name for sub, note in with_notes if isinstance(sub, KeyError)]
        if missing:
            found.append((path, _missing_fields(missing, owner)))
        for sub, note in with_notes:
            if isinstance(sub, KeyError):
                continue
            field_path = f"{path}.{note.name}"
            for sub_path, description in _problems(sub, field_path):
                if sub_path == field_path and description.startswith("expected"):
                    description = f'invalid value for field "{note.name}" in {owner}: {description}'
                found.append((sub_path, description))
        for sub in without_notes:
            if isinstance(sub, ForbiddenExtraKeysError):
                found.append((path, _unknown_fields(sorted(sub.extra_fields), owner)))
            else:
                found.extend(_problems(sub, path))
        return found
    if isinstance(exc, IterableValidationError):
        items, rest = exc.group_exceptions()
        return [problem for sub, note in items for problem in _problems(sub, f"{path}[{note.index}]")] + [
            problem for sub in rest for problem in _problems(sub, path)
        ]
    if isinstance(exc, RecursionError):
        return [(path, "value nested too deeply")]
    return [(path, f"invalid value ({exc})")]


def _missing_fields(names: list[str], owner: str) -> str:
    noun = "field" if len(names) == 1 else "fields"
    return f"missing {noun} {_quoted(names)} in {owner}"


def _unknown_fields(names: list[str], owner: str) -> str:
    noun = "field" if len(names) == 1 else "fields"
    return f"unknown {noun} {_quoted(names)} in {owner}"


def _message(problems: list[tuple[str, str]]) -> str:
    return "; ".join(description if not path else f"{description} (at ${path})" for path, description in problems)


def _string_at(value: Any, segment: str) -> str:
    """``value`` if it is a string, else a problem at the nested path ``segment``."""
    if type(value) is str:
        return value
    raise _DecodeError([(segment, f"expected a string, got {_kind(value)}")])


def _hook(cls: Any) -> Callable[[Any], Any]:
    """A one-argument structure function for a type, from the converter's hooks."""
    hook = _converter.get_structure_hook(cls)
    return lambda value: hook(value, cls)


def _check_keys(value: Any, owner: str, names: frozenset[str]) -> None:
    """Fail unless ``value`` is an object with exactly these keys."""
    if type(value) is not dict:
        _fail(f"expected an object for {owner}, got {_kind(value)}")
    if value.keys() == names:
        return
    missing = [name for name in sorted(names) if name not in value]
    problems = [("", _missing_fields(missing, owner))] if missing else []
    extra = [name for name in value if name not in names]
    if extra:
        problems.append(("", _unknown_fields(extra, owner)))
    raise _DecodeError(problems)


# --- primitives and containers ---------------------------------------------------------------


def _structure_str(value: Any, _: Any) -> str:
    if type(value) is str:
        return value
    _fail(f"expected a string, got {_kind(value)}")


def _structure_int(value: Any, _: Any) -> int:
    if type(value) is int:
        return value
    _fail(f"expected an integer, got {_kind(value)}")


def _structure_float(value: Any, _: Any) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    _fail(f"expected a number, got {_kind(value)}")


def _structure_bool(value: Any, _: Any) -> bool:
    if type(value) is bool:
        return value
    _fail(f"expected a boolean, got {_kind(value)}")


def _structure_any(value: Any, _: Any) -> Any:
    return value


def _enum_structure_hook(enum_type: type) -> Callable[[Any, Any], Any]:
    members = {member.value: member for member in enum_type}  # type: ignore[attr-defined]

    def structure(value: Any, _: Any) -> Any:
        if type(value) is str and value in members:
            return members[value]
        _fail(f"expected one of {_quoted(members)} for {enum_type.__name__}, got {json.dumps(value)[:80]}")

    return structure


def _is_collection(container: type) -> Callable[[Any], bool]:
    return lambda cls: get_origin(cls) is container


def _collection_structure_hook(cls: Any) -> Callable[[Any, Any], Any]:
    """Tuples and frozensets come from JSON arrays only (never from a string or an object)."""
    container = get_origin(cls)
    item_type = get_args(cls)[0]
    read_item = _hook(item_type)

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not list and type(value) is not tuple:
            _fail(f"expected an array, got {_kind(value)}")
        items = []
        problems: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            try:
                items.append(read_item(item))
            except Exception as exc:
                problems.extend(_problems(exc, f"[{index}]"))
        if problems:
            raise _DecodeError(problems)
        return container(items)

    return structure


def _is_string_mapping(cls: Any) -> bool:
    return get_origin(cls) in (dict, Mapping) and get_args(cls)[:1] == (str,)


def _mapping_structure_hook(cls: Any) -> Callable[[Any, Any], Any]:
    read_value = _hook(get_args(cls)[1])

    def structure(value: Any, _: Any) -> dict[str, Any]:
        if type(value) is not dict:
            _fail(f"expected an object, got {_kind(value)}")
        result: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for key, item in value.items():
            if type(key) is not str:
                problems.append(("", f"expected string keys, got {_kind(key)}"))
                continue
            try:
                result[key] = read_value(item)
            except Exception as exc:
                problems.extend(_problems(exc, f"[{json.dumps(key)}]"))
        if problems:
            raise _DecodeError(problems)
        return result

    return structure


def _sequence_unstructure_hook(cls: Any) -> Callable[[Any], list[Any]]:
    """Arrays out: copied as is for primitive items, item by item otherwise; sets sorted, as BTreeSet is."""
    item_type = get_args(cls)[0] if get_args(cls) else Any
    ordered = sorted if get_origin(cls) is frozenset else list
    if item_type in _PRIMITIVES:
        return ordered
    unstructure = _converter.unstructure
    return lambda value: [unstructure(item) for item in ordered(value)]


# --- plain structs ----------------------------------------------------------------------------


def _plain_reader(cls: type) -> Callable[[Any], Any]:
    """Structure a struct's own object form: unknown and missing fields rejected, types strict."""
    generated: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, _converter)
    owner = cls.__name__
    required = frozenset(field.name for field in attrs.fields(cls)) if cls in _ALL_FIELDS_REQUIRED else None

    def read(value: Any) -> Any:
        if type(value) is not dict:
            _fail(f"expected an object for {owner}, got {_kind(value)}")
        if required is not None and not required <= value.keys():
            _fail(_missing_fields(sorted(required - value.keys()), owner))
        return generated(value, cls)

    return read


def _plain_writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    """A struct's own object form, every field in declaration order (None as null unless omitted)."""
    if cls is ModelMetadata:
        return lambda value: {"metadata": dict(sorted(value.metadata.items()))}
    overrides: dict[str, Any] = {name: override(omit_if_default=True) for name in _OMITTED_WHEN_NONE.get(cls, ())}
    return make_dict_unstructure_fn(cls, _converter, **overrides)


def _issue_with_nested_model_path_reader(cls: type) -> Callable[[Any], Any]:
    """``{..., "model_path": {"model_path": str}, ...}`` (Paddler's ``ModelPath`` struct) into a flat class."""
    names = tuple(field.name for field in attrs.fields(cls))
    owner = cls.__name__

    def read(value: Any) -> Any:
        _check_keys(value, owner, frozenset(names))
        values = {}
        for name in names:
            item = value[name]
            if name == "model_path":
                try:
                    _check_keys(item, "ModelPath", frozenset({"model_path"}))
                except _DecodeError as exc:
                    raise _DecodeError(_problems(exc, ".model_path")) from None
                item = _string_at(item["model_path"], ".model_path.model_path")
            values[name] = _string_at(item, f".{name}")
        return cls(**values)

    return read


def _issue_with_nested_model_path_writer(value: Any) -> dict[str, Any]:
    return {
        name: {"model_path": item} if name == "model_path" else item
        for name, item in attrs.asdict(value, recurse=False).items()
    }


# --- externally tagged classes ----------------------------------------------------------------


@attrs.frozen
class _Leaf:
    """One variant in a tag tree: a unit (a bare string) or a payload reader."""

    unit_value: Any
    read: Callable[[Any], Any] | None


@attrs.frozen
class _TagTree:
    """The variants a union accepts, keyed by tag; a nested tree is one more level of tags."""

    owner: str
    children: dict[str, _Leaf | _TagTree]


def _read_tagged(value: Any, tree: _TagTree) -> Any:
    """Walk the tags of ``value`` down ``tree`` and read the payload; every failure is an ``_DecodeError``."""
    path = ""
    while True:
        if type(value) is dict and len(value) == 1:
            ((tag, payload),) = value.items()
            child = tree.children.get(tag)
            if isinstance(child, _TagTree):
                path += "." + tag
                value = payload
                tree = child
                continue
            if child is None:
                problem = f'unknown variant "{tag}" of {tree.owner} (expected one of {_quoted(tree.children)})'
            elif child.read is None:
                problem = f'variant "{tag}" of {tree.owner} takes no payload: write it as the string "{tag}"'
            else:
                try:
                    return child.read(payload)
                except Exception as exc:
                    raise _DecodeError(_problems(exc, f"{path}.{tag}")) from None
        elif type(value) is str:
            child = tree.children.get(value)
            if type(child) is _Leaf and child.read is None:
                return child.unit_value
            if child is None:
                problem = f'unknown variant "{value}" of {tree.owner} (expected one of {_quoted(tree.children)})'
            else:
                problem = f'variant "{value}" of {tree.owner} needs a payload: {{"{value}": ...}}'
        else:
            got = f"an object with {len(value)} keys" if type(value) is dict else _kind(value)
            problem = f'expected a {tree.owner} variant ("Variant" or {{"Variant": payload}}), got {got}'
        raise _DecodeError([(path, problem)])


def _payload_reader(cls: Any, shape: str) -> Callable[[Any], Any] | None:
    """How the payload inside a tagged class's tags is read (None for a unit variant)."""
    origin = get_origin(cls) or cls
    if shape == _UNIT:
        return None
    if shape == _NEWTYPE:
        (field,) = attrs.fields(attrs.resolve_types(origin))
        if field.type is str:
            return lambda payload: origin(payload) if type(payload) is str else _structure_str(payload, str)
        read_inner = _hook(field.type)
        return lambda payload: origin(read_inner(payload))
    if origin is RequestEnvelope:
        return _request_envelope_reader(get_args(cls)[0] if get_args(cls) else AgentRequest)
    if origin is ResponseEnvelope:
        return _response_envelope_reader(get_args(cls)[0] if get_args(cls) else AgentResponse)
    if origin in _ISSUES_WITH_NESTED_MODEL_PATH:
        return _issue_with_nested_model_path_reader(origin)
    return _plain_reader(origin)


def _unit_or_reader(cls: Any, shape: str) -> _Leaf:
    reader = _payload_reader(cls, shape)
    return _Leaf(unit_value=cls() if reader is None else None, read=reader)


def _add_variant(tree: _TagTree, tags: tuple[str, ...], leaf: _Leaf) -> None:
    node = tree
    for tag in tags[:-1]:
        child = node.children.setdefault(tag, _TagTree(owner=tag, children={}))
        assert type(child) is _TagTree
        node = child
    node.children[tags[-1]] = leaf


def _external_tree(owner: str, members: tuple[Any, ...]) -> _TagTree:
    tree = _TagTree(owner=owner, children={})
    for member in members:
        tags, shape = _EXTERNAL_TAGS[get_origin(member) or member]
        _add_variant(tree, tags, _unit_or_reader(member, shape))
    return tree


def _payload_writer(cls: type, shape: str) -> Callable[[Any], Any]:
    """The payload inside a tagged class's tags (unused for a unit variant)."""
    if shape == _NEWTYPE:
        (field,) = attrs.fields(attrs.resolve_types(cls))
        get = operator.attrgetter(field.name)
        if field.type in _PRIMITIVES:
            return get
        unstructure = _converter.unstructure
        return lambda value: unstructure(get(value))
    if cls is RequestEnvelope:
        return lambda envelope: {"id": envelope.id, "request": _write_request_payload(envelope.request)}
    if cls is ResponseEnvelope:
        return lambda envelope: {
            "generated_by": envelope.generated_by,
            "request_id": envelope.request_id,
            "response": _write_response_payload(envelope.response),
        }
    if cls in _ISSUES_WITH_NESTED_MODEL_PATH:
        return _issue_with_nested_model_path_writer
    return _plain_writer(cls)


def _tagged_writer(cls: type) -> Callable[[Any], Any]:
    """A tagged class's whole wire form: its payload inside its tags."""
    tags, shape = _EXTERNAL_TAGS[cls]
    if shape == _UNIT:
        form: Any = tags[-1]
        for tag in reversed(tags[:-1]):
            form = {tag: form}
        return lambda _: form
    write_payload = _payload_writer(cls, shape)
    if len(tags) == 1:
        (tag,) = tags
        return lambda value: {tag: write_payload(value)}
    outer, inner = tags
    return lambda value: {outer: {inner: write_payload(value)}}


# --- envelopes: request and response payload layers ------------------------------------------


def _request_envelope_reader(request_union: Any) -> Callable[[Any], Any]:
    tree = _TagTree(owner=_UNION_NAMES.get(request_union, "request"), children={})
    for member in get_args(request_union) or (request_union,):
        if member in _REQUEST_TAGS:
            _add_variant(tree, (_REQUEST_TAGS[member],), _Leaf(unit_value=None, read=_hook(member)))
        else:
            tags, shape = _EXTERNAL_TAGS[member]
            _add_variant(tree, tags, _unit_or_reader(member, shape))
    names = frozenset({"id", "request"})

    def read(value: Any) -> RequestEnvelope[Any]:
        _check_keys(value, "RequestEnvelope", names)
        request_id = _string_at(value["id"], ".id")
        try:
            request = _read_tagged(value["request"], tree)
        except _DecodeError as exc:
            raise _DecodeError(_problems(exc, ".request")) from None
        return RequestEnvelope(request_id, request)

    return read


def _response_envelope_reader(response_union: Any) -> Callable[[Any], Any]:
    tree = _TagTree(owner=_UNION_NAMES.get(response_union, "response"), children={})
    for member in get_args(response_union) or (response_union,):
        tags, shape = _EXTERNAL_TAGS[member]
        if member in _RESPONSE_LAYERS:
            layer_tag, layer_owner = _RESPONSE_LAYERS[member]
            tree.children.setdefault(layer_tag, _TagTree(owner=layer_owner, children={}))
            tags = (layer_tag, *tags)
        _add_variant(tree, tags, _unit_or_reader(member, shape))
    names = frozenset({"generated_by", "request_id", "response"})

    def read(value: Any) -> ResponseEnvelope[Any]:
        if type(value) is not dict or value.keys() != names:
            if type(value) is dict and value.keys() == names - {"generated_by"}:
                value = {**value, "generated_by": None}  # an absent Option is None, as in serde
            else:
                _check_keys(value, "ResponseEnvelope", names)
        generated_by = value["generated_by"]
        if generated_by is not None and type(generated_by) is not str:
            raise _DecodeError([(".generated_by", f"expected a string or null, got {_kind(generated_by)}")])
        request_id = _string_at(value["request_id"], ".request_id")
        try:
            response = _read_tagged(value["response"], tree)
        except _DecodeError as exc:
            raise _DecodeError(_problems(exc, ".response")) from None
        return ResponseEnvelope(generated_by, request_id, response)

    return read


def _request_payload_writer(cls: type) -> Callable[[Any], Any]:
    if cls in _REQUEST_TAGS:
        tag = _REQUEST_TAGS[cls]
        write = _plain_writer(cls)
        return lambda value: {tag: write(value)}
    if cls in get_args(AgentRequest):
        return _tagged_writer(cls)
    raise TypeError(f"{cls.__name__} is not a request payload")


def _response_payload_writer(cls: type) -> Callable[[Any], Any]:
    if cls in _RESPONSE_LAYERS:
        layer_tag = _RESPONSE_LAYERS[cls][0]
        write = _tagged_writer(cls)
        return lambda value: {layer_tag: write(value)}
    if cls in get_args(AgentResponse):
        return _tagged_writer(cls)
    raise TypeError(f"{cls.__name__} is not a response payload")


_request_payload_writers: dict[type, Callable[[Any], Any]] = {}
_response_payload_writers: dict[type, Callable[[Any], Any]] = {}


def _write_request_payload(value: Any) -> Any:
    cls = value.__class__
    write = _request_payload_writers.get(cls)
    if write is None:
        write = _request_payload_writers[cls] = _request_payload_writer(cls)
    return write(value)


def _write_response_payload(value: Any) -> Any:
    cls = value.__class__
    write = _response_payload_writers.get(cls)
    if write is None:
        write = _response_payload_writers[cls] = _response_payload_writer(cls)
    return write(value)


# --- internally tagged classes ----------------------------------------------------------------


def _internal_reader(owner: str, members: tuple[type, ...]) -> Callable[[Any, Any], Any]:
    readers = {_INTERNAL_TAGS[member]: _plain_reader(member) for member in members}

    def read(value: Any, _: Any) -> Any:
        if type(value) is not dict:
            _fail(f"expected an object for {owner}, got {_kind(value)}")
        if "type" not in value:
            _fail(f'missing field "type" in {owner}')
        tag = value["type"]
        reader = readers.get(tag) if type(tag) is str else None
        if reader is None:
            _fail(f"unknown type {json.dumps(tag)[:80]} of {owner} (expected one of {_quoted(readers)})")
        return reader({key: item for key, item in value.items() if key != "type"})

    return read


def _internal_writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    tag = _INTERNAL_TAGS[cls]
    write = _plain_writer(cls)
    return lambda value: {"type": tag, **write(value)}


# --- unions -----------------------------------------------------------------------------------


def _is_union(cls: Any) -> bool:
    return get_origin(cls) in (Union, types.UnionType)


def _json_kind_of_type(cls: Any) -> str:
    if cls is str:
        return "a string"
    if get_origin(cls) in (tuple, frozenset):
        return "an array"
    return "an object"


def _union_structure_hook(cls: Any) -> Callable[[Any, Any], Any]:
    members = tuple(member for member in get_args(cls) if member is not types.NoneType)
    nullable = len(members) < len(get_args(cls))
    owner = _UNION_NAMES.get(Union[members] if len(members) > 1 else members[0], "value")
    read: Callable[[Any], Any]
    if all((get_origin(member) or member) in _EXTERNAL_TAGS for member in members):
        tree = _external_tree(owner, members)

        def read(value: Any) -> Any:
            return _read_tagged(value, tree)

    elif all(member in _INTERNAL_TAGS for member in members):
        internal = _internal_reader(owner, members)

        def read(value: Any) -> Any:
            return internal(value, cls)

    elif len(members) == 1:
        read = _hook(members[0])
    else:
        by_kind = {_json_kind_of_type(member): _hook(member) for member in members}

        def read(value: Any) -> Any:
            reader = by_kind.get(_kind(value))
            if reader is None:
                _fail(f"expected {' or '.join(by_kind)}, got {_kind(value)}")
            return reader(value)

    def structure(value: Any, _: Any) -> Any:
        if value is None and nullable:
            return None
        return read(value)

    return structure


def _union_unstructure_hook(_: Any) -> Callable[[Any], Any]:
    """A union's value is written as its runtime class is."""
    return _converter.unstructure


# --- registration -----------------------------------------------------------------------------


def _register_hooks() -> None:
    converter = _converter
    converter.register_structure_hook_factory(attrs.has, lambda cls: _as_hook(_plain_reader(cls)))
    converter.register_unstructure_hook_factory(attrs.has, _plain_writer)
    for primitive, hook in (
        (str, _structure_str),
        (int, _structure_int),
        (float, _structure_float),
        (bool, _structure_bool),
    ):
        converter.register_structure_hook(primitive, hook)
    converter.register_structure_hook_func(lambda cls: cls is Any, _structure_any)
    for enum_type in _ENUMS:
        converter.register_structure_hook(enum_type, _enum_structure_hook(enum_type))
        converter.register_unstructure_hook(enum_type, operator.attrgetter("value"))
    for container in (tuple, frozenset):
        converter.register_structure_hook_factory(_is_collection(container), _collection_structure_hook)
        converter.register_unstructure_hook_factory(_is_collection(container), _sequence_unstructure_hook)
    converter.register_structure_hook_factory(_is_string_mapping, _mapping_structure_hook)
    converter.register_structure_hook_factory(_is_union, _union_structure_hook)
    converter.register_unstructure_hook_factory(_is_union, _union_unstructure_hook)
    for cls in _INTERNAL_TAGS:
        converter.register_structure_hook(cls, _internal_reader(cls.__name__, (cls,)))
        converter.register_unstructure_hook(cls, _internal_writer(cls))
    for cls in _EXTERNAL_TAGS:
        converter.register_structure_hook_factory(_is_tagged_as(cls), _tagged_structure_hook)
        converter.register_unstructure_hook(cls, _tagged_writer(cls))


def _is_tagged_as(cls: type) -> Callable[[Any], bool]:
    """Matches the class itself and its parametrisations (``RequestEnvelope[InferenceRequest]``)."""
    return lambda candidate: (get_origin(candidate) or candidate) is cls


def _tagged_structure_hook(cls: Any) -> Callable[[Any, Any], Any]:
    """A tagged class (or a parametrised envelope) read from its own tagged form."""
    tree = _external_tree((get_origin(cls) or cls).__name__, (cls,))
    return lambda value, _: _read_tagged(value, tree)


def _as_hook(read: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda value, _: read(value)


_register_hooks()


# --- public API -------------------------------------------------------------------------------


def unstructure(value: Any) -> Any:
    """The JSON-ready form (dicts, lists, strings, numbers, None) of a protocol value."""
    return _converter.unstructure(value)


def to_json(value: Any) -> str:
    """Compact JSON of a protocol value, exactly as Paddler writes it (UTF-8 text, no escapes of non-ASCII)."""
    if value.__class__ is ResponseEnvelope:
        token_tag = _TOKEN_TAGS.get(value.response.__class__)
        if token_tag is not None:
            # The hot path (one message per generated token), spelled out: same bytes as the generic path.
            generated_by = value.generated_by
            return (
                '{"Response":{"generated_by":'
                + ("null" if generated_by is None else _encode_string(generated_by))
                + ',"request_id":'
                + _encode_string(value.request_id)
                + ',"response":{"GeneratedToken":{"'
                + token_tag
                + '":'
                + _encode_string(value.response.text)
                + "}}}}"
            )
    return _encoder.encode(_converter.unstructure(value))


_structure_hooks: dict[int, tuple[Any, Callable[[Any, Any], Any]]] = {}


def structure(data: Any, cls: type[T]) -> T:
    """Build a protocol value of type ``cls`` (a class or a union) from decoded JSON data."""
    # Hooks are cached by identity: hashing a big Union (as cattrs' own cache does) costs microseconds.
    entry = _structure_hooks.get(id(cls))
    if entry is None or entry[0] is not cls:
        entry = _structure_hooks[id(cls)] = (cls, _converter.get_structure_hook(cls))
    try:
        return entry[1](data, cls)
    except Exception as exc:
        raise WireFormatError(_message(_problems(exc, ""))) from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes) -> Any:
    """Decoded JSON (no NaN or Infinity); invalid text raises ``WireFormatError``."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise WireFormatError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise WireFormatError(f"invalid JSON: {exc}") from None


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Parse JSON text into a protocol value of type ``cls``; any failure raises ``WireFormatError``."""
    return structure(parse_json(text), cls)
