"""The agent role: a link to the balancer, reconciliation of desired state into a loaded engine, request handling."""
