"""Who is asking: the identity a token (or an allowed network) grants."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """The caller of a request; services decide what it may see and change."""

    user_id: str | None
    user_types: frozenset[str] = frozenset()
    #: A token-less call from a network an operator allowed (GET /find only).
    trusted_network: bool = False

    @property
    def is_admin(self) -> bool:
        return "admin" in self.user_types

    @property
    def reads_all_payments(self) -> bool:
        return self.is_admin or "service" in self.user_types or self.trusted_network

    def owns(self, owner_id: str | None) -> bool:
        return self.user_id is not None and owner_id == self.user_id
