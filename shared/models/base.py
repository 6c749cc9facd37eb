"""What every document shares: timestamps kept by the database layer; single commands without a queryset."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from mongoengine import DateTimeField, Document
from mongoengine.errors import NotUniqueError, OperationError
from mongoengine.queryset import transform
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure


def utcnow() -> datetime:
    """Now, at the millisecond precision MongoDB stores, so a fresh document reads as stored."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_utc(at: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (a naive one is UTC, as MongoDB stores them)."""
    if at is not None and at.tzinfo is None:
        return at.replace(tzinfo=UTC)
    return at


class TimestampedDocument(Document):
    meta: ClassVar[dict[str, Any]] = {"abstract": True}

    createdAt = DateTimeField(default=utcnow, required=True)
    updatedAt = DateTimeField(default=utcnow, required=True)


# -- one command, without a queryset ------------------------------------------
#
# ``Model.objects(...).first()``, ``.update_one(...)`` and ``.modify(...)``
# build a queryset and copy it at every chained call before they send one
# command: on the charge's path that was as much CPU as the command itself
# (a card read 0.92 ms against 0.52 ms; an update 0.51 ms against 0.34 ms).
# These send the same filter and update documents (MongoEngine's own
# translation of the keyword arguments) and raise the same errors, without
# the queryset.

D = TypeVar("D", bound=Document)


def find_one(document: type[D], filters: dict[str, Any], *only: str) -> D | None:
    """``document.objects(**filters).only(*only).first()`` (every field without ``only``)."""
    projection = {document._translate_field_name(name): 1 for name in only} or None
    found = document._get_collection().find_one(transform.query(document, **filters), projection)
    return None if found is None else document._from_son(found)


def update_one(document: type[Document], filters: dict[str, Any], **changes: Any) -> bool:
    """``document.objects(**filters).update_one(**changes)``; True if a document matched."""
    with _as_mongoengine_errors("Update failed"):
        result = document._get_collection().update_one(
            transform.query(document, **filters), transform.update(document, **changes)
        )
    return result.matched_count > 0


def find_one_and_update(document: type[D], filters: dict[str, Any], **changes: Any) -> D | None:
    """``document.objects(**filters).modify(new=True, **changes)``: the document after the update, or None."""
    with _as_mongoengine_errors("Update failed"):
        found = document._get_collection().find_one_and_update(
            transform.query(document, **filters),
            transform.update(document, **changes),
            return_document=ReturnDocument.AFTER,
        )
    return None if found is None else document._from_son(found)


@contextmanager
def _as_mongoengine_errors(what: str) -> Iterator[None]:
    """PyMongo's duplicate key and operation errors as MongoEngine raises them."""
    try:
        yield
    except DuplicateKeyError as err:
        raise NotUniqueError(f"{what} ({err})") from err
    except OperationFailure as err:
        raise OperationError(f"{what} ({err})") from err
