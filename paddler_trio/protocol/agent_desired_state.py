"""What every agent is told to run (``SetState``), and what ``GET /api/v1/balancer_applicable_state`` returns."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.chat_template import ChatTemplate
from paddler_trio.protocol.inference_parameters import InferenceParameters
from paddler_trio.protocol.model_source import ModelSource


@attrs.frozen(kw_only=True)
class AgentDesiredState:
    """Paddler's ``AgentDesiredState``; ``chat_template_override`` may be omitted or null."""

    chat_template_override: ChatTemplate | None = None
    inference_parameters: InferenceParameters
    model: ModelSource
    multimodal_projection: ModelSource
