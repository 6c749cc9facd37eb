"""Development tokens shaped like the user service's (contracts.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt
from bson import ObjectId

from shared.settings import load_settings


def make_token(
    user_id: str | None, user_types: list[str], minutes: int = 60, secret: str | None = None
) -> str:
    """An HS256 token with ``userId`` and ``userType`` claims, signed with JWT_SEC."""
    if secret is None:
        secret = load_settings().jwt_secret.get_secret_value()
    now = datetime.now(UTC)
    claims = {
        "userId": user_id or str(ObjectId()),
        "userType": user_types,
        "iat": now,
        "exp": now + timedelta(minutes=minutes),
    }
    return jwt.encode(claims, secret, algorithm="HS256")
