"""kombu's Redis transport, with one Redis client object per channel for its plain commands.

kombu's Redis channel builds a new ``redis.Redis`` object for every command
it sends outside its event loop: each task message published, each task
event, each acknowledgement.  The object only wraps the channel's
connection pool (the connections are pooled either way), but building it
costs more than the command: in a worker node's main process, a fifth of
its CPU under load went to it (py-spy, issue 10).  This channel keeps the
object it built for its pool and builds a new one only when the pool
changes (kombu drops the pool when the channel closes or reconnects).

What is sent, and when, is kombu's; only the wrapper object is reused.  A
``redis.Redis`` on a pool is safe to share between threads: each command
takes a connection of the pool for its own time.  The event loop's client
(``asynchronous``) is kombu's as it was.
"""

from __future__ import annotations

from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _plain_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._plain_client
        if client is None or client.connection_pool is not self.pool:
            client = self._plain_client = super()._create_client(asynchronous=False)
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


#: This transport, as kombu names a class.
TRANSPORT = f"{__name__}:Transport"
#: kombu's names of its Redis transport (``rediss`` is how kombu knows to use TLS).
ALIASES = ("redis", "rediss")


def install() -> None:
    """Make kombu's ``redis`` and ``rediss`` transports this one, in this process.

    By kombu's own names, not a ``broker_transport`` class path: the URL a
    connection prints (``as_uri``), which Flower reads to find the broker's
    kind, stays ``redis://``; a failover URL resolves the same way; and
    ``rediss`` still turns TLS on.  Idempotent.
    """
    for alias in ALIASES:
        kombu_transport.TRANSPORT_ALIASES[alias] = TRANSPORT
        kombu_transport._transport_cache.pop(alias, None)  # a name resolved before this
