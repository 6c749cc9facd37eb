"""Every test of this folder is an integration test: it talks to the shared servers."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _needs_servers(servers: None) -> None:
    """The servers answer (else the run stops, saying so); this run's data goes at the end."""
