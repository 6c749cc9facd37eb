"""Card numbers are masked out of text, JSON messages and log lines, and nothing else is.

What can be a card number: 12-19 digits passing the Luhn check, in one piece
or grouped with spaces, double spaces, dashes or dots, in any grouping, even
right after a letter or written as a float.  Other numbers (runtimes,
amounts, ids) pass unchanged, and JSON stays JSON.
"""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from hypothesis import assume, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from shared import pan
from shared.logs import JsonFormatter, log_context
from shared.pan import luhn_valid, scrub_data, scrub_message, scrub_text

VISA = "4242424242424242"
AMEX = "378282246310005"
PAYMENT = "6b097261b5718c6fb43e0f96"


def digits_of(text: str) -> str:
    return re.sub(r"[^0-9]", "", text)


# -- text ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4242424242424242", "************4242"),
        ("4242 4242 4242 4242", "**** **** **** 4242"),
        ("4242  4242  4242  4242", "****  ****  ****  4242"),
        ("4242-4242-4242-4242", "****-****-****-4242"),
        ("4242.4242.4242.4242", "****.****.****.4242"),
        ("3782 822463 10005", "**** ****** *0005"),
        ("4.242424242424242e15", "************4242"),
        ("4.242424242424242E+15", "************4242"),
        ("paid with abc4242424242424242 today", "paid with abc************4242 today"),
        ("deadbeef4242424242424242cafe", "deadbeef************4242cafe"),
        ("card=4242424242424242;", "card=************4242;"),
        ("12 4242424242424242 99", "12 ************4242 99"),
        # "1000 0006 5555" is a number too: the "5555" it keeps must not complete the card.
        ("1000 0006 5555 5555 5555 4444", "**** **** **** **** **** 4444"),
    ],
)
def test_every_way_of_writing_a_card_number_is_masked(text: str, expected: str) -> None:
    assert scrub_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Task payments.charge[0f8c] succeeded in 0.004523899999999999s: None",
        "Task payments.charge[0f8c] succeeded in 1.2345678901234567s: None",
        "Task payments.charge[0f8c] succeeded in 12.345678901234567s: None",
        "4242424242424241",  # fails the Luhn check
        "0242424242424242",  # no card number starts with 0
        "42424242424",  # 11 digits
        "42424242424242424242",  # 20 digits
        f"payment {PAYMENT} charged 999999999999.99",
        "2026-11-29T01:17:07.123+00:00 offset 123456",
        "1.5e15 and 12.5 and 1e400",
    ],
)
def test_numbers_that_cannot_be_card_numbers_are_left_alone(text: str) -> None:
    assert scrub_text(text) == text


# -- messages --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"cardNumber":4242424242424242,"price":1}', {"cardNumber": "************4242", "price": 1}),
        (b'{"cardNumber":"4242  4242  4242  4242"}', {"cardNumber": "************4242"}),
        (b'{"cardNumber":"4242.4242.4242.4242"}', {"cardNumber": "************4242"}),
        (b'{"cardNumber":4.242424242424242e15}', {"cardNumber": "************4242"}),
        (b'{"cardNumber":"4242424242424241"}', {"cardNumber": "************4241"}),  # by field, Luhn or not
        (b'{"note":"card 4242 4242 4242 4242 thanks"}', {"note": "card **** **** **** 4242 thanks"}),
        (b'{"note":"x4242424242424242"}', {"note": "x************4242"}),
        (b'{"a":{"b":[1,{"c":4242424242424242}]}}', {"a": {"b": [1, {"c": "************4242"}]}}),
        (b'{"a":[4.242424242424242e15]}', {"a": ["************4242"]}),
        (b'{"4242424242424242":true}', {"************4242": True}),
        (b'{"n":"\\u0034242424242424242"}', {"n": "************4242"}),
        (b'{"n":-4242424242424242}', {"n": "************4242"}),
        (b'["4242424242424242"]', ["************4242"]),
        (b'"4242424242424242"', "************4242"),
        (
            b'{"card":{"number":"3782-822463-10005","cvv":"123"}}',
            {"card": {"number": "************0005", "cvv": "***"}},
        ),
    ],
)
def test_a_json_message_is_masked_by_field_and_by_value_and_stays_json(
    value: bytes, expected: object
) -> None:
    scrubbed = scrub_message(value)
    assert json.loads(scrubbed) == expected
    assert b"42424242" not in scrubbed


