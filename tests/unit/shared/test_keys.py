"""One configured card secret, one key per purpose."""

from __future__ import annotations

import pytest

from shared.keys import REQUEST_HASH_PURPOSE, derive_key, fingerprint_key, request_hash_key
from shared.pan import fingerprint
from shared.services.jobs import request_hash
from tests.environment import TEST_ENV, make_settings

SECRET = b"test-card-fingerprint-key-0123456789abcdef"


def test_the_fingerprint_key_and_the_request_hash_key_differ() -> None:
    settings = make_settings()
    assert fingerprint_key(settings) == TEST_ENV["CARD_FINGERPRINT_KEY"].encode()
    assert request_hash_key(settings) != fingerprint_key(settings)
    assert request_hash_key(settings) == derive_key(fingerprint_key(settings), REQUEST_HASH_PURPOSE)
    # So one value digested for both purposes gives two unrelated digests.
    digits = "4242424242424242"
    assert fingerprint(digits, fingerprint_key(settings)) != fingerprint(digits, request_hash_key(settings))


def test_a_derived_key_depends_on_the_secret_and_on_the_purpose() -> None:
    keys = {
        derive_key(SECRET, b"a"),
        derive_key(SECRET, b"b"),
        derive_key(SECRET + b"x", b"a"),
    }
    assert len(keys) == 3
    assert derive_key(SECRET, b"a") == derive_key(SECRET, b"a")
    assert all(len(key) == 32 for key in keys)


@pytest.mark.parametrize(("secret", "purpose"), [(b"", b"a"), (SECRET, b"")])
def test_a_key_is_never_derived_from_nothing(secret: bytes, purpose: bytes) -> None:
    with pytest.raises(ValueError, match=r"must not be empty|purpose"):
        derive_key(secret, purpose)


def test_the_request_hash_key_is_another_key_when_the_secret_changes() -> None:
    other = make_settings(CARD_FINGERPRINT_KEY="another-card-fingerprint-key-0123456789")
    assert request_hash_key(other) != request_hash_key(make_settings())


def test_the_request_hash_is_the_same_for_the_same_request_and_differs_for_another() -> None:
    key = request_hash_key(make_settings())
    first = request_hash(key, {"type": "card.add", "money": "10", "last4": "4242"})
    assert first == request_hash(key, {"last4": "4242", "money": "10", "type": "card.add"})
    assert first != request_hash(key, {"type": "card.add", "money": "11", "last4": "4242"})
