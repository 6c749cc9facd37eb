"""Property-based fuzzing of every documented operation over real HTTP (schemathesis).

Each operation of the OpenAPI document gets generated requests, valid and
invalid, sent to the API (with a real worker behind it) as a fresh user with a
valid token.  Every answer must be documented: no 5xx, a status code the
operation lists, the documented content type, headers and body schema; and a
request the document calls invalid must be refused.

Bounded and reproducible: derandomized Hypothesis without an example database,
MAX_EXAMPLES generated requests per operation and generation mode
(positive, negative).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import token_for
from tests.support import ServedApp
from web.openapi import build_document

MAX_EXAMPLES = 25

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    # Input the document calls invalid must be refused (4xx), never queued.
    negative_data_rejection,
]

# The generated document, which test_openapi proves is the one served.  The
# operations are parametrized here rather than with `@schema.parametrize()`:
# with pytest 9.2, schemathesis 4.32.5 gives all its items one node id (and
# its fixture-based loader fails on `node._nodeid`), so that under
# `pytest -n 2 --dist loadgroup` only one operation ran.
DOCUMENT = build_document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = [SCHEMA[path][method] for path, item in DOCUMENT["paths"].items() for method in item]


@pytest.fixture(scope="module")
def fresh_user_token() -> str:
    """A user who owns nothing yet: reads of generated ids are 404, writes queue real jobs."""
    return token_for()


def _modes(operation: Any) -> list[GenerationMode]:
    """Positive requests; and negative ones where there is an input to get wrong."""
    if operation.path_parameters or operation.query or operation.headers or operation.body:
        return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    return [GenerationMode.POSITIVE]


@pytest.mark.slow
@pytest.mark.parametrize("operation", OPERATIONS, ids=[operation.label for operation in OPERATIONS])
def test_every_operation_answers_as_documented_whatever_it_is_sent(
    operation: Any, api: ServedApp, fresh_user_token: str
) -> None:
    with _no_cycle_collection():
        for mode in _modes(operation):
            _fuzz(operation, mode, api.url, fresh_user_token)
    # Every typed error the routes answered is one their declarations list (web.declare).
    assert api.server.app.extensions.get("undeclared_errors", set()) == set()


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """No garbage collection while fuzzing: a CPython 3.11 bug otherwise fails it now and then.

    CPython 3.11 keeps one AST recursion counter per interpreter (gh-106905).
    Hypothesis parses its filters' lambdas with ``ast.parse``; the API, served
    by threads of this process, formats tracebacks, which in 3.11 parses the
    failing line with ``ast.parse`` too.  A collection run in the middle of one
    conversion can run a finalizer, drop the GIL and let the other thread
    convert: the shared counter is then off and ``ast.parse`` raises
    ``SystemError: AST constructor recursion depth mismatch``, which Hypothesis
    reports as a flaky test.  Without collection, C code converting an AST
    never gives up the GIL.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _fuzz(operation: Any, mode: GenerationMode, base_url: str, token: str) -> None:
    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: Any) -> None:
        # Prefer: wait=N holds the answer until the job ends or N (<= 30)
        # seconds pass: generated values would make the fuzz sleep.  The
        # waiting answers are checked in test_openapi's whole-flow test.
        if case.headers:
            case.headers.pop("Prefer", None)
        case.call_and_validate(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS)

    answers_as_documented()