def test_a_card_number_hidden_behind_a_repeated_name_is_masked() -> None:
    # A parser keeping only the last of two names must not let the first through.
    scrubbed = scrub_message(b'{"cardNumber":4242424242424242,"cardNumber":4242}')
    assert VISA.encode() not in scrubbed
    assert scrubbed == b'{"cardNumber":"************4242","cardNumber":4242}'


def test_the_rest_of_a_masked_message_keeps_its_exact_numbers() -> None:
    value = b'{"price":39.98000,"big":12345678901234567890123,"cardNumber":4242424242424242,"f":1E2}'
    scrubbed = scrub_message(value)
    assert (
        scrubbed
        == b'{"price":39.98000,"big":12345678901234567890123,"cardNumber":"************4242","f":1E2}'
    )


@pytest.mark.parametrize(
    "value",
    [
        b'{"productId":"p-1","price":39.98,"cardNumber":"************4242","paymentId":"'
        + PAYMENT.encode()
        + b'"}',
        b'{"productId":"p-1","price":39.98,"cardNumber":4242,"paymentId":"' + PAYMENT.encode() + b'"}',
        b'{"refunded":true,"totalPrice":999999999999.99,"paymentId":"123456789012345678901234"}',
        b'{ "paymentId" : "6b1234567890123456789abc" ,\n "x": [1, 2.50, null] }',
    ],
)
def test_a_message_without_a_card_number_passes_byte_for_byte(value: bytes) -> None:
    assert scrub_message(value) == value


@pytest.mark.parametrize(
    ("value", "absent"),
    [
        (b'{"cardNumber": 4242424242424242, "price": ', b"4242424242424242"),
        (b'{"cardNumber": "4242 4242 4242 4241"', b"4242 4242 4242 4241"),
        (b"\xff\xfe junk 4242  4242  4242  4242 \xff", b"4242  4242  4242"),
        (b"[" * 5000 + b'"4242424242424242"' + b"]" * 5000, b"4242424242424242"),
        (b"not json 4.242424242424242e15", b"4.242424242424242e15"),
    ],
)
def test_a_message_that_is_not_json_is_masked_on_its_raw_bytes(value: bytes, absent: bytes) -> None:
    scrubbed = scrub_message(value)
    assert absent not in scrubbed
    assert len(scrubbed) <= len(value)


def test_an_empty_message_stays_empty() -> None:
    assert scrub_message(None) == b""
    assert scrub_message(b"") == b""


# -- properties ------------------------------------------------------------------


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    """A Luhn-valid number of 12-19 digits, not starting with 0."""
    length = draw(st.integers(12, 19))
    body = str(draw(st.integers(1, 9))) + "".join(str(draw(st.integers(0, 9))) for _ in range(length - 2))
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("one check digit always fits")


@st.composite
def written_card_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """(digits, as written): groups of any sizes joined by any separators."""
    digits = draw(card_numbers())
    separator = draw(st.sampled_from(["", " ", "  ", "-", ".", "mixed"]))
    cuts = sorted(draw(st.sets(st.integers(4, len(digits) - 1), max_size=5)))
    parts = [digits[i:j] for i, j in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
    if separator == "mixed":
        joins = [draw(st.sampled_from([" ", "  ", "-", "."])) for _ in parts[1:]]
    else:
        joins = [separator] * (len(parts) - 1)
    written = parts[0] + "".join(join + part for join, part in zip(joins, parts[1:], strict=True))
    return digits, written


#: Text around a number that stands on its own: not glued to other digits.
around = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=30)


