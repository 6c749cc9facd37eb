"""JSON Schemas of what the API answers, as pydantic models, for the OpenAPI document.

These models only describe: the routes build their answers with
`shared.services.views` (cards, payments, jobs), `web.problems` (errors)
and `web.health` (probes), and nothing here validates or serializes them.
They follow those functions field for field: every key a view always writes
is required, a field the view can write as `null` is nullable, and the
resource shapes allow no other keys, so that the fuzz and conformance tests
(`tests/web/test_fuzz.py`, `tests/web/test_openapi.py`) fail when a view
and its schema drift apart.

Amounts are JSON numbers with at most two decimals (`MoneyJSONProvider`
writes a `Decimal` as the shortest float repr, exact for amounts up to
999999999999.99); timestamps are RFC 3339 date-times in UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Ids the service makes (`str(ObjectId())`) and user ids, which tokens
#: must carry as ObjectIds and the service lowercases.
OBJECT_ID_PATTERN = "^[0-9a-f]{24}$"
#: Masked card number: twelve stars whatever the card's length, then the last four digits.
MASKED_NUMBER_PATTERN = r"^\*{12}[0-9]{4}$"
#: Expiry month as stored (MM/YY), whatever form the card was added with.
STORED_EXPIRY_PATTERN = "^(0[1-9]|1[0-2])/[0-9]{2}$"

JobType = Literal["card.add", "card.delete", "payment.pay", "payment.delete"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
#: `shared.pan.card_brand`'s answers.
CardBrand = Literal["visa", "mastercard", "amex", "discover", "jcb", "diners", "unionpay", "unknown"]


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


ObjectIdText = Annotated[str, Field(pattern=OBJECT_ID_PATTERN, examples=["65a1f0c2e4b0a1b2c3d4e5f6"])]
Money = Annotated[
    float,
    Field(
        ge=0,
        description="An amount of money: a JSON number with at most 2 decimal places.",
        examples=[59.97],
    ),
]
Timestamp = Annotated[datetime, Field(description="RFC 3339 date-time in UTC.")]


def _title(name: str, info: Any) -> str:
    # The wire name as the title ("cardUserId"), not pydantic's "Carduserid".
    return str(getattr(info, "alias", None) or name)


class ResponseModel(BaseModel):
    """Base of the resource shapes: every key listed, no other key."""

    model_config = ConfigDict(extra="forbid", frozen=True, field_title_generator=_title)


class Card(ResponseModel):
    """A card as every read returns it (`GET /get/{cardId}`, add-card job results).

    The full number and the CVV are never returned: the number only masked,
    with its last four digits and brand.
    """

    id_: ObjectIdText = Field(alias="_id", description="The card's id (the old service's name for it).")
    id: ObjectIdText = Field(description="The card's id, the same as `_id`.")
    cardUserId: ObjectIdText = Field(description="The owner: the `userId` of the token that added it.")
    cardHolderName: str = Field(min_length=1, max_length=100, examples=["Ada Lovelace"])
    cardNumber: str = Field(pattern=MASKED_NUMBER_PATTERN, examples=["************4242"])
    last4: str = Field(pattern="^[0-9]{4}$", examples=["4242"])
    brand: CardBrand = Field(description="Card network, from the number's leading digits.")
    expireDate: str = Field(pattern=STORED_EXPIRY_PATTERN, examples=["12/30"])
    money: Money = Field(description="The card's balance.")
    createdAt: Timestamp
    updatedAt: Timestamp


class PaymentProduct(ResponseModel):
    """One line of a paid checkout, with its refund state."""

    productId: str
    quantity: int = Field(ge=1)
    price: Money = Field(description="Unit price.")
    isRefunded: bool
    refundedQuantity: int = Field(ge=0)
    sellerId: str | None


class Payment(ResponseModel):
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
    totalPrice: Money = Field(description="The amount taken from the card.")
    refunded: bool = Field(description="Whether the whole order was refunded.")
    refundedAmount: Money = Field(description="Money given back to the card so far.")
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


class Deleted(ResponseModel):
    """Result of a delete job: the id of the card or payment that reads no longer show."""

    deleted: ObjectIdText


class FieldError(BaseModel):
    """One bad field of a request; the message never repeats the value sent."""

    model_config = ConfigDict(extra="forbid", frozen=True, field_title_generator=_title)

    field: str = Field(description="Wire name of the field (`cardNumber`, `body`, `Idempotency-Key`...).")
    message: str


class JobError(BaseModel):
    """Why a job failed: the problem details of its error, without `type` and `instance`.

    `already_paid` adds `paymentId` and `links.payment` (the existing
    payment), hence other keys are allowed.
    """

    model_config = ConfigDict(extra="allow", frozen=True, field_title_generator=_title)

    status: int = Field(ge=400, le=599, examples=[402])
    code: str = Field(examples=["insufficient_funds"])
    title: str
    detail: str
    errors: list[FieldError] | None = Field(default=None, json_schema_extra=_not_null)


class JobLinks(ResponseModel):
    """Where to poll the job and, once it succeeded in making one, the card or payment."""

    self: str = Field(examples=["/api/payment/jobs/65a1f0c2e4b0a1b2c3d4e5f6"])
    resource: str | None = Field(
        default=None,
        description="Present when an add-card or pay job succeeded: where to read what it made.",
        examples=["/api/payment/find/65a1f0c2e4b0a1b2c3d4e5f6"],
        json_schema_extra=_not_null,
    )


class Job(ResponseModel):
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
    result: Card | Payment | Deleted | None
    error: JobError | None
    links: JobLinks


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (`application/problem+json`).

    `code` is the stable, machine-readable reason; `errors` names every bad
    field of a refused request.  Other keys may follow (`already_paid` adds
    `paymentId` and `links`).
    """

    model_config = ConfigDict(extra="allow", frozen=True, field_title_generator=_title)

    type: str = Field(
        description="A URI naming the kind of problem: `https://errors.payment-service/{code}`.",
        examples=["https://errors.payment-service/validation_error"],
    )
    title: str = Field(description="Short summary of the kind of problem; the same for every `code`.")
    status: int = Field(ge=400, le=599, description="The HTTP status of the answer.")
    detail: str = Field(description="What went wrong with this request; never contains card data.")
    code: str = Field(examples=["validation_error"])
    errors: list[FieldError] | None = Field(
        default=None, description="For bad input: every bad field.", json_schema_extra=_not_null
    )
    instance: str = Field(description="The path of the request.", examples=["/api/payment/add"])


class Health(ResponseModel):
    """The process is up."""

    status: Literal["ok"]


class Readiness(ResponseModel):
    """Whether MongoDB, Redis and Kafka answer; each check is `ok` or the reason it failed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(examples=[{"mongo": "ok", "redis": "ok", "kafka": "ok"}])


def schema_of(model: type[BaseModel], ref_template: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model's serialization schema and its `$defs`, references made with `ref_template`."""
    schema = model.model_json_schema(ref_template=ref_template, mode="serialization")
    defs = schema.pop("$defs", {})
    return schema, defs


#: Every response shape the document declares, by component name.
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (Card, Payment, Job, Problem, Health, Readiness)
