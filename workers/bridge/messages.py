"""The refund events of the order service, as they arrive on Kafka.

The order service (kafkajs) sends a JSON object value with no key and no
headers.  Parsing is strict about what we use and ignores what we do not
(``cardNumber``, whatever its shape: the payment knows its card).  Amounts
are parsed as Decimal straight from the JSON text, never via float, and
read by the neighbour cent rule (:mod:`shared.money`): the order service
computes them in doubles, so 3 x 10.10 arrives as ``30.299999999999997``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

from shared.money import PositiveNeighbourAmount
from shared.pan import scrub_message
from shared.wire import ObjectIdText


class BadMessage(ValueError):
    """A message that can never be applied; it goes to the dead-letter topic."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class OrderRefunded(BaseModel):
    """``orderService-orderRefunded``: a whole order is refunded."""

    model_config = ConfigDict(extra="ignore", strict=False)
    paymentId: ObjectIdText
    totalPrice: PositiveNeighbourAmount | None = None
    #: The order service always sends true; anything else is not a refund.
    refunded: Literal[True] = True


class ProductRefunded(BaseModel):
    """``orderService-productFromOrderRefunded``: units of one product are refunded."""

    model_config = ConfigDict(extra="ignore", strict=False)
    paymentId: ObjectIdText
    productId: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    price: PositiveNeighbourAmount


def scrub_card_numbers(value: bytes | None) -> bytes:
    """The message with card numbers masked (``shared.pan.scrub_message``).

    Old product refunds carry a ``cardNumber`` copied from the old service's
    answers, which returned it in clear.  We never use it, and it must not
    travel on into task messages, Flower or the dead-letter topic.  A message
    without one is returned unchanged, byte for byte.
    """
    return scrub_message(value)


def decode(value: bytes | None, model: type[BaseModel]) -> Any:
    """Parse a message value into ``model`` or raise BadMessage with the reason."""
    if value is None:
        raise BadMessage("empty_message", "the message has no value")
    try:
        data = json.loads(value, parse_float=Decimal)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers bad JSON and numbers too long to read; RecursionError, deep nesting.
        raise BadMessage("not_json", f"{type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise BadMessage("not_an_object", f"the value is a JSON {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadMessage("invalid_fields", fields) from None