def survives(digits: str, scrubbed: str) -> bool:
    return digits in digits_of(scrubbed) or digits[:12] in scrubbed


#: The digit-run pattern without its twelve-character lookahead: what the
#: scrubber matched before it skipped short runs (a cost cut, not a change).
_EVERY_RUN = re.compile(r"[0-9]+(?:(?: {1,3}|[.\-])[0-9]+)*")


@hypothesis_settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789 .-xe+", max_size=60))
@example("4242 4242 4242 42")
@example("1 2 3 4 5 6 7 8 9 0 1 2")
@example("12.5 4242424242424242")
@example("x400000000002x4000000000006x40000000000002x")  # 12, 13 and 14 digits: the shortest card numbers
@example("4000 0000 0006")
def test_skipping_short_digit_runs_masks_exactly_what_trying_every_run_masks(text: str) -> None:
    every_run = pan._EXPONENT_NUMBER.sub(pan._mask_exponent, text)
    every_run = _EVERY_RUN.sub(lambda m: pan._mask_run(m.group(0)), every_run)
    assert scrub_text(text) == every_run


@hypothesis_settings(max_examples=200, deadline=None)
@given(card=written_card_numbers(), before=around, after=around)
@example(card=(VISA, "4242  4242  4242  4242"), before="", after="")
@example(card=(VISA, "4242.4242.4242.4242"), before="a", after="f")
@example(card=("5555555555554444", "5555 5555 5555 4444"), before="1000 0006 ", after="")
def test_a_card_number_written_any_way_inside_any_text_never_survives(
    card: tuple[str, str], before: str, after: str
) -> None:
    digits, written = card
    glued = re.search(r"[0-9][ .\-]{0,3}$", before) or re.match(r"[ .\-]{0,3}[0-9]", after)
    # A number glued to others by a space is still found (not by a dot or a dash:
    # "12.5" reads as a decimal); one glued to other digits is another number.
    assume(not glued or (before.endswith(" ") and not re.search(r"[0-9]$", before) and not after))
    assume(digits not in digits_of(before + after))
    scrubbed = scrub_text(before + written + after)
    assert digits not in digits_of(scrubbed)
    if not glued:
        assert scrubbed.startswith(before)
        assert scrubbed.endswith(after)


json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), around
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(around, children, max_size=4),
    max_leaves=12,
)


@hypothesis_settings(max_examples=200, deadline=None)
@given(
    document=st.dictionaries(around, json_values, max_size=4),
    card=written_card_numbers(),
    shape=st.sampled_from(["string", "number", "float", "name", "in text", "nested", "card field"]),
    name=around,
    indent=st.sampled_from([None, 0, 2]),
)
def test_a_card_number_in_any_json_shape_never_survives_and_json_stays_json(
    document: dict[str, object], card: tuple[str, str], shape: str, name: str, indent: int | None
) -> None:
    digits, written = card
    assume(digits not in digits_of(json.dumps(document)))
    placed: object = {
        "string": written,
        "number": int(digits),
        "float": float(digits),
        "in text": f"card {written} thanks",
        "nested": [{"x": [written]}],
    }.get(shape, written)
    if shape == "name":
        document[written] = 1
    elif shape == "card field":
        document["cardNumber"] = written
    else:
        document[name] = placed
    value = json.dumps(document, indent=indent).encode()
    if shape == "float" and int(float(digits)) != int(digits):
        return  # a float too short to hold every digit carries no card number
    scrubbed = scrub_message(value)
    parsed = json.loads(scrubbed)
    assert isinstance(parsed, dict)
    assert set(map(scrub_text, document)) == set(parsed)
    assert not survives(digits, scrubbed.decode())


