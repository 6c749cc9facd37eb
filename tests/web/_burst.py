"""One token's burst of pays, run as its own process so it never competes with the API for the GIL.

Usage: ``python _burst.py BASE_URL TOKEN COUNT THREADS``.  Sends COUNT pays of
made-up checkouts from THREADS threads and prints one JSON line: how many
answers had each status (429s by their problem code), and every 429 that
lacked a problem+json body or a ``Retry-After`` between 1 and 60 seconds.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests
from bson import ObjectId


def main(base: str, token: str, count: int, threads: int) -> None:
    statuses: Counter[str] = Counter()
    malformed: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def pay(_: int) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        answer = session.post(
            f"{base}/api/payment/pay/{ObjectId()}?cardId={ObjectId()}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        key = str(answer.status_code)
        if answer.status_code == 429:
            retry_after = answer.headers.get("Retry-After", "")
            if answer.headers.get("Content-Type") != "application/problem+json" or not (
                retry_after.isdigit() and 1 <= int(retry_after) <= 60
            ):
                malformed.append(f"{answer.headers} {answer.text[:200]}")
            key = f"429 {answer.json().get('code')}"
        with lock:
            statuses[key] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(pay, range(count)))
    print(json.dumps({"statuses": statuses, "malformed": malformed, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
