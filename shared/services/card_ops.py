"""Money on a card, moved exactly once, in documents that stay bounded.

Every change of a balance is an *operation* named by its cause: the debit of
a payment by one job (``debit:<paymentId>:<jobId>``, or ``nodebit:...`` when
it is refused), the credit of one refund event (``credit:<eventId>``).  It
goes through three steps, each of which a retry can repeat:

1. **decide**: one conditional update of the card applies the operation (or
   refuses it) and pushes its name to ``card.inflight``, only if the card is
   still at the ``version`` the decision was read at and the name is not
   there yet;
2. **record** the outcome where it stays: the ledger entry, the payment's
   state, the refund's ``credited`` flag (the caller's step);
3. **settle**: pull the name from the card.

Whether an operation happened is read from the card while its name is there,
and from its record once the name is gone (the record is written before the
name is pulled).  Every update of the balance or of ``inflight`` bumps the
version, so a decision read before another run's decide, record and settle
can never be written after them: the version it repeats in its filter has
moved.  The card holds only operations in flight, whatever its history.
"""

from __future__ import annotations

from typing import Any

from mongoengine.queryset import transform
from pymongo import UpdateOne

from shared.models import Card
from shared.models.base import find_one, update_one, utcnow

#: Decisions re-read and retried when other operations keep moving the card.
MAX_ATTEMPTS = 200


#: What a decision depends on (never the legacy marker lists).
DECISION_FIELDS = ("version", "money", "deletedAt", "inflight")


def read(card_id: str) -> Card | None:
    """What a decision depends on (never the legacy marker lists)."""
    return find_one(Card, {"id": card_id}, *DECISION_FIELDS)


def read_many(card_ids: list[str], *more: str) -> dict[str, Card]:
    """The decision fields (and ``more``) of several cards, in one read (by ``_id``)."""
    if not card_ids:
        return {}
    found = Card.objects(id__in=list(card_ids)).only(*DECISION_FIELDS, *more)
    return {str(card.id): card for card in found}


def decide(
    card: Card,
    name: str,
    *,
    excludes: tuple[str, ...] = (),
    filters: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
) -> bool:
    """Push ``name`` with ``changes`` if the card is as read; True if this update did it.

    ``excludes`` are the other names the same operation may carry (a debit
    applied or refused); ``filters`` repeat every value the decision was
    computed from (a read is not a snapshot: tests/conformance).
    """
    return decide_many(card, [name], excludes=excludes, filters=filters, changes=changes)


def decide_many(
    card: Card,
    names: list[str],
    *,
    excludes: tuple[str, ...] = (),
    filters: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
) -> bool:
    """Push every one of ``names`` with ``changes`` in one update, as :func:`decide` pushes one.

    The operations are applied together or not at all (one conditional
    update): several credits of one card in a refund batch, say.
    """
    query, update = _decision(card, names, excludes, filters, changes)
    return update_one(Card, query, **update)


def decide_op(
    card: Card,
    names: list[str],
    *,
    filters: dict[str, Any] | None = None,
    changes: dict[str, Any] | None = None,
) -> UpdateOne:
    """:func:`decide_many` as one operation of a bulk write (whose answer says only how many matched)."""
    query, update = _decision(card, names, (), filters, changes)
    return UpdateOne(transform.query(Card, **query), transform.update(Card, **update))


def _decision(
    card: Card,
    names: list[str],
    excludes: tuple[str, ...],
    filters: dict[str, Any] | None,
    changes: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The filter and the update of a decision, alone or in a bulk write.

    The guards come last in the filter: no caller's filter can stand in for them.
    """
    query = {**(filters or {}), "id": card.id, "version": card.version, "inflight__nin": [*names, *excludes]}
    update = {
        "push_all__inflight": list(names),
        "inc__version": 1,
        "set__updatedAt": utcnow(),
        **(changes or {}),
    }
    return query, update


def settle_op(card_id: str, names: list[str]) -> UpdateOne:
    """:func:`settle` as one operation of a bulk write."""
    query, update = _settlement(card_id, names)
    return UpdateOne(transform.query(Card, **query), transform.update(Card, **update))


def settle(card_id: str, *names: str) -> None:
    """Forget settled operations; call only once their outcome is recorded elsewhere."""
    query, update = _settlement(card_id, list(names))
    update_one(Card, query, **update)


def _settlement(card_id: str, names: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The filter and the update that pull ``names`` from the card, alone or in a bulk write."""
    return {"id": card_id, "inflight__in": list(names)}, {
        "pull_all__inflight": list(names),
        "inc__version": 1,
    }
