"""Authentication: the user service's tokens, read by flask-jwt-extended.

Tokens are HS256 JWTs signed with JWT_SEC, with the identity in ``userId``
and roles in the ``userType`` array (contracts.md), sent as ``Authorization:
Bearer`` or in the ``token`` cookie.  Every failure is a 401 problem; a POST
authenticated by the cookie alone must be JSON (403 ``csrf_rejected``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import JWTManager, get_jwt, get_jwt_request_location, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt.exceptions import PyJWTError

from shared.errors import CsrfRejected, Unauthorized
from shared.logs import bind
from shared.principal import Principal
from shared.settings import Settings
from shared.wire import object_id_text
from web.problems import problem_response


def init_auth(app: Flask, settings: Settings) -> None:
    app.config.update(
        JWT_SECRET_KEY=settings.jwt_secret.get_secret_value(),
        JWT_ALGORITHM="HS256",
        JWT_DECODE_ALGORITHMS=["HS256"],  # never "none", never another family
        JWT_TOKEN_LOCATION=["headers", "cookies"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="Bearer",
        JWT_ACCESS_COOKIE_NAME="token",
        # The user service issues no CSRF token; cookie POSTs must be JSON instead.
        JWT_COOKIE_CSRF_PROTECT=False,
        JWT_IDENTITY_CLAIM="userId",
        # Clock skew between the user service and us (exp and nbf).
        JWT_DECODE_LEEWAY=settings.jwt_leeway_seconds,
    )
    jwt = JWTManager(app)

    def _unauthorized(detail: str) -> Response:
        return problem_response(Unauthorized(detail).to_dict())

    jwt.unauthorized_loader(lambda _reason: _unauthorized("A token is required."))
    jwt.invalid_token_loader(lambda _reason: _unauthorized("The token is not valid."))
    jwt.expired_token_loader(lambda _header, _payload: _unauthorized("The token has expired."))
    # The user service's tokens always expire (one hour); one without exp is not theirs.
    jwt.token_verification_loader(lambda _header, payload: "exp" in payload)
    jwt.token_verification_failed_loader(lambda _header, _payload: _unauthorized("The token is not valid."))

    @app.errorhandler(JWTExtendedException)
    @app.errorhandler(PyJWTError)
    def _jwt_error(_error: Exception) -> Response:
        return _unauthorized("The token is not valid.")


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    user_id = claims.get("userId")
    user_types = claims.get("userType", [])
    user_id = object_id_text(user_id)
    if user_id is None:
        raise Unauthorized("The token has no valid userId.")
    if not isinstance(user_types, list) or not all(isinstance(t, str) for t in user_types):
        raise Unauthorized("The token's userType is not a list of strings.")
    principal = Principal(user_id=user_id, user_types=frozenset(user_types))
    # Undone with the whole request's context in web's teardown hook.
    bind(user_id=principal.user_id)
    return principal


def verify_token(*, optional: bool = False) -> bool:
    """Verify this request's token, once per request; True if a valid one was found.

    The rate limiter verifies first (web.limits, ``optional``), the view's
    :func:`authenticate` after it: a token found valid then is not decoded
    and checked a second time (the largest part of a request's CPU after
    the limiter).  Without a valid token nothing is kept, and the next call
    verifies again (and raises).
    """
    if g.get("token_verified"):
        return True
    found = verify_jwt_in_request(optional=optional) is not None
    g.token_verified = found
    return found


def authenticate() -> Principal:
    """The caller of this request; 401 without a valid token, 403 for a cookie POST that is not JSON."""
    verify_token()
    principal = _principal_from_claims(get_jwt())
    if (
        request.method == "POST"
        and get_jwt_request_location() == "cookies"
        and request.mimetype != "application/json"
    ):
        raise CsrfRejected("A POST authenticated by cookie must have Content-Type: application/json.")
    return principal


def authenticate_or_trusted_network() -> Principal:
    """Like :func:`authenticate`, but a token-less call from an allowed network reads too."""
    if from_trusted_network():
        return Principal(user_id=None, trusted_network=True)
    return authenticate()


def from_trusted_network() -> bool:
    """A token-less request from a network listed in FIND_TOKENLESS_NETWORKS."""
    settings: Settings = current_app.config["SETTINGS"]
    if not settings.find_tokenless_networks or _has_token():
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(address in net for net in settings.find_tokenless_networks)


def _has_token() -> bool:
    return "Authorization" in request.headers or "token" in request.cookies
