"""Request validation of the HTTP API: the JSON body parser and the request models.

Routes call :func:`parse_json_body` on the raw body, then :func:`validate` with
a model, and get either a validated model or a typed error the problem+json
handler answers with (``shared.errors``):

- **400** ``bad_request``: the body is not JSON, not a JSON object, or a field
  has the wrong JSON type (a string where a number belongs, ``null``, a list...).
- **422** ``validation_error``: well-formed JSON of the right types whose
  values are invalid (a card number failing the Luhn check, a past expiry
  date, three decimals of money), and missing required fields.

Either way ``errors`` names every bad field (by its wire name) with a message
that never contains the value sent: card data must not come back in an answer
or reach a log.  No input, however odd, makes these functions raise anything
but those two errors.

Money never passes through a binary float: the parser reads every JSON number
with a fraction or an exponent as a :class:`~decimal.Decimal`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails, PydanticCustomError

from shared.errors import BadRequest, ServiceError, ValidationFailed
from shared.money import MAX_MONEY, client_amount
from shared.pan import luhn_valid, normalize_pan
from shared.wire import OBJECT_ID_PATTERN, object_id_text, object_id_value

M = TypeVar("M", bound=BaseModel)

#: Deepest nesting of arrays and objects a body may have.  Our bodies are flat;
#: the limit only keeps hostile input away from recursive code.
MAX_DEPTH = 32

PAN_MIN_DIGITS, PAN_MAX_DIGITS = 12, 19
HOLDER_NAME_MAX = 100


_EXPIRE_DATE = re.compile(r"([0-9]{2})/([0-9]{2}|[0-9]{4})")
_EXPIRE_DATE_PATTERN = "^(0[1-9]|1[0-2])/([0-9]{2}|20[0-9]{2})$"
_CVV = re.compile(r"[0-9]{3}")
_CVV_PATTERN = "^[0-9]{3}$"

# Bidirectional overrides and isolates can make a name display as something
# else (the "Trojan Source" trick), so a holder name may not contain them.
# Zero-width joiners stay allowed: some scripts need them to spell names.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Cc: control characters; Cs: lone surrogates (JSON "\ud800" escapes), which
# cannot even be encoded for storage; Zl/Zp: line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})

# Pydantic's own error types that mean "wrong JSON type".  Our validators raise
# "type_error_*" for the same thing; see _is_type_error.
_BUILTIN_TYPE_ERRORS = frozenset(
    {
        "bool_parsing",
        "decimal_parsing",
        "float_parsing",
        "int_from_float",
        "int_parsing",
        "is_instance_of",
        "none_required",
        "string_unicode",
    }
)
_BUILTIN_MESSAGES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "decimal_type": "must be a number",
    "float_type": "must be a number",
    "bool_type": "must be a boolean",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "list_type": "must be a JSON array",
}


# --------------------------------------------------------------------------
# The body parser
# --------------------------------------------------------------------------


def _reject_constant(_name: str) -> NoReturn:
    # json.loads accepts NaN, Infinity and -Infinity although JSON does not;
    # a NaN balance would compare false with everything and slip past checks.
    raise BadRequest(
        "the body is not valid JSON: NaN and Infinity are not JSON numbers",
        errors=[{"field": "body", "message": "NaN and Infinity are not JSON numbers"}],
    )


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        # An exponent beyond what Decimal can represent (1e999999999999999999).
        raise BadRequest(
            "the body holds a number out of range",
            errors=[{"field": "body", "message": "holds a number out of range"}],
        ) from None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        # Refused rather than "last one wins": two parsers of the same body
        # (a proxy, a log pipeline, this service) must not disagree on which
        # cardNumber or money it carried.
        seen: set[str] = set()
        duplicate = "a key"
        for key, _ in pairs:
            if key in seen:
                # Named only when it is plainly a field name, not arbitrary text.
                if len(key) <= 64 and key.isascii() and key.isprintable():
                    duplicate = repr(key)
                break
            seen.add(key)
        raise BadRequest(
            f"the body has {duplicate} more than once in the same object",
            errors=[{"field": "body", "message": "has a duplicate key in an object"}],
        )
    return obj


def _too_deep(data: Any, limit: int) -> bool:
    # Iterative, so measuring the depth is not itself recursion-bound.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json_body(raw: bytes) -> Any:
    """The JSON value of a request body, with every non-integer number a ``Decimal``.

    Raises :class:`BadRequest` for an empty body, invalid UTF-8, invalid JSON,
    NaN/Infinity, duplicate keys in an object, or nesting deeper than
    :data:`MAX_DEPTH`.  Any JSON value is returned; :func:`validate` insists
    on an object.
    """
    if not raw.strip():
        raise BadRequest("a JSON object is required", errors=[{"field": "body", "message": "is required"}])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest(
            "the body is not valid UTF-8", errors=[{"field": "body", "message": "is not valid UTF-8"}]
        ) from None
    try:
        data = json.loads(
            text, parse_float=_decimal, parse_constant=_reject_constant, object_pairs_hook=_object
        )
    except RecursionError:
        data = None
        too_deep = True
    except json.JSONDecodeError as exc:
        # exc.msg is the parser's fixed wording ("Expecting value"), never a piece of the body.
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            errors=[{"field": "body", "message": "is not valid JSON"}],
        ) from None
    except ValueError:
        # Python refuses to read integers of more than 4300 digits.
        raise BadRequest(
            "the body holds a number too long to read",
            errors=[{"field": "body", "message": "holds a number too long to read"}],
        ) from None
    else:
        too_deep = isinstance(data, dict | list) and _too_deep(data, MAX_DEPTH)
    if too_deep:
        raise BadRequest(
            f"the body is nested more than {MAX_DEPTH} levels deep",
            errors=[{"field": "body", "message": f"is nested more than {MAX_DEPTH} levels deep"}],
        )
    return data


# --------------------------------------------------------------------------
# Field validators: each checks the JSON type first (type_error_* -> 400), then
# the value (-> 422), and returns the normalized value.
# --------------------------------------------------------------------------


def _type_error(expected: str) -> PydanticCustomError:
    return PydanticCustomError("type_error_" + expected.replace(" ", "_"), "must be " + expected)


def _holder_name(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("a string")
    name = value.strip()
    # Length first, so a megabyte of text is refused before it is scanned.
    if len(name) > HOLDER_NAME_MAX:
        raise PydanticCustomError(
            "card_holder_name_too_long", "must be at most {max} characters", {"max": HOLDER_NAME_MAX}
        )
    if any(ch in _BIDI_CONTROLS or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in name):
        raise PydanticCustomError("card_holder_name_control", "must not contain control characters")
    # One spelling per name: "é" precomposed and "e" + combining accent are the same name.
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise PydanticCustomError("card_holder_name_empty", "must not be empty")
    if len(name) > HOLDER_NAME_MAX:
        raise PydanticCustomError(
            "card_holder_name_too_long", "must be at most {max} characters", {"max": HOLDER_NAME_MAX}
        )
    return name


def _card_number(value: Any) -> str:
    # bool first: it is an int subclass.  Decimal means a JSON number with a
    # fraction or exponent, which cannot be a card number and is refused as a
    # wrong type, like a float (which only a Python caller could pass).
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _type_error("a string or an integer")
    try:
        digits = normalize_pan(value)
    except ValueError as exc:
        # normalize_pan's messages never contain the value (shared.pan's contract).
        raise PydanticCustomError("card_number_format", "{reason}", {"reason": str(exc)}) from None
    if not PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS:
        raise PydanticCustomError(
            "card_number_length",
            "must have {min} to {max} digits",
            {"min": PAN_MIN_DIGITS, "max": PAN_MAX_DIGITS},
        )
    if not luhn_valid(digits):
        raise PydanticCustomError("card_number_luhn", "is not a valid card number (the check digit is wrong)")
    return digits


def _today() -> date:
    """Today in UTC; a function so that tests can move the calendar."""
    return datetime.now(UTC).date()


def _expire_date(value: Any) -> str:
    if not isinstance(value, str):
        raise _type_error("a string")
    match = _EXPIRE_DATE.fullmatch(value)
    if match is None:
        raise PydanticCustomError("expire_date_format", "must be in the form MM/YY or MM/YYYY")
    month, year_text = int(match[1]), match[2]
    if not 1 <= month <= 12:
        raise PydanticCustomError("expire_date_month", "must have a month from 01 to 12")
    year = 2000 + int(year_text) if len(year_text) == 2 else int(year_text)
    if not 2000 <= year <= 2099:
        raise PydanticCustomError("expire_date_year", "must have a year from 2000 to 2099")
    today = _today()
    # A card is valid through the last day of its expiry month.
    if (year, month) < (today.year, today.month):
        raise PydanticCustomError("card_expired", "is in the past: the card has expired")
    return f"{month:02d}/{year % 100:02d}"


def _cvv(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _type_error("a string or an integer")
    if isinstance(value, int):
        # An integer has lost any leading zero: 12 may have been "012" or a
        # typo, so only 100..999 are taken as numbers.
        if not 100 <= value <= 999:
            raise PydanticCustomError(
                "cvv_format", "must be exactly three digits; send it as a string if it starts with zero"
            )
        return str(value)
    if _CVV.fullmatch(value) is None:
        raise PydanticCustomError("cvv_format", "must be exactly three digits")
    return value


def object_id(value: str, field: str) -> str:
    """The lowercase form of a 24-hex-digit ObjectId from a path or query parameter.

    Raises :class:`ValidationFailed` naming ``field`` otherwise, so that a
    malformed id is a 422, never a 500 from the database driver.
    """
    text = object_id_text(value)
    if text is None:
        raise ValidationFailed(
            f"{field} is not a valid id",
            errors=[{"field": field, "message": "must be a 24-character hexadecimal id"}],
        )
    return text


# --------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------

# json_schema_input_type states what the wire accepts, for the OpenAPI
# document; the validators are the truth and the schemas follow them.
HolderName = Annotated[
    str,
    BeforeValidator(
        _holder_name,
        json_schema_input_type=Annotated[str, Field(min_length=1, max_length=HOLDER_NAME_MAX)],
    ),
]
CardNumber = Annotated[str, BeforeValidator(_card_number, json_schema_input_type=str | int)]
ExpireDate = Annotated[
    str,
    BeforeValidator(_expire_date, json_schema_input_type=Annotated[str, Field(pattern=_EXPIRE_DATE_PATTERN)]),
]
Cvv = Annotated[
    SecretStr,
    BeforeValidator(
        _cvv,
        json_schema_input_type=Annotated[str, Field(pattern=_CVV_PATTERN)]
        | Annotated[int, Field(ge=100, le=999)],
    ),
]
Money = Annotated[
    Decimal,
    BeforeValidator(
        client_amount,
        # float for the document only ("type": "number"); the value is a Decimal.
        json_schema_input_type=Annotated[float, Field(ge=0, le=float(MAX_MONEY))],
    ),
]
OptionalObjectId = Annotated[
    str | None,
    BeforeValidator(
        lambda value: None if value is None else object_id_value(value),
        json_schema_input_type=Annotated[str, Field(pattern=OBJECT_ID_PATTERN)] | None,
    ),
]


def _field_title(name: str, _info: Any) -> str:
    # "Card holder name", not pydantic's "Cardholdername" made from the alias.
    return name.replace("_", " ").capitalize()


class RequestModel(BaseModel):
    """Base of the request bodies: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        field_title_generator=_field_title,
        # Only the wire names: {"card_number": ...} is an unknown key, ignored.
        validate_by_name=False,
        validate_by_alias=True,
        # Unknown keys are ignored, not refused: old clients send cardUserId,
        # which must never be read (the owner comes from the token).
        extra="ignore",
        # Every field has a before-validator that checks the JSON type itself;
        # strict mode behind it makes sure nothing is coerced on the way.
        strict=True,
        frozen=True,
        # A ValidationError that reaches a log must not carry card data.
        hide_input_in_errors=True,
    )


