"""The bridge's parsing of the order service's messages, and the masking of card numbers."""

from __future__ import annotations

import pytest

from workers.bridge.messages import BadMessage, OrderRefunded, ProductRefunded, decode, scrub_card_numbers

PAYMENT = "6b097261b5718c6fb43e0f96"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_message"),
        (b"{not json", "not_json"),
        (b"\xff\xfe", "not_json"),
        (b"[" * 100_000 + b"]" * 100_000, "not_json"),
        (b'{"price": ' + b"9" * 5000 + b"}", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"paymentId": "nope", "refunded": true}', "invalid_fields"),
        (b'{"paymentId": "' + PAYMENT.encode() + b'", "refunded": false}', "invalid_fields"),
        (b'{"paymentId": "' + PAYMENT.encode() + b'", "totalPrice": NaN}', "invalid_fields"),
    ],
)
def test_an_order_refund_that_cannot_be_read_is_a_bad_message_with_its_reason(
    value: bytes | None, reason: str
) -> None:
    with pytest.raises(BadMessage) as exc:
        decode(value, OrderRefunded)
    assert exc.value.reason == reason


def test_a_product_refund_is_read_with_an_exact_decimal_price() -> None:
    message = decode(
        b'{"productId":"p-1","price":39.98,"cardNumber":4242424242424242,"paymentId":"'
        + PAYMENT.encode()
        + b'"}',
        ProductRefunded,
    )
    assert str(message.price) == "39.98"
    assert message.paymentId == PAYMENT


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"cardNumber":4242424242424242,"price":1}', b'{"cardNumber":"************4242","price":1}'),
        (b'{"cardNumber":"4242 4242 4242 4242"}', b'{"cardNumber":"************4242"}'),
        (b'{"cardNumber": "378282246310005"}', b'{"cardNumber":"************0005"}'),
        (b'{"cardNumber":"4242  4242  4242  4242"}', b'{"cardNumber":"************4242"}'),
        (b'{"cardNumber":"4242.4242.4242.4242"}', b'{"cardNumber":"************4242"}'),
        (b'{"cardNumber":4.242424242424242e15}', b'{"cardNumber":"************4242"}'),
        (b'{"note":"ab4242424242424242"}', b'{"note":"ab************4242"}'),
        (b"junk 4111111111111111 junk", b"junk ************1111 junk"),
    ],
)
def test_card_numbers_are_masked_before_a_message_travels_on(value: bytes, expected: bytes) -> None:
    assert scrub_card_numbers(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        b'{"productId":"p-1","price":39.98,"cardNumber":"************4242","paymentId":"'
        + PAYMENT.encode()
        + b'"}',
        b'{"refunded":true,"totalPrice":999999999999.99,"paymentId":"123456789012345678901234"}',
        b'{"paymentId":"6b1234567890123456789abc"}',
    ],
)
def test_a_message_without_a_card_number_passes_byte_for_byte(value: bytes) -> None:
    assert scrub_card_numbers(value) == value
