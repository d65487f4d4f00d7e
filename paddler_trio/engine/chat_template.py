"""Sandboxed Jinja rendering of a model's `tokenizer.chat_template` (or an override).

The environment mirrors what Hugging Face tokenizers give templates (trim_blocks,
lstrip_blocks, `raise_exception`, a `tojson` filter, `strftime_now`), inside Jinja's
immutable sandbox so a hostile override cannot reach Python internals.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from paddler_trio.engine.engine_errors import ChatTemplateDoesNotCompile


class ChatTemplateRenderError(Exception):
    """Rendering failed for this conversation (the template itself compiled)."""


class _TemplateRaisedError(Exception):
    pass


def _raise_exception(message: str) -> None:
    raise _TemplateRaisedError(message)


def _tojson(value: Any, indent: int | None = None, **_ignored: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _strftime_now(format_string: str) -> str:
    return datetime.datetime.now().strftime(format_string)


def _environment() -> ImmutableSandboxedEnvironment:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.Undefined,
        autoescape=False,
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


class ChatTemplate:
    """A compiled template plus the special-token strings it may reference."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateError as error:
            raise ChatTemplateDoesNotCompile(str(error), source) from error
        self.source = source
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(
        self,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool,
        enable_thinking: bool,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                tools=tools or None,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except _TemplateRaisedError as error:
            raise ChatTemplateRenderError(f"the chat template raised: {error}") from error
        except jinja2.exceptions.SecurityError as error:
            raise ChatTemplateRenderError(f"the chat template did something unsafe: {error}") from error
        except Exception as error:  # template code is untrusted: 1/0, endless recursion, bad types...
            raise ChatTemplateRenderError(f"the chat template failed to render: {type(error).__name__}: {error}") from error
