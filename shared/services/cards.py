"""Cards: adding, reading and deleting a customer's cards.

The full card number exists only while a request is validated: the job keeps
its keyed fingerprint, last four digits and brand; the CVV is checked and
dropped (it is never needed after validation, and PCI DSS forbids keeping it).
"""

from __future__ import annotations

import contextlib
from datetime import date
from decimal import Decimal
from typing import Any

from mongoengine.errors import NotUniqueError

from shared.errors import CardNotFound, DuplicateCard
from shared.models import Card, Job, LedgerEntry
from shared.models.base import utcnow
from shared.pan import card_brand, fingerprint
from shared.principal import Principal
from shared.services import views


def new_card_params(
    *, fingerprint_key: bytes, holder_name: str, number: str, expire_date: str, money: Decimal
) -> dict[str, Any]:
    """What the add-card job keeps: nothing from which the number can be rebuilt."""
    return {
        "cardHolderName": holder_name,
        "fingerprint": fingerprint(number, fingerprint_key),
        "last4": number[-4:],
        "brand": card_brand(number),
        "expireDate": expire_date,
        "money": str(money),
    }


def ensure_number_is_new(card_fingerprint: str) -> None:
    """Refuse early a number that is already registered (the unique index decides races)."""
    if Card.objects(fingerprint=card_fingerprint).only("id").first() is not None:
        raise DuplicateCard("A card with this number is already registered.")


def add_card(job: Job) -> views.Card:
    """Store the job's card under the id the job reserved (so a retry finds it).

    Its opening balance is written to the ledger (``open:<cardId>``) before the
    job ends, also by a retry that finds the card stored, so reconciliation
    knows what the card started with.
    """
    params = job.params
    card = Card(
        id=job.resourceId,
        cardUserId=job.ownerId,
        cardHolderName=params["cardHolderName"],
        fingerprint=params["fingerprint"],
        last4=params["last4"],
        brand=params["brand"],
        expireDate=params["expireDate"],
        money=Decimal(params["money"]),
    )
    try:
        card.save(force_insert=True)
    except NotUniqueError:
        existing = Card.objects(id=job.resourceId).first()
        if existing is not None:  # this job stored it before a crash or redelivery
            _record_opening(str(existing.id), Decimal(params["money"]))
            return views.Card.of(existing)
        raise DuplicateCard("A card with this number is already registered.") from None
    _record_opening(str(card.id), Decimal(params["money"]))
    card.reload()  # as stored (MongoDB keeps milliseconds), so the result equals what reads show
    return views.Card.of(card)


def _record_opening(card_id: str, amount: Decimal) -> None:
    with contextlib.suppress(NotUniqueError):  # written by an earlier attempt
        LedgerEntry(id=f"open:{card_id}", cardId=card_id, kind="open", amount=amount).save(force_insert=True)


def visible_card(principal: Principal, card_id: str) -> Card:
    """A live card its owner (or an admin) may see; anything else is not found."""
    # By _id alone (the local server indexes only a filter on exactly _id); deletion checked here.
    card = Card.objects(id=card_id).exclude("debits", "credits", "inflight").first()
    if card is None or card.deletedAt is not None:
        raise CardNotFound(f"No card {card_id}.")
    if not (principal.is_admin or principal.owns(card.cardUserId)):
        raise CardNotFound(f"No card {card_id}.")
    return card


def get_card(principal: Principal, card_id: str) -> views.Card:
    return views.Card.of(visible_card(principal, card_id))


def delete_card(job: Job) -> views.Deleted:
    """Soft-delete: the card disappears from reads; its money movements stay on record.

    Its fingerprint is released so the same number can be added again.
    """
    card_id = job.resourceId
    card = Card.objects(id=card_id).first()
    if card is None:
        raise CardNotFound(f"No card {card_id}.")
    if card.deletedAt is None:
        Card.objects(id=card_id, deletedAt=None).update_one(
            set__deletedAt=utcnow(),
            set__updatedAt=utcnow(),
            set__deletedFingerprint=card.fingerprint,
            set__fingerprint=f"deleted:{card_id}",
        )
    return views.Deleted(deleted=card_id)


def is_expired(expire_date: str, today: date) -> bool:
    """A card is valid through the last day of its expiry month (MM/YY)."""
    month, year = (int(part) for part in expire_date.split("/"))
    return (2000 + year, month) < (today.year, today.month)
