"""Request validation: the JSON body parser, the request models and the 400/422 split."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from shared.errors import BadRequest, ServiceError, ValidationFailed
from shared.pan import luhn_valid
from web import schemas
from web.schemas import AddCardRequest, PayRequest, object_id, parse_json_body, validate

VISA = "4242424242424242"
AMEX = "378282246310005"
CVV = "987"
OBJECT_ID = "65a1f0c2e4b0a1b2c3d4e5f6"

#: Every test runs on 15 June 2025 unless it moves the calendar itself.
TODAY = date(2025, 6, 15)
ORIGINAL_TODAY = schemas._today

VALID: dict[str, str] = {
    "cardHolderName": '"Ada Lovelace"',
    "cardNumber": f'"{VISA}"',
    "expireDate": '"12/30"',
    "cvv": f'"{CVV}"',
    "money": "100.50",
}


@pytest.fixture(autouse=True)
def fixed_today(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schemas, "_today", lambda: TODAY)


def body(**raw_values: str | None) -> bytes:
    """A valid add-card body with some fields replaced by raw JSON text (None drops the field)."""
    fields = {**VALID, **raw_values}
    members = ", ".join(f'"{name}": {value}' for name, value in fields.items() if value is not None)
    return f"{{{members}}}".encode()


def add_card(raw: bytes) -> AddCardRequest:
    return validate(AddCardRequest, parse_json_body(raw))


def with_check_digit(prefix: str) -> str:
    return next(prefix + digit for digit in "0123456789" if luhn_valid(prefix + digit))


def error_of(raised: pytest.ExceptionInfo[ServiceError], field: str) -> str:
    messages = [error["message"] for error in raised.value.errors if error["field"] == field]
    assert messages, f"{field} not named in {raised.value.errors}"
    return messages[0]


def everything_said(error: ServiceError) -> str:
    return json.dumps(error.to_dict()) + str(error) + repr(error)


# --------------------------------------------------------------------------
# A valid body
# --------------------------------------------------------------------------


def test_a_valid_body_becomes_a_card_request_with_normalized_values() -> None:
    request = add_card(
        body(
            cardHolderName='"  Ada Lovelace "',
            cardNumber='"4242 4242-4242 4242"',
            expireDate='"12/2030"',
            cvv='"012"',
            money="100.5",
        )
    )
    assert request.card_holder_name == "Ada Lovelace"
    assert request.card_number == VISA
    assert type(request.card_number) is str
    assert request.expire_date == "12/30"
    assert request.cvv.get_secret_value() == "012"
    assert request.money == Decimal("100.50")
    assert str(request.money) == "100.50"


def test_the_body_owner_field_is_ignored_because_the_owner_comes_from_the_token() -> None:
    request = add_card(body(cardUserId='"someone-else"', somethingNew='{"nested": [1, 2]}'))
    assert not hasattr(request, "card_user_id")
    assert "cardUserId" not in request.model_dump(by_alias=True)
    assert "someone-else" not in repr(request)


def test_python_field_names_in_the_body_are_not_wire_names_and_count_as_missing() -> None:
    raw = json.dumps(
        {"card_number": VISA, "cardHolderName": "Ada", "expireDate": "12/30", "cvv": CVV, "money": 1}
    )
    with pytest.raises(ValidationFailed) as raised:
        add_card(raw.encode())
    assert raised.value.errors == [{"field": "cardNumber", "message": "is required"}]


def test_a_validated_request_cannot_be_changed() -> None:
    request = add_card(body())
    with pytest.raises(ValueError, match="frozen"):
        request.money = Decimal(0)


# --------------------------------------------------------------------------
# parse_json_body
# --------------------------------------------------------------------------


def test_fractional_numbers_are_decimals_so_point_one_plus_point_two_is_point_three() -> None:
    point_one = parse_json_body(b'{"money": 0.1}')["money"]
    point_two = parse_json_body(b'{"money": 0.2}')["money"]
    assert isinstance(point_one, Decimal)
    assert point_one + point_two == Decimal("0.3")
    assert add_card(body(money="0.1")).money + add_card(body(money="0.2")).money == Decimal("0.30")


def test_integers_stay_integers_and_nesting_up_to_the_limit_is_accepted() -> None:
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    deep = b"[" * schemas.MAX_DEPTH + b"]" * schemas.MAX_DEPTH
    assert parse_json_body(deep) is not None


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        pytest.param(b"", "a JSON object is required", id="empty"),
        pytest.param(b"  \r\n\t ", "a JSON object is required", id="only-whitespace"),
        pytest.param(b'{"cardHolderName": "\xff"}', "not valid UTF-8", id="invalid-utf8"),
        pytest.param("\ufeff{}".encode(), "not valid JSON", id="byte-order-mark"),
        pytest.param(b'{"money": 1,}', "not valid JSON", id="trailing-comma"),
        pytest.param(b"{'money': 1}", "not valid JSON", id="single-quotes"),
        pytest.param(b'{"money": 01}', "not valid JSON", id="leading-zero"),
        pytest.param(b'{"a": 1} {"b": 2}', "not valid JSON", id="two-documents"),
        pytest.param(b'{"money": NaN}', "NaN and Infinity", id="nan"),
        pytest.param(b'{"money": Infinity}', "NaN and Infinity", id="infinity"),
        pytest.param(b'{"money": -Infinity}', "NaN and Infinity", id="minus-infinity"),
        pytest.param(b'{"money": 1e999999999999999999999}', "out of range", id="exponent-beyond-decimal"),
        pytest.param(b'{"money": ' + b"9" * 5000 + b"}", "too long", id="5000-digit-integer"),
        pytest.param(b'{"money": 1, "money": 2}', "'money' more than once", id="duplicate-key"),
        pytest.param(b'{"a": {"b": 1, "b": 2}}', "'b' more than once", id="nested-duplicate-key"),
        pytest.param(b"[" * 33 + b"]" * 33, "nested more than 32", id="depth-33"),
        pytest.param(b'{"a":' * 40 + b"1" + b"}" * 40, "nested more than 32", id="object-depth-40"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested more than 32", id="depth-100000"),
        pytest.param(b"[" * 100_000, "", id="unclosed-depth-100000"),
    ],
)
def test_a_body_that_is_not_usable_json_is_a_400(raw: bytes, detail: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_json_body(raw)
    assert raised.value.status == 400
    assert detail in raised.value.detail
    assert raised.value.errors[0]["field"] == "body"


@pytest.mark.parametrize("raw", [b"[]", b"[{}]", b'"card"', b"1", b"1.5", b"null", b"true"])
def test_a_json_value_that_is_not_an_object_is_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest) as raised:
        validate(AddCardRequest, parse_json_body(raw))
    assert raised.value.detail == "the body must be a JSON object"


# --------------------------------------------------------------------------
# 400 or 422, and every bad field named
# --------------------------------------------------------------------------


def test_an_empty_object_is_a_422_naming_every_required_field_as_required() -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(b"{}")
    assert raised.value.status == 422
    assert raised.value.code == "validation_error"
    assert raised.value.errors == [
        {"field": field, "message": "is required"}
        for field in ("cardHolderName", "cardNumber", "expireDate", "cvv", "money")
    ]


def test_invalid_values_of_the_right_types_are_a_422_naming_every_bad_field() -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(cardNumber='"4242424242424241"', expireDate='"13/30"', cvv='"12"', money="10.123"))
    assert [error["field"] for error in raised.value.errors] == ["cardNumber", "expireDate", "cvv", "money"]
    assert "cardNumber" in raised.value.detail


def test_one_wrong_type_makes_the_whole_answer_a_400_that_still_names_every_bad_field() -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(money='"10"', cardNumber='"4242424242424241"', cvv=None))
    assert raised.value.status == 400
    assert raised.value.code == "bad_request"
    assert {error["field"] for error in raised.value.errors} == {"money", "cardNumber", "cvv"}
    assert error_of(raised, "money") == "must be a number"
    assert error_of(raised, "cvv") == "is required"


# --------------------------------------------------------------------------
# cardHolderName
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ('"Ada"', "Ada"),
        ('"  Ada Lovelace\\t"', "Ada Lovelace"),
        ('"Zoë Ångström"', "Zoë Ångström"),
        ('"Zoe\\u0308"', "Zo\u00eb"),  # combining diaeresis composed into one character (NFC)
        ('"李小龍"', "李小龍"),
        ('"\\u0645\\u200c\\u0646"', "\u0645\u200c\u0646"),  # zero-width non-joiner spells Persian names
        ('"' + "a" * 100 + '"', "a" * 100),
        ('"  ' + "a" * 100 + '  "', "a" * 100),
    ],
)
def test_a_holder_name_is_stripped_and_normalized(raw: str, name: str) -> None:
    assert add_card(body(cardHolderName=raw)).card_holder_name == name


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('""', "must not be empty"),
        ('"   "', "must not be empty"),
        ('"' + "a" * 101 + '"', "must be at most 100 characters"),
        ('"' + "a" * 1_000_000 + '"', "must be at most 100 characters"),
        ('"Ada\\nLovelace"', "must not contain control characters"),
        ('"Ada\\u0000"', "must not contain control characters"),
        ('"Ada\\u007f"', "must not contain control characters"),
        ('"Ada\\u0085x"', "must not contain control characters"),
        ('"Ada\\u2028x"', "must not contain control characters"),
        ('"Ada\\u202eecilA"', "must not contain control characters"),
        ('"Ada\\ud800"', "must not contain control characters"),
    ],
)
def test_an_invalid_holder_name_is_a_422(raw: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(cardHolderName=raw))
    assert error_of(raised, "cardHolderName") == message


@pytest.mark.parametrize("raw", ["null", "42", "true", '["Ada"]', '{"first": "Ada"}'])
def test_a_holder_name_that_is_not_a_string_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(cardHolderName=raw))
    assert error_of(raised, "cardHolderName") == "must be a string"


# --------------------------------------------------------------------------
# cardNumber
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        (f'"{VISA}"', VISA),
        ('"4242 4242 4242 4242"', VISA),
        ('"4242-4242-4242-4242"', VISA),
        (VISA, VISA),
        (f'"{AMEX}"', AMEX),
        ('"3782 822463 10005"', AMEX),
        ('"5555555555554444"', "5555555555554444"),
        ('"6011111111111117"', "6011111111111117"),
        (f'"{with_check_digit("42424242424")}"', with_check_digit("42424242424")),
        (f'"{with_check_digit("424242424242424242")}"', with_check_digit("424242424242424242")),
    ],
)
def test_a_card_number_is_kept_as_a_plain_digit_string(raw: str, digits: str) -> None:
    request = add_card(body(cardNumber=raw))
    assert request.card_number == digits
    assert type(request.card_number) is str


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('"4242424242424241"', "is not a valid card number (the check digit is wrong)"),
        ("4242424242424241", "is not a valid card number (the check digit is wrong)"),
        (f'"{with_check_digit("4242424242")}"', "must have 12 to 19 digits"),
        (f'"{with_check_digit("4242424242424242424")}"', "must have 12 to 19 digits"),
        ('"0"', "must have 12 to 19 digits"),
        ("0", "must have 12 to 19 digits"),
        ("1" * 400, "has far too many digits"),
        ('"' + "4" * 100_000 + '"', "must have 12 to 19 digits"),
        ('"4242 4242 4242 424x"', "may contain only digits, spaces and dashes"),
        ('"4242.4242.4242.4242"', "may contain only digits, spaces and dashes"),
        ('"4242/4242/4242/4242"', "may contain only digits, spaces and dashes"),
        (
            '"\\u0664\\u0662\\u0664\\u0662\\u0664\\u0662\\u0664\\u0662\\u0664\\u0662\\u0664\\u0662"',
            "may contain only",
        ),
        ('""', "may contain only digits, spaces and dashes"),
        ('"- -"', "must contain digits"),
        ("-4242424242424242", "must not be negative"),
    ],
)
def test_an_invalid_card_number_is_a_422(raw: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(cardNumber=raw))
    assert error_of(raised, "cardNumber").startswith(message)


@pytest.mark.parametrize(
    "raw", ["4242424242424242.0", "4.242424242424242e15", "true", "null", f'["{VISA}"]', "{}"]
)
def test_a_card_number_that_is_neither_a_string_nor_an_integer_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(cardNumber=raw))
    assert error_of(raised, "cardNumber") == "must be a string or an integer"


# --------------------------------------------------------------------------
# expireDate
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ('"12/30"', "12/30"),
        ('"12/2030"', "12/30"),
        ('"01/2031"', "01/31"),
        ('"06/25"', "06/25"),
        ('"06/2025"', "06/25"),
        ('"07/25"', "07/25"),
        ('"12/99"', "12/99"),
        ('"12/2099"', "12/99"),
    ],
)
def test_an_expiry_date_this_month_or_later_is_accepted_as_mm_yy(raw: str, normalized: str) -> None:
    assert add_card(body(expireDate=raw)).expire_date == normalized


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('"05/25"', "is in the past: the card has expired"),
        ('"05/2025"', "is in the past: the card has expired"),
        ('"12/24"', "is in the past: the card has expired"),
        ('"01/00"', "is in the past: the card has expired"),
        ('"12/2100"', "must have a year from 2000 to 2099"),
        ('"12/1999"', "must have a year from 2000 to 2099"),
        ('"13/30"', "must have a month from 01 to 12"),
        ('"00/30"', "must have a month from 01 to 12"),
        ('"1/30"', "must be in the form MM/YY or MM/YYYY"),
        ('"12/030"', "must be in the form MM/YY or MM/YYYY"),
        ('"12-30"', "must be in the form MM/YY or MM/YYYY"),
        ('"1230"', "must be in the form MM/YY or MM/YYYY"),
        ('" 12/30"', "must be in the form MM/YY or MM/YYYY"),
        ('"12/30\\n"', "must be in the form MM/YY or MM/YYYY"),
        ('"\\u0661\\u0662/30"', "must be in the form MM/YY or MM/YYYY"),
        ('""', "must be in the form MM/YY or MM/YYYY"),
    ],
)
def test_an_invalid_or_past_expiry_date_is_a_422(raw: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(expireDate=raw))
    assert error_of(raised, "expireDate") == message


@pytest.mark.parametrize(("today", "accepted"), [(date(2025, 6, 30), True), (date(2025, 7, 1), False)])
def test_a_card_is_valid_through_the_last_day_of_its_expiry_month(
    monkeypatch: pytest.MonkeyPatch, today: date, accepted: bool
) -> None:
    monkeypatch.setattr(schemas, "_today", lambda: today)
    if accepted:
        assert add_card(body(expireDate='"06/25"')).expire_date == "06/25"
    else:
        with pytest.raises(ValidationFailed):
            add_card(body(expireDate='"06/25"'))


def test_today_is_the_current_utc_date() -> None:
    # The autouse fixture replaced the module function; ORIGINAL_TODAY kept the real one.
    assert ORIGINAL_TODAY() in {datetime.now(UTC).date(), (datetime.now(UTC) - timedelta(seconds=5)).date()}


@pytest.mark.parametrize("raw", ["1230", "12.30", "null", "true", '["12/30"]'])
def test_an_expiry_date_that_is_not_a_string_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(expireDate=raw))
    assert error_of(raised, "expireDate") == "must be a string"


# --------------------------------------------------------------------------
# cvv
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "cvv"), [('"012"', "012"), ('"000"', "000"), ('"999"', "999"), ("123", "123"), ("100", "100")]
)
def test_a_cvv_is_three_digits_and_a_leading_zero_is_kept(raw: str, cvv: str) -> None:
    request = add_card(body(cvv=raw))
    assert request.cvv.get_secret_value() == cvv


@pytest.mark.parametrize(
    "raw",
    ['"12"', '"1234"', '"12a"', '" 123"', '""', '"\\u0661\\u0662\\u0663"', "12", "99", "1000", "0", "-123"],
)
def test_a_cvv_that_is_not_exactly_three_digits_is_a_422(raw: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(cvv=raw))
    assert error_of(raised, "cvv").startswith("must be exactly three digits")


@pytest.mark.parametrize("raw", ["123.0", "1.23e2", "true", "null", '["123"]'])
def test_a_cvv_that_is_neither_a_string_nor_an_integer_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(cvv=raw))
    assert error_of(raised, "cvv") == "must be a string or an integer"


# --------------------------------------------------------------------------
# money
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "amount"),
    [
        ("10", "10.00"),
        ("10.10", "10.10"),
        ("10.1", "10.10"),
        ("10.100", "10.10"),
        ("100.5", "100.50"),
        ("1E+2", "100.00"),
        ("1e2", "100.00"),
        ("1e-1", "0.10"),
        ("0", "0.00"),
        ("0.00", "0.00"),
        ("-0", "0.00"),
        ("-0.0", "0.00"),
        ("-0.00", "0.00"),
        ("-0e5", "0.00"),
        ("0.01", "0.01"),
        ("999999999999.99", "999999999999.99"),
        ("1e-99999", None),
    ],
)
def test_money_is_a_decimal_with_exactly_two_places(raw: str, amount: str | None) -> None:
    if amount is None:  # a tiny but nonzero amount has more than 2 decimals
        with pytest.raises(ValidationFailed):
            add_card(body(money=raw))
        return
    money = add_card(body(money=raw)).money
    assert isinstance(money, Decimal)
    assert str(money) == amount
    assert money.as_tuple().exponent == -2


@pytest.mark.parametrize("raw", ["-0", "-0.0", "-0.00"])
def test_negative_zero_money_is_accepted_as_a_zero_that_is_not_negative(raw: str) -> None:
    money = add_card(body(money=raw)).money
    assert money == 0
    assert not money.is_signed()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("10.123", "must have at most 2 decimal places"),
        ("0.001", "must have at most 2 decimal places"),
        ("1e-3", "must have at most 2 decimal places"),
        ("0.1000000000000000055511151231257827", "must have at most 2 decimal places"),
        ("-1", "must not be negative"),
        ("-0.01", "must not be negative"),
        ("-1e999999", "must not be negative"),
        ("1000000000000", "must be at most 999999999999.99"),
        ("999999999999.991", "must be at most 999999999999.99"),
        ("1e999999", "must be at most 999999999999.99"),
        ("9" * 4000, "must be at most 999999999999.99"),
    ],
)
def test_invalid_money_is_a_422(raw: str, message: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        add_card(body(money=raw))
    assert error_of(raised, "money") == message


@pytest.mark.parametrize(
    "raw", ['"10"', '"10.50"', '"0"', '""', "true", "false", "null", "[10]", '{"amount": 10}']
)
def test_money_that_is_not_a_json_number_is_a_400(raw: str) -> None:
    with pytest.raises(BadRequest) as raised:
        add_card(body(money=raw))
    assert error_of(raised, "money") == "must be a number"


@pytest.mark.parametrize(
    "value", [Decimal("NaN"), Decimal("sNaN"), Decimal("Infinity"), Decimal("-Infinity")]
)
def test_a_non_finite_decimal_from_a_python_caller_is_refused(value: Decimal) -> None:
    data = {**json.loads(body()), "money": value}
    with pytest.raises(ValidationFailed) as raised:
        validate(AddCardRequest, data)
    assert error_of(raised, "money") == "must be a finite number"


def test_a_binary_float_from_a_python_caller_is_refused_as_a_wrong_type() -> None:
    data = {**json.loads(body()), "money": 0.1}
    with pytest.raises(BadRequest):
        validate(AddCardRequest, data)


# --------------------------------------------------------------------------
# Card data never comes back
# --------------------------------------------------------------------------

SECRET_CASES = [
    pytest.param(body(cvv=f'"{CVV}x"'), id="bad-cvv-string"),
    pytest.param(body(cvv="9876"), id="bad-cvv-integer"),
    pytest.param(body(cvv=f'"{CVV}"', money='"10"'), id="wrong-type-elsewhere"),
    pytest.param(body(cardNumber=f'"{VISA[:-1]}1"'), id="bad-luhn"),
    pytest.param(body(cardNumber=f'"{VISA}x"'), id="bad-characters"),
    pytest.param(body(cardNumber=f"{VISA}.0"), id="number-with-fraction"),
    pytest.param(body(cardNumber=f'"{VISA}{VISA}"'), id="too-long"),
    pytest.param(body(cardNumber=f"-{VISA}"), id="negative"),
    pytest.param(body(expireDate='"01/20"'), id="expired"),
    pytest.param(body(money="-1", cardHolderName='""'), id="other-fields-bad"),
]


@pytest.mark.parametrize("raw", SECRET_CASES)
def test_no_error_ever_repeats_the_card_number_or_the_cvv(raw: bytes) -> None:
    with pytest.raises((BadRequest, ValidationFailed)) as raised:
        add_card(raw)
    said = everything_said(raised.value)
    assert VISA not in said
    assert VISA[:12] not in said
    assert CVV not in said
    # Not even through the exception chain a logger would print.
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_the_repr_of_a_validated_request_shows_neither_the_card_number_nor_the_cvv() -> None:
    request = add_card(body())
    for text in (repr(request), str(request), f"{request!r}"):
        assert VISA not in text
        assert CVV not in text
    assert "Ada Lovelace" in repr(request)


def test_the_json_dump_of_a_validated_request_masks_the_cvv() -> None:
    dumped = json.loads(add_card(body()).model_dump_json(by_alias=True))
    assert dumped["cvv"] == "**********"


def test_a_pydantic_error_that_reached_a_log_would_not_show_the_input() -> None:
    with pytest.raises(ValueError, match="cardNumber") as raised:
        AddCardRequest.model_validate({"cardNumber": VISA[:-1] + "1", "cvv": CVV + "1"})
    assert VISA[:12] not in str(raised.value)
    assert CVV not in str(raised.value)


# --------------------------------------------------------------------------
# ids: PayRequest and path/query parameters
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "card_id"),
    [
        (f'{{"cardId": "{OBJECT_ID}"}}', OBJECT_ID),
        (f'{{"cardId": "{OBJECT_ID.upper()}"}}', OBJECT_ID),
        ("{}", None),
        ('{"cardId": null}', None),
        ('{"cardUserId": "x"}', None),
    ],
)
def test_a_pay_body_may_name_the_card_or_leave_it_to_the_query(raw: str, card_id: str | None) -> None:
    assert validate(PayRequest, parse_json_body(raw.encode())).card_id == card_id


@pytest.mark.parametrize(
    "value",
    ['""', '"abc"', f'"{OBJECT_ID}0"', f'"{OBJECT_ID[:-1]}"', f'"{OBJECT_ID[:-1]}g"', f'" {OBJECT_ID}"'],
)
def test_a_pay_body_card_id_that_is_not_an_object_id_is_a_422(value: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        validate(PayRequest, parse_json_body(f'{{"cardId": {value}}}'.encode()))
    assert raised.value.errors == [{"field": "cardId", "message": "must be a 24-character hexadecimal id"}]


@pytest.mark.parametrize("value", ["123", "true", f'["{OBJECT_ID}"]', f'{{"$oid": "{OBJECT_ID}"}}'])
def test_a_pay_body_card_id_that_is_not_a_string_is_a_400(value: str) -> None:
    with pytest.raises(BadRequest) as raised:
        validate(PayRequest, parse_json_body(f'{{"cardId": {value}}}'.encode()))
    assert raised.value.errors == [{"field": "cardId", "message": "must be a string"}]


@pytest.mark.parametrize(("value", "expected"), [(OBJECT_ID, OBJECT_ID), (OBJECT_ID.upper(), OBJECT_ID)])
def test_object_id_returns_the_lowercase_id(value: str, expected: str) -> None:
    assert object_id(value, "cardId") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "not-an-id",
        OBJECT_ID + "0",
        OBJECT_ID[:-1],
        OBJECT_ID[:-1] + "z",
        f"{OBJECT_ID}\n",
        "\u0660" * 24,
        "x" * 100_000,
    ],
)
@pytest.mark.parametrize("field", ["cardId", "paymentId", "checkoutId", "jobId"])
def test_object_id_refuses_anything_else_with_a_422_naming_the_field(value: str, field: str) -> None:
    with pytest.raises(ValidationFailed) as raised:
        object_id(value, field)
    assert raised.value.status == 422
    assert raised.value.errors == [{"field": field, "message": "must be a 24-character hexadecimal id"}]


# --------------------------------------------------------------------------
# JSON schema for the OpenAPI document
# --------------------------------------------------------------------------


def test_the_add_card_schema_names_the_wire_fields_with_descriptions_and_examples() -> None:
    schema = AddCardRequest.model_json_schema()
    properties = schema["properties"]
    assert set(properties) == {"cardHolderName", "cardNumber", "expireDate", "cvv", "money"}
    assert set(schema["required"]) == set(properties)
    for name, prop in properties.items():
        assert prop["description"], name
        assert prop["examples"], name
    assert properties["cardNumber"]["anyOf"] == [{"type": "string"}, {"type": "integer"}]
    assert properties["cardNumber"]["examples"] == ["4242 4242 4242 4242"]
    assert properties["money"]["type"] == "number"
    assert properties["money"]["minimum"] == 0
    assert properties["money"]["examples"] == [100.5]
    assert properties["expireDate"]["examples"] == ["12/30"]
    assert properties["cvv"]["examples"] == ["123"]
    assert properties["cvv"]["writeOnly"] is True


def test_the_schema_examples_are_themselves_valid_requests() -> None:
    properties = AddCardRequest.model_json_schema()["properties"]
    example = {name: prop["examples"][0] for name, prop in properties.items()}
    raw = json.dumps(example).encode()
    assert add_card(raw).money == Decimal("100.50")
    assert PayRequest.model_json_schema()["properties"]["cardId"]["examples"][0] == OBJECT_ID


# --------------------------------------------------------------------------
# Odd input: only BadRequest or ValidationFailed, never anything else
# --------------------------------------------------------------------------

ODD_VALUES = [
    "null",
    "true",
    "false",
    "0",
    "-0",
    "-0.0",
    "1e400",
    "-1e400",
    "1e-400",
    "1E+999999",
    "0.1",
    "12.345",
    "123456789012345678901234567890",
    "9" * 4300,
    "NaN",
    "-Infinity",
    '""',
    '" "',
    '"\\ud800"',
    '"\\udfff\\ud800"',
    '"\\u0000"',
    '"\\u202e"',
    '"' + "x" * 70_000 + '"',
    '"' + "\U0001f4b3" * 50 + '"',
    '"\u0664\u0662\u0664\u0662"',
    '"10"',
    '"-0"',
    '"NaN"',
    '"Infinity"',
    '"1e2"',
    '"12/30"',
    '"012"',
    f'"{OBJECT_ID}"',
    "[]",
    "{}",
    "[[[[[[]]]]]]",
    '{"$gt": ""}',
    '{"$oid": "' + OBJECT_ID + '"}',
    "[" * 40 + "]" * 40,
    '"\\\\"',
]


@pytest.mark.parametrize(
    "field", ["cardHolderName", "cardNumber", "expireDate", "cvv", "money", "cardId", "cardUserId"]
)
@pytest.mark.parametrize("value", ODD_VALUES)
def test_any_odd_value_in_any_field_is_a_400_a_422_or_valid(field: str, value: str) -> None:
    raw = body(**{field: value})
    for model in (AddCardRequest, PayRequest):
        error: ServiceError | None = None
        try:
            validate(model, parse_json_body(raw))
        except (BadRequest, ValidationFailed) as raised:
            error = raised
        if error is not None:
            assert error.errors, error.detail
            json.dumps(error.to_dict())  # the problem body can be written


ODD_BODIES = [
    b"\x00",
    b"\xef\xbb\xbf{}",
    b"\xc3\x28",
    b"\xed\xa0\x80",  # a UTF-8-encoded surrogate: not valid UTF-8
    b'{"money": 1e',
    b'{"money": -}',
    b'{"money": 0x10}',
    b'{"money": .5}',
    b'{"money": 5.}',
    b'{"money": +5}',
    b'{"money": Infinity1}',
    b'{"money": nan}',
    b'{"\\u0000": 1}',
    b'{"": ""}',
    b'{"cardNumber": "4242\\u0000"}',
    b"{" * 5000,
    b'{"a":[' * 20 + b"1" + b"]}" * 20,
    b"[" * 1_000_000,
    b'"' + b"\\" * 10_001,
    json.dumps({"x" * 1000: ["y" * 1000] * 50}).encode(),
    json.dumps(list(range(10_000))).encode(),
]


@pytest.mark.parametrize("raw", ODD_BODIES)
def test_any_odd_body_is_a_400_a_422_or_valid(raw: bytes) -> None:
    for model in (AddCardRequest, PayRequest):
        with contextlib.suppress(BadRequest, ValidationFailed):
            validate(model, parse_json_body(raw))


def test_every_truncation_and_single_byte_change_of_a_valid_body_is_a_400_a_422_or_valid() -> None:
    valid = body(cardNumber='"4242 4242 4242 4242"', money="-0.0")
    variants = [valid[:end] for end in range(len(valid))]
    for position in range(len(valid)):
        for replacement in (
            b"",
            b"0",
            b"9",
            b"-",
            b".",
            b"e",
            b'"',
            b"\\",
            b"{",
            b"[",
            b",",
            b"\xff",
            b"\x00",
        ):
            variants.append(valid[:position] + replacement + valid[position + 1 :])
    outcomes: set[str] = set()
    for raw in variants:
        try:
            validate(AddCardRequest, parse_json_body(raw))
        except (BadRequest, ValidationFailed) as error:
            outcomes.add(type(error).__name__)
        else:
            outcomes.add("valid")
    # The variants reach all three outcomes, so this exercised more than the parser.
    assert outcomes == {"BadRequest", "ValidationFailed", "valid"}
