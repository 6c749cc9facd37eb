"""The unit layer: no server at all (``make test-unit``).

A fixture here, or one it uses, that asks for the shared servers is a
mistake of layering: it fails at once instead of waiting on a server.
``make test-unit`` also points every server setting at closed loopback
ports, so a test that reaches one anyway fails instead of passing by luck.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def servers() -> None:
    """Refused: a unit test needs no server."""
    pytest.fail("a unit test asked for the servers; it belongs in the integration suite")
