"""The JSON forms of the service's own types, each defined once: ids, timestamps, amounts.

- **Object ids** are 24 hexadecimal digits in either case; the service's form
  is lowercase (ids it makes, ids it reads from paths, bodies, tokens and
  events), so one id has one spelling in the database and in answers.
- **Timestamps** are RFC 3339 date-times in UTC, written with ``Z``.
- **Amounts** are JSON numbers written from the exact Decimal, never through
  a binary float: the shortest decimal text, with at least one decimal
  (``59.9``, ``100.0``, ``0.0``), as the API has always written them.

:func:`dumps` is the JSON encoder of what the service sends (HTTP answers,
Kafka events); the pydantic types here are what the response models and the
messages are made of.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

#: An ObjectId as text: 24 hexadecimal digits, either case (the one rule for every input).
OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"
_OBJECT_ID = re.compile(OBJECT_ID_PATTERN)
OBJECT_ID_EXAMPLE = "65a1f0c2e4b0a1b2c3d4e5f6"


def object_id_text(value: object) -> str | None:
    """The service's form (lowercase) of an id written in either case; None if ``value`` is none."""
    if isinstance(value, str) and _OBJECT_ID.fullmatch(value):
        return value.lower()
    return None


def object_id_value(value: object) -> str:
    """The validator of :data:`ObjectIdText`: 400-kind error for a non-string, 422-kind for a bad id."""
    if not isinstance(value, str):
        raise PydanticCustomError("type_error_a_string", "must be a string")
    text = object_id_text(value)
    if text is None:
        raise PydanticCustomError("object_id_format", "must be a 24-character hexadecimal id")
    return text


#: An id in a model: validated by the rule above and kept lowercase.
ObjectIdText = Annotated[
    str,
    BeforeValidator(
        object_id_value,
        json_schema_input_type=Annotated[str, Field(pattern=OBJECT_ID_PATTERN, examples=[OBJECT_ID_EXAMPLE])],
    ),
    Field(pattern=OBJECT_ID_PATTERN, examples=[OBJECT_ID_EXAMPLE]),
]


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z`` (the database hands back aware UTC datetimes)."""
    return value.isoformat().replace("+00:00", "Z")


def _timestamp_or_text(value: datetime | str) -> str:
    # A stored job result keeps its timestamps as the text an answer had.
    return value if isinstance(value, str) else timestamp(value)


#: A timestamp in a model, written as :func:`timestamp` writes it.
Timestamp = Annotated[
    datetime | str,
    PlainSerializer(_timestamp_or_text, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 date-time in UTC."}),
]


def amount_text(value: Decimal) -> str:
    """The JSON number of an exact amount: its shortest decimal text, with at least one decimal."""
    if not value.is_finite():
        raise ValueError("an amount must be finite")
    text = format(value.normalize(), "f")
    if "." not in text:
        text += ".0"
    return "0.0" if text in {"-0.0", "0.0"} else text


def amount_schema(description: str) -> WithJsonSchema:
    """The JSON Schema of an amount answered: a number with at most 2 decimals."""
    return WithJsonSchema({"type": "number", "minimum": 0, "description": description, "examples": [59.97]})


#: An amount in a response model: kept as the exact Decimal until :func:`dumps` writes it.
Amount = Annotated[Decimal, amount_schema("An amount of money: a JSON number with at most 2 decimal places.")]


#: How each kind of scalar is written (bool before int: it is an int subclass).
_SCALARS: tuple[tuple[type, Callable[[Any], str]], ...] = (
    (str, json.dumps),
    (bool, lambda flag: "true" if flag else "false"),
    (int, int.__repr__),
    (Decimal, amount_text),
    (float, lambda number: json.dumps(number, allow_nan=False)),
    (datetime, lambda moment: json.dumps(timestamp(moment))),
)


def _scalar(node: Any) -> str | None:
    """The JSON text of a value that is not a container; None if it has none."""
    if node is None:
        return "null"
    for kind, write in _SCALARS:
        if isinstance(node, kind):
            return write(node)
    return None


def dumps(
    value: Any, *, separators: tuple[str, str] = (", ", ": "), default: Callable[[Any], Any] | None = None
) -> str:
    """JSON text of ``value``, amounts (``Decimal``) written exactly by :func:`amount_text`.

    Strings are escaped as :func:`json.dumps` escapes them (ASCII only); keys
    keep their order; ``default`` turns any other value into one of these.
    """
    item_sep, key_sep = separators
    parts: list[str] = []
    put = parts.append

    def encode(node: Any) -> None:
        text = _scalar(node)
        if text is not None:
            put(text)
        elif isinstance(node, dict):
            put("{")
            for index, (key, item) in enumerate(node.items()):
                put(f"{item_sep if index else ''}{json.dumps(str(key))}{key_sep}")
                encode(item)
            put("}")
        elif isinstance(node, list | tuple):
            put("[")
            for index, item in enumerate(node):
                if index:
                    put(item_sep)
                encode(item)
            put("]")
        elif default is not None:
            encode(default(node))
        else:
            raise TypeError(f"{type(node).__name__} is not JSON serializable")

    encode(value)
    return "".join(parts)
