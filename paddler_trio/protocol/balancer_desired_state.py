"""What the operator asks the cluster to run (``GET``/``PUT /api/v1/balancer_desired_state``)."""

from __future__ import annotations

import attrs

from paddler_trio.protocol.agent_desired_state import AgentDesiredState
from paddler_trio.protocol.chat_template import ChatTemplate
from paddler_trio.protocol.inference_parameters import InferenceParameters
from paddler_trio.protocol.model_source import ModelSource, NoModel


@attrs.frozen(kw_only=True)
class BalancerDesiredState:
    """Paddler's ``BalancerDesiredState``; every field is required except ``chat_template_override``."""

    chat_template_override: ChatTemplate | None = None
    inference_parameters: InferenceParameters
    model: ModelSource
    multimodal_projection: ModelSource
    use_chat_template_override: bool

    @classmethod
    def default(cls) -> BalancerDesiredState:
        """No model, default parameters, no override: the state a fresh ``memory://`` database holds."""
        return cls(
            inference_parameters=InferenceParameters(),
            model=NoModel(),
            multimodal_projection=NoModel(),
            use_chat_template_override=False,
        )

    def to_agent_desired_state(self) -> AgentDesiredState:
        """The state sent to agents: the override is kept only when ``use_chat_template_override`` is set."""
        return AgentDesiredState(
            chat_template_override=self.chat_template_override if self.use_chat_template_override else None,
            inference_parameters=self.inference_parameters,
            model=self.model,
            multimodal_projection=self.multimodal_projection,
        )
