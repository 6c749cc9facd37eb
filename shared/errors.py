"""The service's typed errors.

Every error a caller can see is a subclass of :class:`ServiceError` carrying its
HTTP status, a stable machine-readable ``code`` and a ``note`` saying what it
means (the OpenAPI document's text for it: ``web.openapi``).  The web tier maps them to
problem+json in one place (``web.problems``); workers use ``retryable`` to
choose between retrying and ending a job; the Kafka bridge uses the same
classes to choose retry or dead-letter.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal error"
    #: What the code means to a client: the OpenAPI document's text for it.
    #: Each class an answer or a job can carry states its own.
    note: ClassVar[str] = "an unexpected fault, logged; never caused by input"
    #: A transient failure: the same work may succeed if tried again later.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, str]] | None = None,
        extra: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        self.detail = detail or self.title
        self.errors = errors or []
        self.extra = extra or {}
        #: Seconds after which the same request may succeed (sent as ``Retry-After``).
        self.retry_after = retry_after
        super().__init__(self.detail)

    def to_dict(self) -> dict[str, Any]:
        """The problem details (RFC 9457) of this error, without ``type``/``instance``."""
        body: dict[str, Any] = {
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class BadRequest(ServiceError):
    status, code, title = 400, "bad_request", "Bad request"
    note = (
        "the body is not a JSON object (not JSON, not UTF-8, NaN, duplicate keys, too deep) or a field "
        "has the wrong JSON type; or the Idempotency-Key header is malformed"
    )


class ValidationFailed(ServiceError):
    status, code, title = 422, "validation_error", "Invalid input"
    note = (
        "well-formed input with invalid values, a missing field, or an id that is not 24 hexadecimal "
        "digits; `errors` names every bad field"
    )


class Unauthorized(ServiceError):
    status, code, title = 401, "unauthorized", "Authentication required"
    note = "no token, or a malformed, badly signed, `alg: none` or expired one"


class Forbidden(ServiceError):
    status, code, title = 403, "forbidden", "Forbidden"
    note = "a service token (`userType` with `service`) may read payments but not delete them"


class CsrfRejected(Forbidden):
    code, title = "csrf_rejected", "Cookie-authenticated write without a JSON body"
    note = "a POST authenticated by the `token` cookie alone without `Content-Type: application/json`"


class NotFound(ServiceError):
    status, code, title = 404, "not_found", "Not found"
    note = "the URL matches no operation (for example an id holding a `/`)"


class RateLimited(ServiceError):
    """The caller sent more requests than its per-user limit allows; nothing was done."""

    status, code, title = 429, "rate_limited", "Too many requests"
    note = (
        "the caller (the token's user) spent its budget of writes (`RATE_LIMIT_WRITES`) or reads "
        "(`RATE_LIMIT_READS`); nothing was done; `Retry-After` and `retryAfter` say when to retry"
    )


class TooManyOpenJobs(RateLimited):
    """The caller already has as many queued or running jobs as allowed; nothing was accepted."""

    code, title = "too_many_open_jobs", "Too many open jobs"
    note = (
        "the caller already has `OPEN_JOBS_PER_USER` jobs queued or running; nothing was accepted; retry "
        "once one has ended (`Retry-After`)"
    )


class ServiceUnavailable(ServiceError):
    """A dependency (database, broker, checkout service) did not answer."""

    status, code, title = 503, "service_unavailable", "Service unavailable"
    note = "a dependency did not answer; nothing was accepted, so retrying is safe"
    retryable = True


# -- domain errors (api.md's codes) -------------------------------------------


class CardNotFound(NotFound):
    code, title = "card_not_found", "Card not found"
    note = "no such card, a deleted one, or someone else's (answered exactly alike)"


class PaymentNotFound(NotFound):
    code, title = "payment_not_found", "Payment not found"
    note = "no such payment, a deleted one, or one the caller may not see"


class JobNotFound(NotFound):
    code, title = "job_not_found", "Job not found"
    note = "no such job, or someone else's"


class CheckoutNotFound(NotFound):
    code, title = "checkout_not_found", "Checkout not found"
    note = "no such checkout, or someone else's"


class DuplicateCard(ServiceError):
    status, code, title = 409, "duplicate_card", "This card number is already registered"
    note = "this card number is already registered (by anyone)"


class AlreadyPaid(ServiceError):
    status, code, title = 409, "already_paid", "This checkout is already paid"
    note = (
        "the checkout is already paid or no longer active; `paymentId` and `links.payment` name the "
        "existing payment when there is one, `links.job` the job still charging it otherwise"
    )


class InsufficientFunds(ServiceError):
    status, code, title = 402, "insufficient_funds", "The card does not hold enough money"
    note = "the card holds less than the checkout's total; no money moved"


class CardExpired(ServiceError):
    status, code, title = 422, "card_expired", "The card has expired"
    note = "the card expired before it could be charged"


class IdempotencyKeyReused(ServiceError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency-Key was used for another request"
    note = "this Idempotency-Key was sent before, by the same user, with another request"


class CheckoutUnavailable(ServiceUnavailable):
    code, title = "checkout_unavailable", "The checkout service did not answer"
    note = "the checkout service did not answer, after retries"


# -- refund events that can never be applied (dead-lettered by the workers) ---------


class RefundRejected(ServiceError):
    """A refund event that can never be applied; it changes nothing and is set aside."""

    status, code, title = 422, "refund_rejected", "The refund cannot be applied"


class RefundPaymentNotFound(RefundRejected):
    code, title = "unknown_payment", "No charged payment with this id"


class ProductNotInPayment(RefundRejected):
    code, title = "product_not_in_payment", "The payment has no such product"


class NotWholeUnits(RefundRejected):
    code, title = "not_whole_units", "The amount is not a whole number of the product's units"


class OverRefund(RefundRejected):
    code, title = "over_refund", "The refund exceeds what was paid and not yet refunded"


class NothingToRefund(RefundRejected):
    code, title = "nothing_to_refund", "Everything paid was already refunded"


class RefundCardDeleted(RefundRejected):
    code, title = "card_deleted", "The payment's card was deleted"


class RefundContended(ServiceUnavailable):
    code, title = "refund_contended", "The payment kept changing; the refund will be retried"


class CardContended(ServiceUnavailable):
    code, title = "card_contended", "The card kept changing; the operation will be retried"


class EventNotPublished(ServiceUnavailable):
    code, title = "event_not_published", "Kafka did not acknowledge the event"