@hypothesis_settings(max_examples=200, deadline=None)
@given(document=json_values)
def test_json_without_card_numbers_is_returned_byte_for_byte(document: object) -> None:
    value = json.dumps(document).encode()
    scrubbed = scrub_message(value)
    if scrubbed != value:
        # Only something that can be a card number may change it.
        assert (
            any(len(d) >= 12 for d in re.findall(r"[0-9]+(?:(?: {1,3}|[.\-])[0-9]+)*", value.decode()))
            or "e" in value.decode().lower()
        )
        json.loads(scrubbed)


# -- logs ------------------------------------------------------------------------


def _log_line(message: str, *args: object, **fields: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.scrub")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, *args, extra={"fields": fields} if fields else None)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    line: dict[str, object] = json.loads(stream.getvalue())
    return line


def test_a_task_runtime_stays_readable_in_the_logs() -> None:
    line = _log_line(
        "Task %s[%s] succeeded in %ss: %r", "payments.charge", PAYMENT, 0.004523899999999999, None
    )
    assert line["msg"] == f"Task payments.charge[{PAYMENT}] succeeded in 0.004523899999999999s: None"


@pytest.mark.parametrize("written", ["4242  4242  4242  4242", "4242.4242.4242.4242", "4.242424242424242e15"])
def test_a_card_number_never_reaches_a_log_line_in_the_message_or_a_field(written: str) -> None:
    line = _log_line("card %s", written, card=written, number=int(VISA), nested={"list": [VISA]})
    text = json.dumps(line)
    assert VISA not in text
    assert VISA[:12] not in digits_of(str(line["msg"]))
    assert line["card"] == scrub_text(written)
    assert line["number"] == "************4242"
    assert line["nested"] == {"list": ["************4242"]}


def test_a_traceback_in_a_log_line_is_masked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.scrub.exc")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad card {VISA}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    line = json.loads(stream.getvalue())
    assert VISA not in stream.getvalue()
    assert "bad card ************4242" in line["exc"]


def test_scrub_data_keeps_other_values_as_they_are() -> None:
    data = {"runtime": 0.0045238, "amount": 39.98, "count": 3, "ok": True, "none": None, "id": PAYMENT}
    assert scrub_data(data) == data


def test_an_id_in_the_log_context_stays_whole_even_where_its_digits_pass_the_luhn_check() -> None:
    # The user id of a failed CI run: its digits 826123215977473 are a Luhn-valid run.
    user = "6b0bcd95d826123215977473"
    task = "0b3d6ad7-46d5-4d40-8721-424242424242"
    assert scrub_text(user) != user
    with log_context(user_id=user, task_id=task):
        line = _log_line("charged %s", user, job_id=user)
    assert line["user_id"] == user
    assert line["job_id"] == user
    assert line["task_id"] == task
    # Only the id fields are exempt: the same id in the message is masked.
    assert line["msg"] == "charged 6b0bcd95d***********7473"


def test_a_card_number_in_an_id_field_without_an_ids_shape_is_masked() -> None:
    with log_context(user_id=VISA, event_id=f"{VISA}-x"):
        line = _log_line("hello")
    assert VISA not in json.dumps(line)


def test_refund_event_ids_in_a_log_line_stay_whole_even_where_their_topic_id_passes_the_luhn_check() -> None:
    # From a failed CI run: "3810684-5391-441" was masked as a card number.
    event = "t1.orderService-productFromOrderRefunded:f3810684-5391-441e-a9c3-642d359f2e6e:0:4"
    assert scrub_text(event) != event
    with log_context(event_id=event):
        line = _log_line("refund batch handed over", event_ids=[event, event.replace(":0:4", ":0:5")])
    assert line["event_id"] == event
    assert line["event_ids"] == [event, event.replace(":0:4", ":0:5")]
    # A list that holds anything but ids is scrubbed as before.
    line = _log_line("x", event_ids=[event, VISA])
    assert VISA not in json.dumps(line)
