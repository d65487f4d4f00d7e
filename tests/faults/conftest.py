"""The fault tests start real clusters the way the integration tests do."""

from tests.integration.conftest import cluster_factory  # noqa: F401  (the fixture, shared)
