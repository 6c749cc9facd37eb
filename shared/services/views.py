"""How cards, payments and jobs look to clients (api.md): the response models.

Each model is both the answer's serializer and its JSON Schema in the
OpenAPI document: ``Card.of(card).wire()`` is what ``GET /get/{cardId}``
writes and what an add-card job keeps as its result.  Every key a view
always writes is required, a field it can write as ``null`` is nullable,
and the resource shapes allow no other keys.

Ids, timestamps and amounts are the types of :mod:`shared.wire`: amounts
stay exact ``Decimal`` until the JSON encoder writes them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from bson.decimal128 import Decimal128
from pydantic import BaseModel, ConfigDict, Field

from shared.models import Card as CardDocument
from shared.models import Job as JobDocument
from shared.models import Payment as PaymentDocument
from shared.money import money
from shared.pan import mask
from shared.wire import ObjectIdText, Timestamp, amount_schema

BASE = "/api/payment"

#: Masked card number: twelve stars whatever the card's length, then the last four digits.
MASKED_NUMBER_PATTERN = r"^\*{12}[0-9]{4}$"
#: Expiry month as stored (MM/YY), whatever form the card was added with.
STORED_EXPIRY_PATTERN = "^(0[1-9]|1[0-2])/[0-9]{2}$"
LAST4 = Field(pattern="^[0-9]{4}$", description="The card's last four digits.", examples=["4242"])

JobType = Literal["card.add", "card.delete", "payment.pay", "payment.delete"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
#: `shared.pan.card_brand`'s answers.
CardBrand = Literal["visa", "mastercard", "amex", "discover", "jcb", "diners", "unionpay", "unknown"]


def _absent_if_none(value: Any) -> bool:
    return value is None


def _drop_default(schema: dict[str, Any]) -> None:
    # An optional key is absent, not null: the model's default (None) exists
    # only for Python and must not appear in the document.
    schema.pop("default", None)


def _not_null(schema: dict[str, Any]) -> None:
    """Keep a key optional but, when present, of its declared type (never `null`)."""
    _drop_default(schema)
    any_of = schema.pop("anyOf", None)
    if isinstance(any_of, list):
        kept = [branch for branch in any_of if branch != {"type": "null"}]
        if len(kept) == 1 and isinstance(kept[0], dict):
            schema.update(kept[0])
        else:
            schema["anyOf"] = kept


def wire_title(name: str, info: Any) -> str:
    # The wire name as the title ("cardUserId"), not pydantic's "Carduserid".
    return str(getattr(info, "alias", None) or name)


#: An optional key of an answer: absent rather than null.
def optional(**kwargs: Any) -> Any:
    return Field(default=None, exclude_if=_absent_if_none, json_schema_extra=_not_null, **kwargs)


class View(BaseModel):
    """Base of the answers: every key listed, no other key; ``wire()`` is the JSON value."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, field_title_generator=wire_title, validate_by_name=True
    )

    def wire(self) -> dict[str, Any]:
        """The answer as JSON values, amounts still exact ``Decimal`` (``shared.wire.dumps`` writes them)."""
        return self.model_dump(by_alias=True)


class Card(View):
    """A card as every read returns it (`GET /get/{cardId}`, add-card job results).

    The full number and the CVV are never returned: the number only masked,
    with its last four digits and brand.
    """

    id_: ObjectIdText = Field(alias="_id", description="The card's id (the old service's name for it).")
    id: ObjectIdText = Field(description="The card's id, the same as `_id`.")
    cardUserId: ObjectIdText = Field(description="The owner: the `userId` of the token that added it.")
    cardHolderName: str = Field(min_length=1, max_length=100, examples=["Ada Lovelace"])
    cardNumber: str = Field(pattern=MASKED_NUMBER_PATTERN, examples=["************4242"])
    last4: str = LAST4
    brand: CardBrand = Field(description="Card network, from the number's leading digits.")
    expireDate: str = Field(pattern=STORED_EXPIRY_PATTERN, examples=["12/30"])
    money: Annotated[Decimal, amount_schema("The card's balance.")]
    createdAt: Timestamp
    updatedAt: Timestamp

    @classmethod
    def of(cls, card: CardDocument) -> Self:
        card_id = str(card.id)
        return cls(
            _id=card_id,
            id=card_id,
            cardUserId=card.cardUserId,
            cardHolderName=card.cardHolderName,
            cardNumber=mask(card.last4),
            last4=card.last4,
            brand=card.brand,
            expireDate=card.expireDate,
            money=money(card.money),
            createdAt=card.createdAt,
            updatedAt=card.updatedAt,
        )


class PaymentProduct(View):
    """One line of a paid checkout, with its refund state."""

    productId: str
    quantity: int = Field(ge=1)
    price: Annotated[Decimal, amount_schema("Unit price.")]
    isRefunded: bool
    refundedQuantity: int = Field(ge=0)
    sellerId: str | None


def payment_last4(payment: PaymentDocument) -> str:
    """The last four digits of the paid card (the payment stores the masked number)."""
    return str(payment.cardNumber)[-4:]