class AddCardRequest(RequestModel):
    """Body of ``POST /api/payment/add``: a new card of the caller."""

    card_holder_name: HolderName = Field(
        description="Name on the card; surrounding spaces removed, 1 to 100 characters, "
        "no control characters.",
        examples=["Ada Lovelace"],
    )
    card_number: CardNumber = Field(
        # repr=False: the number must not reach a log through repr() of the request.
        repr=False,
        description="12 to 19 digits passing the Luhn check, as a string (spaces and dashes "
        "allowed) or a JSON integer. Never returned: reads show it masked.",
        examples=["4242 4242 4242 4242"],
    )
    expire_date: ExpireDate = Field(
        description="Expiry month, MM/YY or MM/YYYY, not in the past; stored as MM/YY.",
        examples=["12/30"],
    )
    cvv: Cvv = Field(
        repr=False,
        description='Exactly three digits, as a string ("012" keeps its zero) or an integer '
        "from 100 to 999. Never stored in clear, never returned.",
        examples=["123"],
        json_schema_extra={"writeOnly": True},
    )
    money: Money = Field(
        description="Starting balance of the card: a JSON number (not a string) from 0 to "
        "999999999999.99 with at most 2 decimal places.",
        examples=[100.5],
    )


class PayRequest(RequestModel):
    """Optional body of ``POST /api/payment/pay/{checkoutId}``.

    ``cardId`` may instead come as the ``?cardId=`` query parameter, as old
    clients send it, so it is optional here; the route requires one of the two.
    """

    card_id: OptionalObjectId = Field(
        default=None,
        description="The card to pay with: a 24-character hexadecimal id.",
        examples=["65a1f0c2e4b0a1b2c3d4e5f6"],
    )


