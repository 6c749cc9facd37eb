"""One racing client of the conformance suite, run as its own process.

Usage: ``python _race_worker.py MODE SPEC_JSON`` with MODE ``debit`` or
``insert-unique``, by the Python that runs the tests.  The worker connects,
prints ``ready`` and waits for a line ``go START_AT`` on stdin: START_AT is a
moment on the machine's monotonic clock, the same for every racer, at which
they all begin.  It then runs its operations and prints one JSON line with
what the server answered.  Only the ``DuplicateKeyError`` an ``insert-unique``
race expects is caught: any other error ends the worker with a traceback,
which fails the test.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from bson import Decimal128, ObjectId
from pymongo import MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError


def sleep_until(moment: float) -> None:
    """Sleep until ``moment`` on the monotonic clock (shared by all processes)."""
    time.sleep(max(0.0, moment - time.monotonic()))


def debit(collection: Collection[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Conditionally debit one account ``spec['attempts']`` times.

    With ``find_one_and_update`` the balances of the returned documents
    (``spec['return_document']``: ``before`` or ``after`` the update) are
    reported too.
    """
    account_id = ObjectId(spec["account_id"])
    amount = Decimal128(spec["amount"])
    minus_amount = Decimal128("-" + spec["amount"])
    condition = {"_id": account_id, "money": {"$gte": amount}}
    change = {"$inc": {"money": minus_amount}}
    return_document = ReturnDocument.AFTER if spec["return_document"] == "after" else ReturnDocument.BEFORE
    matched = modified = 0
    returned: list[str] = []
    for _ in range(spec["attempts"]):
        if spec["operation"] == "update_one":
            result = collection.update_one(condition, change)
            matched += result.matched_count
            modified += result.modified_count
        else:
            document = collection.find_one_and_update(condition, change, return_document=return_document)
            if document is not None:
                matched += 1
                modified += 1
                returned.append(str(document["money"].to_decimal()))
    return {"matched": matched, "modified": modified, "returned": returned}


def insert_unique(collection: Collection[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """Insert every key of ``spec['keys']`` once, counting duplicate-key refusals.

    Key number k is inserted ``k * spec['slot']`` seconds after the start, the
    same moment in every racer, so that all of them try each key at once.
    """
    inserted: list[str] = []
    duplicates = 0
    for number, key in enumerate(spec["keys"]):
        sleep_until(spec["start_at"] + number * spec["slot"])
        try:
            collection.insert_one({"key": key, "writer": spec["writer"]})
            inserted.append(key)
        except DuplicateKeyError:
            duplicates += 1
    return {"inserted": inserted, "duplicates": duplicates}


def main(argv: list[str]) -> int:
    mode, spec = argv[1], json.loads(argv[2])
    client: MongoClient[dict[str, Any]] = MongoClient(
        spec["url"], serverSelectionTimeoutMS=10_000, connectTimeoutMS=10_000, retryWrites=False
    )
    try:
        collection = client[spec["database"]][spec["collection"]]
        client.admin.command("ping")  # connected before the start signal
        print("ready", flush=True)
        command, start_at = sys.stdin.readline().split()
        if command != "go":
            return 3
        spec["start_at"] = float(start_at)
        sleep_until(spec["start_at"])
        run = debit if mode == "debit" else insert_unique
        print(json.dumps(run(collection, spec)), flush=True)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
