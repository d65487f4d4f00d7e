"""Errors the engine raises to its caller (the agent maps them to Paddler's AgentIssues)."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ModelFileDoesNotExist(EngineError):
    def __init__(self, model_path: str) -> None:
        super().__init__(f"model file does not exist: {model_path}")
        self.model_path = model_path


class ModelCannotBeLoaded(EngineError):
    def __init__(self, model_path: str, reason: str) -> None:
        super().__init__(f"model cannot be loaded from {model_path}: {reason}")
        self.model_path = model_path
        self.reason = reason


class MultimodalProjectionCannotBeLoaded(EngineError):
    """llama.cpp refused the mmproj file (or this engine cannot use one); retrying cannot fix it."""

    def __init__(self, model_path: str, reason: str) -> None:
        super().__init__(f"multimodal projection cannot be loaded from {model_path}: {reason}")
        self.model_path = model_path
        self.reason = reason


class ContextCannotBeCreated(EngineError):
    """llama.cpp refused the context (too many slots, too large a context, bad cache type)."""


class ChatTemplateDoesNotCompile(EngineError):
    def __init__(self, error: str, template_content: str) -> None:
        super().__init__(f"chat template does not compile: {error}")
        self.error = error
        self.template_content = template_content


class UnableToFindChatTemplate(EngineError):
    def __init__(self, model_path: str) -> None:
        super().__init__(f"model {model_path} has no chat template and no override was given")
        self.model_path = model_path


class InvalidEngineSettings(EngineError, ValueError):
    """Settings that can never work (zero slots, a non-positive context size...)."""


class InvalidRequest(EngineError, ValueError):
    """A request the engine refuses before it takes a slot (negative max_tokens...)."""