# --------------------------------------------------------------------------
# Mapping pydantic errors to ours
# --------------------------------------------------------------------------


def _is_type_error(error_type: str) -> bool:
    return (
        error_type.startswith("type_error")
        or error_type.endswith("_type")
        or error_type in _BUILTIN_TYPE_ERRORS
    )


def _message(error: ErrorDetails) -> str:
    error_type = error["type"]
    if error_type in _BUILTIN_MESSAGES:
        return _BUILTIN_MESSAGES[error_type]
    if error_type in {"value_error", "assertion_error"}:
        # The text of a ValueError raised by library code may quote the input.
        return "is not valid"
    # Our own messages, and pydantic's, are fixed wording plus limits; the
    # input is never interpolated into them.
    return error["msg"]


def _as_service_error(exc: ValidationError) -> ServiceError:
    errors: list[dict[str, str]] = []
    wrong_type = False
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        wrong_type = wrong_type or _is_type_error(error["type"])
        entry = {"field": ".".join(str(part) for part in error["loc"]) or "body", "message": _message(error)}
        if entry not in errors:
            errors.append(entry)
    fields = ", ".join(dict.fromkeys(entry["field"] for entry in errors))
    # A missing field is a 422, not a 400: the body is a well-formed JSON
    # object and nothing in it has a wrong type; it is incomplete, which is
    # invalid content.  A 400 is reserved for bodies a client cannot have
    # meant (not JSON, not an object, a string where a number belongs).
    if wrong_type:
        return BadRequest(f"the body has values of the wrong JSON type: {fields}", errors=errors)
    return ValidationFailed(f"the body has invalid values: {fields}", errors=errors)


def validate(model: type[M], data: Any) -> M:
    """``data`` (from :func:`parse_json_body`) validated as ``model``.

    Raises :class:`BadRequest` if ``data`` is not an object or any field has a
    wrong JSON type, else :class:`ValidationFailed` if any field is invalid or
    missing; both list every bad field.
    """
    if not isinstance(data, dict):
        raise BadRequest(
            "the body must be a JSON object", errors=[{"field": "body", "message": "must be a JSON object"}]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # from None: the chained ValidationError would only repeat the errors in a log.
        raise _as_service_error(exc) from None
