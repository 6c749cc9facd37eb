"""Who may call what, over real HTTP (api.md "Authentication and who may see what").

Every route refuses a missing or bad token with a 401 problem; the ``token``
cookie works like the header, except that a cookie-only POST must be JSON;
someone else's card, payment or job is a 404 exactly like an id that does not
exist; admins read and delete anything; a ``service`` token reads payments
only; and token-less ``GET /find`` exists only when an operator allows a
network, for that route alone.
"""

from __future__ import annotations

import base64
import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import requests
from bson import ObjectId
from jwt.warnings import InsecureKeyLengthWarning
from pymongo.database import Database

from shared.settings import Settings
from tests.environment import TEST_ENV, make_settings
from tests.factories import AddCardBodyFactory
from tests.helpers import API, Client, SeedCheckout, jobs_of, pay_new_checkout, token_for
from tests.support import ServedApp
from web import create_app

#: The ``seed_checkout`` fixture: puts a checkout in the stand-in checkout service.

SECRET = TEST_ENV["JWT_SEC"]

#: Every route of the API, with a placeholder for its id.
ROUTES = [
    ("GET", "/get/{id}"),
    ("GET", "/find/{id}"),
    ("GET", "/jobs/{id}"),
    ("POST", "/add"),
    ("POST", "/pay/{id}"),
    ("DELETE", "/delete-card/{id}"),
    ("DELETE", "/delete-payment/{id}"),
]
ROUTE_IDS = [f"{method} {path}" for method, path in ROUTES]


# -- tokens ----------------------------------------------------------------------


def _b64url(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


#: A claim value meaning "leave this claim out".
_DROP = object()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "userId": str(ObjectId()),
        "userType": ["default"],
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(hours=1)).timestamp()),
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not _DROP}