class Payment(View):
    """A payment as every read returns it (`GET /find/{paymentId}`, pay job results).

    The seed's fields, with only the card's last four digits (`cardNumber`, a
    number) and no CVV, plus `_id`, `id`, `last4`, `refundedAmount` and the
    timestamps.
    """

    id_: ObjectIdText = Field(alias="_id", description="The payment's id (the old service's name for it).")
    id: ObjectIdText = Field(description="The payment's id, the same as `_id`.")
    userId: ObjectIdText = Field(description="Who paid: the `userId` of the token that paid.")
    checkoutId: str = Field(description="The paid checkout, as the checkout service names it.")
    basketId: str | None
    creditCardId: ObjectIdText = Field(description="The card the money was taken from.")
    shipmentId: str | None
    products: list[PaymentProduct]
    address: str | None
    isGift: bool
    status: str = Field(description="The checkout's status when it was paid.", examples=["Pending"])
    totalPrice: Annotated[Decimal, amount_schema("The amount taken from the card.")]
    refunded: bool = Field(description="Whether the whole order was refunded.")
    refundedAmount: Annotated[Decimal, amount_schema("Money given back to the card so far.")]
    cardHolderName: str
    cardNumber: int = Field(
        ge=0,
        le=9999,
        description=(
            "The paid card's last four digits as a JSON number (0042 is 42), as the order service"
            " stores it (a required `Number`); `last4` keeps them as a string. Never the full number."
        ),
        examples=[4242],
    )
    last4: str = Field(
        pattern="^[0-9]{4}$", description="The paid card's last four digits.", examples=["4242"]
    )
    expireDate: str = Field(pattern=STORED_EXPIRY_PATTERN, examples=["12/30"])
    paymentStatus: bool = Field(description="True once the money is taken (every payment a read shows).")
    createdAt: Timestamp
    updatedAt: Timestamp

    @classmethod
    def of(cls, payment: PaymentDocument) -> Self:
        payment_id = str(payment.id)
        last4 = payment_last4(payment)
        return cls(
            _id=payment_id,
            id=payment_id,
            userId=payment.userId,
            checkoutId=payment.checkoutId,
            basketId=payment.basketId,
            creditCardId=payment.creditCardId,
            shipmentId=payment.shipmentId,
            products=[
                PaymentProduct(
                    productId=p.productId,
                    quantity=p.quantity,
                    price=money(p.price),
                    isRefunded=p.isRefunded,
                    refundedQuantity=p.refundedQuantity,
                    sellerId=p.sellerId,
                )
                for p in payment.products
            ],
            address=payment.address,
            isGift=payment.isGift,
            status=payment.status,
            totalPrice=money(payment.totalPrice),
            refunded=payment.refunded,
            refundedAmount=money(payment.refundedAmount),
            cardHolderName=payment.cardHolderName,
            # A number (api.md): the order service stores it in a required Number field.
            cardNumber=int(last4),
            last4=last4,
            expireDate=payment.expireDate,
            paymentStatus=payment.paymentStatus,
            createdAt=payment.createdAt,
            updatedAt=payment.updatedAt,
        )


class Deleted(View):
    """Result of a delete job: the id of the card or payment that reads no longer show."""

    deleted: ObjectIdText


#: What a job's work returns, and its result once it succeeded.
JobResult = Card | Payment | Deleted


class FieldError(View):
    """One bad field of a request; the message never repeats the value sent."""

    field: str = Field(description="Wire name of the field (`cardNumber`, `body`, `Idempotency-Key`...).")
    message: str


class JobError(View):
    """Why a job failed: the problem details of its error, without `type` and `instance`.

    `already_paid` adds `paymentId` and `links.payment` (the existing
    payment), hence other keys are allowed.
    """

    model_config = ConfigDict(extra="allow")

    title: str
    status: int = Field(ge=400, le=599, examples=[402])
    detail: str
    code: str = Field(examples=["insufficient_funds"])
    errors: list[FieldError] | None = optional()


class JobLinks(View):
    """Where to poll the job and, once it succeeded in making one, the card or payment."""

    self: str = Field(examples=["/api/payment/jobs/65a1f0c2e4b0a1b2c3d4e5f6"])
    resource: str | None = optional(
        description="Present when an add-card or pay job succeeded: where to read what it made.",
        examples=["/api/payment/find/65a1f0c2e4b0a1b2c3d4e5f6"],
    )


#: Where the resource a job made is read (deletions make none to link to).
RESOURCE_LINKS = {
    "card.add": f"{BASE}/get/{{}}",
    "payment.pay": f"{BASE}/find/{{}}",
}
#: The result each job type ends with.
RESULTS: dict[str, type[JobResult]] = {
    "card.add": Card,
    "card.delete": Deleted,
    "payment.pay": Payment,
    "payment.delete": Deleted,
}


class Job(View):
    """A queued write (api.md, "Jobs").

    `queued` and `running` jobs have neither `result` nor `error`;
    a `succeeded` job has `result` (the card or payment as a read returns
    it, or `{"deleted": id}`); a `failed` one has `error`.
    """

    id: ObjectIdText
    type: JobType
    status: JobStatus
    createdAt: Timestamp
    updatedAt: Timestamp
    attempts: int = Field(ge=0, description="How many times a worker started the job.")
    result: JobResult | None
    error: JobError | None
    links: JobLinks

    @classmethod
    def of(cls, job: JobDocument) -> Self:
        job_id = str(job.id)
        links = JobLinks(self=f"{BASE}/jobs/{job_id}")
        if job.resourceId and job.status == "succeeded" and job.type in RESOURCE_LINKS:
            links = JobLinks(self=links.self, resource=RESOURCE_LINKS[job.type].format(job.resourceId))
        result = None
        if job.result is not None:
            result = RESULTS[job.type].model_validate(from_bson(job.result))
        return cls(
            id=job_id,
            type=job.type,
            status=job.status,
            createdAt=job.createdAt,
            updatedAt=job.updatedAt,
            attempts=job.attempts,
            result=result,
            error=None if job.error is None else JobError.model_validate(job.error),
            links=links,
        )


def to_bson(value: Any) -> Any:
    """A result made storable: a view as its JSON values, Decimal as Decimal128 (pymongo has no Decimal)."""
    if isinstance(value, View):
        value = value.wire()
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
