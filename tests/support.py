"""Helpers the tests share: free ports, background HTTP servers, process groups, polling."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 30, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with ``start_new_session=True`` and its children; SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class ServedApp:
    """A WSGI app served over real HTTP on loopback from a background thread."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        # The rate limits' Redis connections are the app's own: closed here,
        # not left to the garbage collector (which warns of each open socket
        # in whichever test it happens to run).
        limits = getattr(self.server.app, "extensions", {}).get("rate_limits")
        if limits is not None:
            limits.close()


def wait_until(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, message: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout}s")
        time.sleep(interval)


class BlackHole:
    """A port that accepts connections and never answers (a hung server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


class FreezableProxy:
    """A TCP proxy on loopback to ``port`` that forwards until :meth:`freeze`, then holds every byte.

    Stands for a server that stops answering on connections it already has
    (a partition, a stuck process): the connections stay open, nothing
    comes back.
    """

    def __init__(self, port: int) -> None:
        self._target = port
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._frozen.set()

    def close(self) -> None:
        self._closed.set()
        for sock in [self._listener, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                return
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                readable, _, _ = select.select([source], [], [], 0.05)
                if readable and not self._frozen.is_set():
                    data = source.recv(65536)
                    if not data:
                        return
                    sink.sendall(data)