def _signed(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # PyJWT warns that the shared secret is short for HS384/HS512; we sign
        # with those only to see them refused.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm=algorithm)


def _alg_none() -> str:
    # PyJWT will not make one; an attacker builds it by hand like this.
    return f"{_b64url({'alg': 'none', 'typ': 'JWT'})}.{_b64url(_claims(userType=['admin']))}."


#: Authorization header values that must all be refused (None: no header at all).
BAD_AUTHORIZATION: dict[str, Callable[[], str | None]] = {
    "no token": lambda: None,
    "malformed token": lambda: "Bearer abc",
    "empty bearer": lambda: "Bearer ",
    "token without the Bearer prefix": token_for,
    "basic credentials": lambda: "Basic " + base64.b64encode(b"admin:admin").decode(),
    "wrong secret": lambda: "Bearer " + _signed(_claims(), secret="not-the-shared-secret-0123456789abcdef"),
    "expired": lambda: "Bearer " + token_for(minutes=-1),
    "no exp (never expires)": lambda: "Bearer " + _signed(_claims(exp=_DROP)),
    "alg none": lambda: "Bearer " + _alg_none(),
    "HS384 with the right secret": lambda: "Bearer " + _signed(_claims(), algorithm="HS384"),
    "HS512 with the right secret": lambda: "Bearer " + _signed(_claims(), algorithm="HS512"),
    "tampered payload": lambda: "Bearer " + _tampered(),
    "no userId": lambda: "Bearer " + _signed(_claims(userId=_DROP)),
    "userId not an ObjectId": lambda: "Bearer " + _signed(_claims(userId="user-42")),
    "userId a number": lambda: "Bearer " + _signed(_claims(userId=42)),
    "userId null": lambda: "Bearer " + _signed(_claims(userId=None)),
    "userType a string": lambda: "Bearer " + _signed(_claims(userType="admin")),
    "userType a list with a non-string": lambda: "Bearer " + _signed(_claims(userType=["admin", 1])),
    "userType an object": lambda: "Bearer " + _signed(_claims(userType={"admin": True})),
}


def _tampered() -> str:
    """A genuine token whose payload was swapped for one granting admin."""
    header, _payload, signature = token_for().split(".")
    return f"{header}.{_b64url(_claims(userType=['admin']))}.{signature}"


def _add_card_body() -> dict[str, Any]:
    body: dict[str, Any] = AddCardBodyFactory()
    return body


def _assert_unauthorized(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = response.json()
    assert body["code"] == "unauthorized"
    assert body["status"] == 401
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


# -- fixtures --------------------------------------------------------------------


@dataclass
class Owned:
    """User A and a card, a charged payment and a job of A's."""

    owner: Client
    card: dict[str, Any]
    payment: dict[str, Any]
    job: dict[str, Any]

    def path(self, kind: str) -> str:
        return {
            "card": f"/get/{self.card['id']}",
            "payment": f"/find/{self.payment['id']}",
            "job": f"/jobs/{self.job['id']}",
        }[kind]


def _own_resources(client: Client, seed_checkout: SeedCheckout, total: str = "10.00") -> Owned:
    card = client.add_card(money=100)
    job = pay_new_checkout(client, seed_checkout, card["id"], total=total)
    assert job["status"] == "succeeded", job
    return Owned(owner=client, card=card, payment=job["result"], job=job)


@pytest.fixture
def owned(make_client: Callable[..., Client], seed_checkout: SeedCheckout) -> Owned:
    return _own_resources(make_client(), seed_checkout)


# -- bad tokens, every route --------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=ROUTE_IDS)
@pytest.mark.parametrize("kind", list(BAD_AUTHORIZATION))
def test_every_route_answers_401_problem_json_to_a_missing_or_bad_token(
    api: ServedApp, mongo: Database[dict[str, Any]], method: str, path: str, kind: str
) -> None:
    authorization = BAD_AUTHORIZATION[kind]()
    headers = {} if authorization is None else {"Authorization": authorization}
    jobs_before = mongo.jobs.count_documents({})
    response = requests.request(
        method,
        f"{api.url}{API}{path.format(id=ObjectId())}",
        headers=headers,
        json=_add_card_body() if path == "/add" else None,
        params={"cardId": str(ObjectId())} if path.startswith("/pay") else None,
        timeout=30,
    )
    _assert_unauthorized(response)
    assert mongo.jobs.count_documents({}) == jobs_before


def test_a_token_of_a_user_signed_with_a_wrong_secret_cannot_read_that_users_card(
    client: Client, api: ServedApp
) -> None:
    card = client.add_card()
    forged = _signed(_claims(userId=client.user_id), secret="guessed-secret-guessed-secret-guessed!")
    response = requests.get(
        f"{api.url}{API}/get/{card['id']}", headers={"Authorization": f"Bearer {forged}"}, timeout=30
    )
    _assert_unauthorized(response)
    assert card["last4"] not in response.text


def test_an_alg_none_token_naming_the_owner_cannot_read_the_owners_card(
    client: Client, api: ServedApp
) -> None:
    card = client.add_card()
    header = _b64url({"alg": "none", "typ": "JWT"})
    unsigned = f"{header}.{_b64url(_claims(userId=client.user_id))}."
    response = requests.get(
        f"{api.url}{API}/get/{card['id']}", headers={"Authorization": f"Bearer {unsigned}"}, timeout=30
    )
    _assert_unauthorized(response)


def test_a_bad_token_in_the_cookie_is_401_too(api: ServedApp) -> None:
    response = requests.get(
        f"{api.url}{API}/get/{ObjectId()}", cookies={"token": token_for(minutes=-1)}, timeout=30
    )
    _assert_unauthorized(response)


# -- the token cookie --------------------------------------------------------------


def test_the_token_cookie_authenticates_a_read(client: Client, api: ServedApp) -> None:
    card = client.add_card()
    response = requests.get(f"{api.url}{API}/get/{card['id']}", cookies={"token": client.token}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == card["id"]
    assert response.json()["cardUserId"] == client.user_id


def test_the_token_cookie_authenticates_a_json_post(
    client: Client, api: ServedApp, mongo: Database[dict[str, Any]]
) -> None:
    response = requests.post(
        f"{api.url}{API}/add",
        cookies={"token": client.token},
        json=_add_card_body(),
        headers={"Prefer": "wait=10"},
        timeout=30,
    )
    assert response.status_code in (200, 202), response.text
    job = client.wait(response)
    assert job["status"] == "succeeded", job
    assert job["result"]["cardUserId"] == client.user_id
    assert jobs_of(mongo, client.user_id) == 1


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        None,
    ],
)
def test_a_post_authenticated_by_cookie_alone_without_json_content_type_is_refused_and_queues_nothing(
    client: Client, api: ServedApp, mongo: Database[dict[str, Any]], content_type: str | None
) -> None:
    # What a foreign page can send cross-site without a CORS preflight.
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = requests.post(
        f"{api.url}{API}/add",
        cookies={"token": client.token},
        data=json.dumps(_add_card_body()).encode(),
        headers=headers,
        timeout=30,
    )
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "csrf_rejected"
    assert jobs_of(mongo, client.user_id) == 0


def test_a_cookie_authenticated_pay_with_a_form_content_type_is_refused_and_queues_nothing(
    client: Client, api: ServedApp, mongo: Database[dict[str, Any]], seed_checkout: SeedCheckout
) -> None:
    card = client.add_card()
    checkout = seed_checkout(client.user_id, total="1.00")
    jobs_before = jobs_of(mongo, client.user_id)
    response = requests.post(
        f"{api.url}{API}/pay/{checkout['_id']}",
        params={"cardId": card["id"]},
        cookies={"token": client.token},
        data=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "csrf_rejected"
    assert jobs_of(mongo, client.user_id) == jobs_before
    assert client.call("GET", f"/get/{card['id']}").json()["money"] == 100


def test_a_non_json_post_with_the_bearer_header_is_not_a_csrf_case(client: Client, api: ServedApp) -> None:
    # The header cannot be sent cross-site by a foreign page, so the content
    # type is then only a matter of parsing the body (which here is JSON text).
    response = client.call(
        "POST",
        "/add",
        data=json.dumps(_add_card_body()).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code != 403, response.text
    assert response.json().get("code") != "csrf_rejected"


# -- ownership ----------------------------------------------------------------------


#: (method, path template, what it names) for each read or delete of a resource.
FOREIGN_ACCESS = [
    ("GET", "/get/{id}", "card"),
    ("DELETE", "/delete-card/{id}", "card"),
    ("GET", "/find/{id}", "payment"),
    ("DELETE", "/delete-payment/{id}", "payment"),
    ("GET", "/jobs/{id}", "job"),
]


def _id_of(owned: Owned, kind: str) -> str:
    return str({"card": owned.card, "payment": owned.payment, "job": owned.job}[kind]["id"])


@pytest.mark.parametrize("access", FOREIGN_ACCESS, ids=[f"{m} {p}" for m, p, _ in FOREIGN_ACCESS])
def test_another_users_resource_is_a_404_indistinguishable_from_a_missing_one(
    owned: Owned,
    make_client: Callable[..., Client],
    mongo: Database[dict[str, Any]],
    access: tuple[str, str, str],
) -> None:
    method, path, kind = access
    stranger = make_client()
    theirs_id = _id_of(owned, kind)
    missing_id = str(ObjectId())
    theirs = stranger.call(method, path.format(id=theirs_id))
    missing = stranger.call(method, path.format(id=missing_id))
    assert theirs.status_code == 404, theirs.text
    assert missing.status_code == 404, missing.text
    assert theirs.headers["Content-Type"] == missing.headers["Content-Type"] == "application/problem+json"
    # Same answer but for the id itself: nothing tells "exists, not yours" apart.
    assert json.loads(theirs.text.replace(theirs_id, "ID")) == json.loads(
        missing.text.replace(missing_id, "ID")
    )
    assert jobs_of(mongo, stranger.user_id) == 0
    # And the owner still has it.
    assert owned.owner.call("GET", owned.path(kind)).status_code == 200


def test_another_users_card_cannot_be_paid_with(
    owned: Owned, make_client: Callable[..., Client], seed_checkout: SeedCheckout
) -> None:
    stranger = make_client()
    checkout = seed_checkout(stranger.user_id, total="1.00")
    job = stranger.wait(stranger.pay(checkout["_id"], owned.card["id"]))
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "card_not_found"
    assert job["error"]["status"] == 404
    assert owned.owner.call("GET", f"/get/{owned.card['id']}").json()["money"] == owned.card["money"] - 10


@pytest.mark.parametrize("kind", ["card", "payment", "job"])
def test_an_admin_reads_any_users_card_payment_and_job(
    owned: Owned, make_client: Callable[..., Client], kind: str
) -> None:
    admin = make_client(types=["default", "admin"])
    response = admin.call("GET", owned.path(kind))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == _id_of(owned, kind)
    assert response.json() == owned.owner.call("GET", owned.path(kind)).json()


def test_an_admin_deletes_another_users_card(owned: Owned, make_client: Callable[..., Client]) -> None:
    admin = make_client(types=["admin"])
    job = admin.wait(admin.call("DELETE", f"/delete-card/{owned.card['id']}"))
    assert job["status"] == "succeeded", job
    assert job["result"] == {"deleted": owned.card["id"]}
    gone = owned.owner.call("GET", f"/get/{owned.card['id']}")
    assert gone.status_code == 404
    assert gone.json()["code"] == "card_not_found"


def test_an_admin_deletes_another_users_payment(owned: Owned, make_client: Callable[..., Client]) -> None:
    admin = make_client(types=["admin"])
    job = admin.wait(admin.call("DELETE", f"/delete-payment/{owned.payment['id']}"))
    assert job["status"] == "succeeded", job
    assert job["result"] == {"deleted": owned.payment["id"]}
    gone = owned.owner.call("GET", f"/find/{owned.payment['id']}")
    assert gone.status_code == 404
    assert gone.json()["code"] == "payment_not_found"


def test_a_service_token_reads_any_users_payment(owned: Owned, make_client: Callable[..., Client]) -> None:
    service = make_client(types=["service"])
    response = service.call("GET", f"/find/{owned.payment['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == owned.payment


@pytest.mark.parametrize(
    "access",
    [
        ("GET", "/get/{id}", "card", "card_not_found"),
        ("DELETE", "/delete-card/{id}", "card", "card_not_found"),
        ("GET", "/jobs/{id}", "job", "job_not_found"),
    ],
    ids=["GET card", "DELETE card", "GET job"],
)
def test_a_service_token_sees_no_other_users_card_or_job(
    owned: Owned,
    make_client: Callable[..., Client],
    mongo: Database[dict[str, Any]],
    access: tuple[str, str, str, str],
) -> None:
    method, path, kind, code = access
    service = make_client(types=["service"])
    response = service.call(method, path.format(id=_id_of(owned, kind)))
    assert response.status_code == 404, response.text
    assert response.json()["code"] == code
    assert jobs_of(mongo, service.user_id) == 0


def test_a_service_token_may_read_but_not_delete_another_users_payment(
    owned: Owned, make_client: Callable[..., Client], mongo: Database[dict[str, Any]]
) -> None:
    service = make_client(types=["service"])
    response = service.call("DELETE", f"/delete-payment/{owned.payment['id']}")
    # The code's documented choice: it may see the payment, so "not found" would be a lie.
    assert response.status_code == 403, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["code"] == "forbidden"
    assert jobs_of(mongo, service.user_id) == 0
    assert owned.owner.call("GET", f"/find/{owned.payment['id']}").status_code == 200


# -- token-less /find ------------------------------------------------------------------


@pytest.fixture(scope="module")
def loopback_trusted_api(settings: Settings, payment_celery: Any, api: ServedApp) -> Iterator[ServedApp]:
    """A second app that lets loopback read /find without a token."""
    served = ServedApp(create_app(make_settings(FIND_TOKENLESS_NETWORKS="127.0.0.0/8"), payment_celery))
    yield served
    served.close()


def test_token_less_find_is_refused_by_default(owned: Owned, api: ServedApp) -> None:
    response = requests.get(f"{api.url}{API}/find/{owned.payment['id']}", timeout=30)
    _assert_unauthorized(response)
    assert owned.payment["userId"] not in response.text


def test_token_less_find_works_from_an_allowed_network(owned: Owned, loopback_trusted_api: ServedApp) -> None:
    response = requests.get(f"{loopback_trusted_api.url}{API}/find/{owned.payment['id']}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == owned.payment


def test_token_less_find_of_an_unknown_payment_from_an_allowed_network_is_404(
    loopback_trusted_api: ServedApp,
) -> None:
    response = requests.get(f"{loopback_trusted_api.url}{API}/find/{ObjectId()}", timeout=30)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "payment_not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [r for r in ROUTES if r[1] != "/find/{id}"],
    ids=[i for i in ROUTE_IDS if "find" not in i],
)
def test_an_allowed_network_opens_no_route_but_find(
    owned: Owned,
    loopback_trusted_api: ServedApp,
    mongo: Database[dict[str, Any]],
    method: str,
    path: str,
) -> None:
    real_id = {
        "/get/{id}": owned.card["id"],
        "/jobs/{id}": owned.job["id"],
        "/pay/{id}": str(ObjectId()),
        "/delete-card/{id}": owned.card["id"],
        "/delete-payment/{id}": owned.payment["id"],
        "/add": "",
    }[path]
    jobs_before = mongo.jobs.count_documents({})
    response = requests.request(
        method,
        f"{loopback_trusted_api.url}{API}{path.format(id=real_id)}",
        json=_add_card_body() if path == "/add" else None,
        params={"cardId": owned.card["id"]} if path.startswith("/pay") else None,
        timeout=30,
    )
    _assert_unauthorized(response)
    assert mongo.jobs.count_documents({}) == jobs_before
    assert owned.owner.call("GET", f"/get/{owned.card['id']}").status_code == 200


def test_a_bad_token_on_find_from_an_allowed_network_is_still_401(
    owned: Owned, loopback_trusted_api: ServedApp
) -> None:
    # A token that fails is an error, not a reason to fall back to "no token".
    response = requests.get(
        f"{loopback_trusted_api.url}{API}/find/{owned.payment['id']}",
        headers={"Authorization": "Bearer " + token_for(minutes=-1)},
        timeout=30,
    )
    _assert_unauthorized(response)


def test_a_forwarded_for_header_does_not_make_a_caller_trusted(
    owned: Owned, settings: Settings, payment_celery: Any
) -> None:
    served = ServedApp(create_app(make_settings(FIND_TOKENLESS_NETWORKS="10.0.0.0/8"), payment_celery))
    try:
        response = requests.get(
            f"{served.url}{API}/find/{owned.payment['id']}",
            headers={"X-Forwarded-For": "10.1.2.3", "X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3"},
            timeout=30,
        )
    finally:
        served.close()
    _assert_unauthorized(response)


# -- clock skew ------------------------------------------------------------------


def _expired_token(seconds_ago: int) -> str:
    now = datetime.now(UTC)
    claims = {
        "userId": str(ObjectId()),
        "userType": ["default"],
        "iat": now - timedelta(hours=1),
        "exp": now - timedelta(seconds=seconds_ago),
    }
    return jwt.encode(claims, TEST_ENV["JWT_SEC"], algorithm="HS256")


@pytest.mark.parametrize(("seconds_ago", "status"), [(10, 404), (60, 401)])
def test_a_token_expired_within_the_clock_skew_leeway_still_passes(
    api: ServedApp, seconds_ago: int, status: int
) -> None:
    # The default leeway is 30 s: the user service's clock may run a little ahead.
    response = requests.get(
        f"{api.url}{API}/find/{ObjectId()}",
        headers={"Authorization": f"Bearer {_expired_token(seconds_ago)}"},
        timeout=30,
    )
    assert response.status_code == status, response.text
