"""Test data, built by factory-boy: request bodies, checkouts of the stand-in and stored documents.

A factory call gives a fresh valid value (fresh ids, a fresh Luhn-valid card
number); a test names only the fields it is about:
``CheckoutFactory(userId=user, totalPrice=10.0)``.  The document factories
(``JobFactory``) are MongoEngine factories: ``create()`` saves the document,
``build()`` does not, so a unit test can build one with no server.
"""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import factory
from bson import ObjectId
from factory.mongoengine import MongoEngineFactory

from shared.models import Card, Job, JobStatus
from shared.pan import luhn_valid


def luhn_number(prefix: str = "4", length: int = 16) -> str:
    """A fresh Luhn-valid card number (unique per call: card numbers are unique)."""
    body = prefix + "".join(random.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + check for check in "0123456789" if luhn_valid(body + check))


def object_id() -> str:
    return str(ObjectId())


class AddCardBodyFactory(factory.DictFactory):
    """The JSON body of POST /add: a valid card with 100 of money."""

    cardHolderName = "Ada Lovelace"
    cardNumber = factory.LazyFunction(luhn_number)
    expireDate = "12/39"
    cvv = "012"
    money = 100


class ProductFactory(factory.DictFactory):
    """One line of a checkout, as the checkout service stores it."""

    productId = factory.Sequence(lambda n: f"p-{n + 1}")
    quantity = 3
    price = 19.99
    sellerId = "s-1"
    isRefunded = False
    refundedQuantity = 0
    name = "Mug"


class CheckoutFactory(factory.DictFactory):
    """A pending checkout of the checkout service (three mugs of 19.99), ready to pay.

    ``totalPrice`` is a float as the checkout service sends it.
    """

    _id = factory.LazyFunction(object_id)
    basketId = factory.LazyFunction(object_id)
    userId = factory.LazyFunction(object_id)
    address = "Street 1, City"
    isGift = False
    shipmentId = factory.LazyFunction(object_id)
    totalPrice = 59.97
    status = "Pending"
    isActive = True
    products = factory.LazyFunction(lambda: [ProductFactory(productId="p-1")])


class CardJobParamsFactory(factory.DictFactory):
    """The params of a card.add job as the API stores them: no number, no CVV, a fresh fingerprint."""

    cardHolderName = "Ada Lovelace"
    fingerprint = factory.LazyFunction(lambda: f"fp-{ObjectId()}")
    last4 = "4242"
    brand = "visa"
    expireDate = "12/39"
    money = "10.00"


class JobFactory(MongoEngineFactory):  # type: ignore[misc]
    """A card.add job as the API accepts it: queued, of some user, its card not stored yet."""

    class Meta:
        model = Job

    id = factory.LazyFunction(ObjectId)
    type = "card.add"
    ownerId = factory.LazyFunction(object_id)
    status = JobStatus.QUEUED
    params: Any = factory.SubFactory(CardJobParamsFactory)
    resourceId = factory.LazyFunction(object_id)


class CardFactory(MongoEngineFactory):  # type: ignore[misc]
    """A stored card of some user with 100.00 of money, as the card.add job stores it."""

    class Meta:
        model = Card

    cardUserId = factory.LazyFunction(object_id)
    cardHolderName = "Ada Lovelace"
    fingerprint = factory.LazyFunction(lambda: f"fp-{ObjectId()}")
    last4 = "4242"
    brand = "visa"
    expireDate = "12/39"
    money = Decimal("100.00")
    inflight = factory.LazyFunction(list)
    version = 0
