"""Money: exact amounts with two decimals, and the two rules for reading them.

Amounts never pass through a binary float inside the service: JSON numbers
are read straight into :class:`~decimal.Decimal` and stored as Decimal128.
Two sources send amounts, and each gets its own rule:

- **Clients of our API** (``POST /add``'s ``money``) write amounts by hand:
  :func:`client_amount` takes exactly what was sent, with at most two
  decimals, and refuses anything else.
- **The neighbours** (the checkout service's ``totalPrice`` and
  ``products[].price``; the order service's refund ``price`` and
  ``totalPrice``) are Node services that compute amounts in JavaScript
  doubles: 3 x 10.10 arrives as ``30.299999999999997`` and 3 x 1.10 + 2.00
  as ``5.300000000000001``.  :func:`neighbour_amount` (the *neighbour cent
  rule*) reads a value within :data:`NEIGHBOUR_TOLERANCE` (1e-6) of a whole
  cent as that cent, and refuses a value further from every cent (``30.305``)
  rather than rounding it into an amount the customer never paid.  Any sum of
  products of two-decimal prices up to 10,000.00 and quantities up to 1,000
  computed in doubles stays within 1e-8 of its exact value, so the rule
  recovers it; a genuinely fractional cent is at least 1e-3 away.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Annotated, Any

from bson.decimal128 import Decimal128
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
#: The largest amount the service stores (14 significant digits, exact as a double).
MAX_MONEY = Decimal("999999999999.99")
#: How far a neighbour's double may lie from a whole cent and still be that cent.
NEIGHBOUR_TOLERANCE = Decimal("0.000001")

# Wide enough that quantizing any amount up to MAX_MONEY is exact, and that
# the distance of a long decimal expansion to its cent is not rounded away.
_CONTEXT = Context(prec=60)


def money(value: Decimal | Decimal128 | int | str) -> Decimal:
    """A stored or computed amount as an exact Decimal with two decimals."""
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    return Decimal(value).quantize(CENT)


def _wrong_type() -> PydanticCustomError:
    # The "type_error_" prefix is how the API tells a wrong JSON type (400) from a bad value (422).
    return PydanticCustomError("type_error_a_number", "must be a number")


def _number(value: Any) -> Decimal:
    # bool first: it is an int subclass.
    if isinstance(value, bool):
        raise _wrong_type()
    if isinstance(value, float):
        # Only a caller that parsed JSON with binary floats hands us one; its
        # shortest repr is the text JavaScript wrote (JSON.stringify).
        return Decimal(repr(value))
    if isinstance(value, int | Decimal):
        return Decimal(value)
    raise _wrong_type()


def _bounded(amount: Decimal) -> Decimal:
    if not amount.is_finite():
        raise PydanticCustomError("money_not_finite", "must be a finite number")
    if amount < 0:
        raise PydanticCustomError("money_negative", "must not be negative")
    if amount > MAX_MONEY + NEIGHBOUR_TOLERANCE:
        raise PydanticCustomError("money_too_large", "must be at most {max}", {"max": str(MAX_MONEY)})
    return amount


def client_amount(value: Any) -> Decimal:
    """The strict rule for amounts our clients send: a JSON number with at most two decimals.

    Strings and booleans are refused as the wrong type; ``-0`` is zero.
    """
    if isinstance(value, float | str):
        # A string is the wrong JSON type; a float means the body was parsed
        # with binary floats, which must not happen on our own API.
        raise _wrong_type()
    amount = _bounded(_number(value))
    if amount > MAX_MONEY:
        raise PydanticCustomError("money_too_large", "must be at most {max}", {"max": str(MAX_MONEY)})
    cents = amount.quantize(CENT, context=_CONTEXT)
    if cents != amount:
        raise PydanticCustomError("money_precision", "must have at most 2 decimal places")
    return cents if cents else ZERO


def neighbour_amount(value: Any) -> Decimal:
    """The neighbour cent rule: a neighbour's JavaScript double as the whole cent it stands for.

    Accepts a JSON number (read as Decimal, or an int), or a numeric string
    (the neighbours' schemas are ``Number``, but mongoose also stores a cast
    string); refuses a value further than 1e-6 from every cent.
    """
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise _wrong_type() from None
    amount = _bounded(_number(value))
    try:
        cents = amount.quantize(CENT, rounding=ROUND_HALF_EVEN, context=_CONTEXT)
    except InvalidOperation:  # pragma: no cover - bounded above
        raise PydanticCustomError(
            "money_too_large", "must be at most {max}", {"max": str(MAX_MONEY)}
        ) from None
    if abs(_CONTEXT.subtract(amount, cents)) > NEIGHBOUR_TOLERANCE:
        raise PydanticCustomError(
            "money_not_cents",
            "must be a whole number of cents (within {tolerance})",
            {"tolerance": str(NEIGHBOUR_TOLERANCE)},
        )
    if cents > MAX_MONEY:
        raise PydanticCustomError("money_too_large", "must be at most {max}", {"max": str(MAX_MONEY)})
    return cents if cents else ZERO


def _positive(amount: Decimal) -> Decimal:
    if amount <= 0:
        raise PydanticCustomError("money_not_positive", "must be greater than 0")
    return amount


#: An amount from a neighbouring service (checkout, order service), by the neighbour cent rule.
NeighbourAmount = Annotated[
    Decimal, BeforeValidator(neighbour_amount, json_schema_input_type=Annotated[float, Field(ge=0)])
]
#: The same, more than zero (a refund's ``price``).
PositiveNeighbourAmount = Annotated[
    Decimal,
    BeforeValidator(
        lambda value: _positive(neighbour_amount(value)),
        json_schema_input_type=Annotated[float, Field(gt=0)],
    ),
]
