"""What keeps strangers out: API keys, the agent join secret, TLS settings and request limits
(spec "Where we go beyond Paddler", item 7; docs/security.md)."""
