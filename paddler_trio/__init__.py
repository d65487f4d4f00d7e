"""paddler-trio: a Trio implementation of Paddler, the stateful load balancer for llama.cpp."""

__version__ = "0.1.0"

# The Paddler release whose wire protocol we speak (sent to agents in the Version notification).
PADDLER_COMPATIBLE_VERSION = "4.1.0"
