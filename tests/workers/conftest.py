"""The API fixtures serve the worker tests too (payments to refund, cards to credit)."""

from tests.web.conftest import api, client, make_client, second_worker, seed_checkout, world_factory

__all__ = ["api", "client", "make_client", "second_worker", "seed_checkout", "world_factory"]
