"""A route described where it is defined: ``@operation(...)`` on the view.

The decorator registers the Flask route and records its declaration (what
``web.openapi`` builds the document from), and does what it declares, so the
description cannot drift from the code:

- ``auth``: the view gets ``principal`` from :func:`web.auth.authenticate`
  (or the token-less networks' variant); declares 401, and 403
  ``csrf_rejected`` for a POST.
- path parameters (``<card_id>`` in the rule): ids, parsed and lowercased
  before the view runs (``cardId`` on the wire); declares 422 and the 404 of
  an id holding a ``/``.
- ``body``: a request model of ``web.schemas``, parsed and validated before
  the view runs (the view gets ``body``); declares 400, 422 and 413.
- ``errors``: what the view itself can answer besides, as classes of
  ``shared.errors``; an undeclared one is logged and counted
  (``undeclared_errors`` in the app's extensions), which the tests check.
- ``replies``: the success answers, with the response models that write them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from flask import Blueprint, current_app, request
from pydantic import BaseModel
from pydantic.alias_generators import to_camel

from shared.errors import (
    BadRequest,
    CsrfRejected,
    ServiceError,
    Unauthorized,
    ValidationFailed,
)
from shared.wire import OBJECT_ID_EXAMPLE, OBJECT_ID_PATTERN
from web.auth import authenticate, authenticate_or_trusted_network
from web.problems import BODY_TOO_LARGE, ROUTE_NOT_FOUND, ErrorSource
from web.schemas import object_id, parse_json_body, validate

log = logging.getLogger(__name__)

_RULE_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


class Auth(Enum):
    """Who may call an operation."""

    #: A valid token (``authenticate``).
    USER = "user"
    #: A valid token, or no token at all from FIND_TOKENLESS_NETWORKS.
    USER_OR_NETWORK = "user_or_network"


@dataclass(frozen=True)
class Reply:
    """A success answer: status, description, body (a response model or an inline schema), headers."""

    status: int
    description: str
    body: type[BaseModel] | dict[str, Any]
    headers: tuple[str, ...] = ()
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    """One declared operation, as ``web.openapi`` turns it into the document."""

    blueprint: str
    endpoint: str
    method: str
    path: str
    operation_id: str
    summary: str
    description: str
    tag: str
    replies: tuple[Reply, ...]
    errors: tuple[ErrorSource, ...]
    auth: Auth | None
    body: type[BaseModel] | None
    body_required: bool
    body_description: str
    parameters: tuple[dict[str, Any], ...]
    #: The job a write queues, and the errors that can end it failed.
    job_type: str | None = None
    job_errors: tuple[type[ServiceError], ...] = field(default_factory=tuple)


#: Every declared operation, in declaration order.
OPERATIONS: list[Operation] = []


def id_parameter(wire_name: str, where: str = "path") -> dict[str, Any]:
    """An id parameter: 24 hexadecimal digits, either case."""
    what = wire_name.removesuffix("Id")
    return {
        "name": wire_name,
        "in": where,
        "required": where == "path",
        "description": f"The {what}'s id: 24 hexadecimal digits (either case). Anything else is a 422 "
        "`validation_error`, never a 500.",
        "schema": {"type": "string", "pattern": OBJECT_ID_PATTERN, "examples": [OBJECT_ID_EXAMPLE]},
    }


def _unique(sources: list[ErrorSource]) -> tuple[ErrorSource, ...]:
    return tuple(dict.fromkeys(sources))


def operation(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    description: str,
    tag: str,
    replies: tuple[Reply, ...],
    errors: tuple[ErrorSource, ...] = (),
    auth: Auth | None = Auth.USER,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    body_description: str = "",
    parameters: tuple[dict[str, Any], ...] = (),
    job_type: str | None = None,
    job_errors: tuple[type[ServiceError], ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``rule`` on ``bp`` for ``method`` and declare the operation (see the module)."""
    # Every path parameter is an id (the API has no other kind).
    id_parameters = {name: to_camel(name) for name in _RULE_PARAMETER.findall(rule)}
    path = _RULE_PARAMETER.sub(lambda m: "{" + to_camel(m[1]) + "}", f"{bp.url_prefix or ''}{rule}")

    implied: list[ErrorSource] = []
    if auth is not None:
        implied.append(Unauthorized)
        if method == "POST":
            implied.append(CsrfRejected)
    if body is not None:
        implied += [BadRequest, ValidationFailed, BODY_TOO_LARGE]
    if id_parameters:
        implied += [ValidationFailed, ROUTE_NOT_FOUND]
    declared = _unique([*implied, *errors])
    answered = tuple(source for source in declared if isinstance(source, type))

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            try:
                if auth is Auth.USER:
                    kwargs["principal"] = authenticate()
                elif auth is Auth.USER_OR_NETWORK:
                    kwargs["principal"] = authenticate_or_trusted_network()
                for name, wire_name in id_parameters.items():
                    kwargs[name] = object_id(kwargs[name], wire_name)
                if body is not None:
                    raw = request.get_data()
                    absent = not body_required and not raw.strip()
                    kwargs["body"] = None if absent else validate(body, parse_json_body(raw))
                return view(**kwargs)
            except ServiceError as error:
                if not isinstance(error, answered):
                    _undeclared(endpoint, error)
                raise

        endpoint = f"{bp.name}.{view.__name__}"
        params = (*(id_parameter(wire) for wire in id_parameters.values()), *parameters)
        OPERATIONS.append(
            Operation(
                blueprint=bp.name,
                endpoint=endpoint,
                method=method.lower(),
                path=path,
                operation_id=to_camel(view.__name__),
                summary=summary,
                description=description,
                tag=tag,
                replies=replies,
                errors=declared,
                auth=auth,
                body=body,
                body_required=body_required,
                body_description=body_description,
                parameters=params,
                job_type=job_type,
                job_errors=job_errors,
            )
        )
        bp.add_url_rule(rule, view_func=wrapper, methods=[method])
        return wrapper

    return decorate


def _undeclared(endpoint: str, error: ServiceError) -> None:
    """A view answered an error its declaration does not list: a defect of the declaration."""
    log.error("%s answered %s, which its declaration does not list", endpoint, error.code)
    current_app.extensions.setdefault("undeclared_errors", set()).add((endpoint, error.code))
