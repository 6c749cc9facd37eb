"""How cards, payments and jobs look to clients (api.md), and money's JSON form."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128

from shared.models import Card, Job, Payment
from shared.money import money
from shared.pan import mask

BASE = "/api/payment"


def timestamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def card_view(card: Card) -> dict[str, Any]:
    card_id = str(card.id)
    return {
        "_id": card_id,
        "id": card_id,
        "cardUserId": card.cardUserId,
        "cardHolderName": card.cardHolderName,
        "cardNumber": mask(card.last4),
        "last4": card.last4,
        "brand": card.brand,
        "expireDate": card.expireDate,
        "money": money(card.money),
        "createdAt": timestamp(card.createdAt),
        "updatedAt": timestamp(card.updatedAt),
    }


def payment_view(payment: Payment) -> dict[str, Any]:
    payment_id = str(payment.id)
    last4 = payment_last4(payment)
    return {
        "_id": payment_id,
        "id": payment_id,
        "userId": payment.userId,
        "checkoutId": payment.checkoutId,
        "basketId": payment.basketId,
        "creditCardId": payment.creditCardId,
        "shipmentId": payment.shipmentId,
        "products": [
            {
                "productId": p.productId,
                "quantity": p.quantity,
                "price": money(p.price),
                "isRefunded": p.isRefunded,
                "refundedQuantity": p.refundedQuantity,
                "sellerId": p.sellerId,
            }
            for p in payment.products
        ],
        "address": payment.address,
        "isGift": payment.isGift,
        "status": payment.status,
        "totalPrice": money(payment.totalPrice),
        "refunded": payment.refunded,
        "refundedAmount": money(payment.refundedAmount),
        "cardHolderName": payment.cardHolderName,
        # A number (api.md): the order service stores it in a required Number field.
        "cardNumber": int(last4),
        "last4": last4,
        "expireDate": payment.expireDate,
        "paymentStatus": payment.paymentStatus,
        "createdAt": timestamp(payment.createdAt),
        "updatedAt": timestamp(payment.updatedAt),
    }


def payment_last4(payment: Payment) -> str:
    """The last four digits of the paid card (the payment stores the masked number)."""
    return str(payment.cardNumber)[-4:]


#: Where the resource a job made is read (deletions make none to link to).
RESOURCE_LINKS = {
    "card.add": f"{BASE}/get/{{}}",
    "payment.pay": f"{BASE}/find/{{}}",
}


def job_view(job: Job) -> dict[str, Any]:
    job_id = str(job.id)
    links = {"self": f"{BASE}/jobs/{job_id}"}
    if job.resourceId and job.status == "succeeded" and job.type in RESOURCE_LINKS:
        links["resource"] = RESOURCE_LINKS[job.type].format(job.resourceId)
    return {
        "id": job_id,
        "type": job.type,
        "status": job.status,
        "createdAt": timestamp(job.createdAt),
        "updatedAt": timestamp(job.updatedAt),
        "attempts": job.attempts,
        "result": from_bson(job.result) if job.result is not None else None,
        "error": job.error,
        "links": links,
    }


def to_bson(value: Any) -> Any:
    """A view made storable: Decimal becomes Decimal128 (pymongo stores no Decimal)."""
    if isinstance(value, Decimal):
        return Decimal128(value)
    if isinstance(value, dict):
        return {k: to_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_bson(v) for v in value]
    return value


def from_bson(value: Any) -> Any:
    if isinstance(value, Decimal128):
        return money(value)
    if isinstance(value, dict):
        return {k: from_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    return value
