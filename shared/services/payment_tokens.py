"""Conditional updates of a payment through its concurrency token (``PaymentToken``).

Every decision on a payment is computed from its token, read atomically as
one field, and written by an update whose filter is ``{token: <the token
read>}`` alone: the unique index finds the payment (on the local
MongoDB-protocol server, which uses an index only for a filter on exactly
its fields, as on real MongoDB), and the update applies only if no write
moved the token since.  Each write sets the next token with the values it
changes, so the token always describes the document it is on.

A payment stored before the token existed gets it on first touch
(:func:`read`): its fields are read and written into the token by an update
that matches only while the payment still has none.  Only this version's
code may run while such payments remain (an earlier version's writes would
change the values without moving the token): stop the old workers before
starting the new ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.models import Payment, PaymentToken
from shared.models.base import find_one, update_one, utcnow

#: How often a decision is re-read and retried when other writes moved the token.
MAX_ATTEMPTS = 50


def read(payment_id: Any, *fields: str) -> tuple[Payment, PaymentToken] | None:
    """The payment (only ``fields`` and the token, if given) and its token; None if there is none."""
    only = ("token", *fields) if fields else ()
    payment = find_one(Payment, {"id": payment_id}, *only)
    if payment is None:
        return None
    if payment.token is None:
        migrate(find_one(Payment, {"id": payment_id}) if fields else payment)
        payment = find_one(Payment, {"id": payment_id}, *only)
        if payment is None or payment.token is None:  # pragma: no cover - a payment is never removed
            return None
    return payment, PaymentToken.load(payment.token)


def migrate(payment: Payment | None) -> None:
    """Give a payment stored by an earlier version the token of its fields (once).

    The filter names ``_id`` and the missing token, so it scans on the local
    server: it runs once per such payment.
    """
    if payment is None or payment.token is not None:
        return
    Payment.objects(id=payment.id, token=None).update_one(set__token=PaymentToken.of(payment).dump())


def write(token: PaymentToken, new: PaymentToken, *, now: datetime | None = None, **changes: Any) -> bool:
    """Apply ``changes`` with the ``new`` token if the payment still holds ``token``; True if applied.

    ``updatedAt`` becomes ``now`` (the current time if not given).
    """
    return update_one(
        Payment,
        {"token": token.dump()},
        set__token=new.dump(),
        set__version=new.version,
        set__updatedAt=now or utcnow(),
        **changes,
    )
