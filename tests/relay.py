"""A TCP relay on 127.0.0.1 between a client and the object store (SeaweedFS): a real
network fault, without touching either side.  :meth:`Relay.stop` takes the store away
(open connections aborted, new ones refused) and :meth:`Relay.start` brings it back;
while ``silent`` it is a black hole: it takes connections and requests and passes
nothing on, so nothing is answered (a store that hangs, not one that refuses); ``cut``
names requests (by their first line) whose connection is aborted before the
request reaches the store.  Given an ``ssl`` context it is the store's HTTPS end (TLS
on the client's side, plain HTTP to the store), and it keeps every request's
``x-amz-content-sha256`` (signed body or not).  :class:`RelayThread` runs one in a
thread of its own, for a server in another process."""

from __future__ import annotations

import asyncio
import re
import ssl as _ssl
import threading
import urllib.parse
from typing import Callable

from hashserver.testing import free_port

BOUND = 60.0  # seconds: a bound against hangs
CONTENT_SHA256 = re.compile(rb"\r\nx-amz-content-sha256: ([^\r\n]*)\r\n", re.IGNORECASE)
HEADER_SPAN = 200  # bytes kept from one read to the next, so that a header split by a read is still found


class Relay:
    def __init__(self, target: str, cut: Callable[[bytes], bool] = lambda request_line: False,
                 ssl: _ssl.SSLContext | None = None):
        self.cut = cut
        self.silent = False
        self.ssl = ssl
        parts = urllib.parse.urlsplit(target)
        self.target, self.port = (parts.hostname, parts.port), free_port()
        self.url = f"{'https' if ssl else 'http'}://127.0.0.1:{self.port}"
        self.content_sha256: list[bytes] = []  # each request's x-amz-content-sha256, in order
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.open_connections = 0
        self.most_connections = 0  # open at once, since the start

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.ssl)

    async def stop(self) -> None:
        """No more connections; those open are cut."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.server is None:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, upstream_writer}
        self.open_connections += 1
        self.most_connections = max(self.most_connections, self.open_connections)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter, requests: bool) -> None:
            seen = b""
            try:
                while data := await source.read(65536):
                    if requests and self.silent:
                        continue
                    if requests and self.cut(data.split(b"\r\n", 1)[0]):
                        break
                    if requests:
                        seen = self._note_headers(seen + data)
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()
                self.writers.discard(sink)

        try:
            await asyncio.gather(pump(reader, upstream_writer, True), pump(upstream_reader, writer, False))
        finally:
            self.open_connections -= 1


    def _note_headers(self, data: bytes) -> bytes:
        """Keeps the content hashes that ``data`` holds; returns what to look at again."""
        end = 0
        for found in CONTENT_SHA256.finditer(data):
            self.content_sha256.append(found.group(1))
            end = found.end() - 2
        return data[max(end, len(data) - HEADER_SPAN):]


class RelayThread:
    """A :class:`Relay` run by its own event loop in a thread."""

    def __init__(self, target: str):
        self.relay = Relay(target)
        self.url = self.relay.url
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="s3-relay", daemon=True)

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(BOUND)

    def start(self) -> "RelayThread":
        if not self.thread.is_alive():
            self.thread.start()
        self._run(self.relay.start())
        return self

    def cut(self) -> None:
        self._run(self.relay.stop())

    def silence(self, silent: bool = True) -> None:
        """A black hole from now on (see :class:`Relay`), or no longer."""
        self.loop.call_soon_threadsafe(setattr, self.relay, "silent", silent)

    def close(self) -> None:
        if self.thread.is_alive():
            self.cut()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(BOUND)
        self.loop.close()
