"""The lean S3 client (hashserver.s3lean): where it applies, that SeaweedFS takes its
signed calls, and its answer to each fault of a store, against a scripted HTTP server
that answers each request as the test says (a store that fails on cue)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from seaweedfs import ACCESS_KEY, SECRET_KEY, s3_bucket, seaweedfs  # noqa: F401  (fixtures)

from hashserver import s3lean
from hashserver.checksum import Hasher
from hashserver.config import Config
from hashserver.s3uploads import Signer
from hashserver.storage import PutOutcome, StorageUnavailable

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
from hashserver.objectstore import SMALL_GET, ObjectStore  # noqa: E402  (needs obstore)

BOUND = 60.0  # seconds: a bound against hangs, not a speed requirement
KEY = "buffers/ab/abcd"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, BOUND))


def answer(status: int, body: bytes = b"", reason: str = "X", chunked: bool = False,
           content_range: str | None = None, headers: str = "") -> bytes:
    """An answer's bytes; a 206 says its range (the body's bytes from 0) unless told otherwise."""
    if status == 206 and content_range is None:
        content_range = f"bytes 0-{len(body) - 1}/{len(body)}"
    head = f"HTTP/1.1 {status} {reason}\r\n{headers}" + (f"content-range: {content_range}\r\n" if content_range else "")
    if chunked:
        return (f"{head}transfer-encoding: chunked\r\n\r\n{len(body):x}\r\n".encode()
                + body + b"\r\n0\r\n\r\n")
    return f"{head}content-length: {len(body)}\r\n\r\n".encode() + body


class Scripted:
    """An HTTP server on 127.0.0.1 answering the n-th request with ``script[n]``: bytes
    to send, "close" (close the connection without an answer), "silent" (never answer),
    ("late", seconds, bytes) (answer after a while), or a list of bytes to send, seconds to
    pause and "hang up";
    "close after" in ``hang_up_after``: close the connection once that request is answered."""

    def __init__(self, script: list, hang_up_after: frozenset[int] = frozenset()):
        self.script = script
        self.hang_up_after = hang_up_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self) -> "Scripted":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                n = len(self.requests)
                self.requests.append(head + body)
                step = self.script[min(n, len(self.script) - 1)]
                if step == "close":
                    break
                if step == "silent":
                    await asyncio.sleep(BOUND)
                    break
                if isinstance(step, tuple):  # ("late", seconds, answer)
                    await asyncio.sleep(step[1])
                    step = step[2]
                for part in step if isinstance(step, list) else [step]:  # bytes, pauses, "hang up"
                    if part == "hang up":
                        return
                    if isinstance(part, float):
                        await asyncio.sleep(part)
                        continue
                    writer.write(part)
                    await writer.drain()
                if n in self.hang_up_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def client(self, **timeouts) -> s3lean.LeanClient:
        signer = Signer(f"http://127.0.0.1:{self.port}", "us-east-1", "key", "secret")
        return s3lean.LeanClient(signer, "bucket", **timeouts)


# ------------------------------------------------------------------ where it applies
def test_the_lean_client_applies_to_plain_http_with_static_credentials_and_no_proxy(monkeypatch):
    import os as os_module

    for name in [n for n in os_module.environ if n.startswith("AWS_")] + list(s3lean.PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    assert s3lean.for_endpoint("b", "http://127.0.0.1:1") is None  # no credentials: obstore finds them
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_PROFILE", "team")  # the AWS CLI's: obstore does not read it
    client = s3lean.for_endpoint("b", "http://user:pw@127.0.0.1:81/base%20x/")
    assert isinstance(client, s3lean.LeanClient) and client.base == "/base%20x/b/"
    assert client.host_header == "127.0.0.1:81" and client.signer.region == "eu-west-1"
    assert s3lean.for_endpoint("b", "http://[::1]:9000").host_header == "[::1]:9000"
    assert s3lean.for_endpoint("b", "https://s3.example.org") is None
    assert s3lean.for_endpoint("b", None) is None  # AWS S3 itself: https
    # settings obstore follows and this client does not: obstore makes every call
    for name, value in [("AWS_TOKEN", "t"), ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"),
                        ("AWS_SERVER_SIDE_ENCRYPTION", "sse-c"), ("AWS_REQUEST_PAYER", "true"),
                        ("AWS_ENDPOINT_URL_S3", "http://elsewhere:1"), ("HTTP_PROXY", "http://proxy:3128")]:
        monkeypatch.setenv(name, value)
        assert s3lean.for_endpoint("b", "http://127.0.0.1:1") is None, name
        monkeypatch.delenv(name)
    assert s3lean.for_endpoint("b", "http://127.0.0.1:1") is not None


def test_the_setting_turns_it_off_for_a_bucket_and_is_refused_for_a_directory(seaweedfs, s3_bucket, monkeypatch,  # noqa: F811
                                                                              tmp_path):
    for name, value in seaweedfs.s3_env().items():
        monkeypatch.setenv(name, value)
    on = Config(directory=f"s3://{s3_bucket}").validate()
    off = Config(directory=f"s3://{s3_bucket}", s3_lean_client=False).validate()
    assert ObjectStore.from_config(on).lean is not None
    assert ObjectStore.from_config(off).lean is None
    with pytest.raises(Exception, match="applies to an s3://BUCKET"):
        Config(directory=str(tmp_path), s3_lean_client=False).validate()


# ------------------------------------------------------------------ against SeaweedFS
@pytest.mark.parametrize("size", [0, 1000, SMALL_GET, SMALL_GET + 10], ids=["empty", "1000 B", "1 MiB", "longer"])
def test_seaweedfs_takes_its_signed_calls(seaweedfs, s3_bucket, size):  # noqa: F811
    """A conditional PUT, then a GET of the first MiB: the range, or all of a shorter object
    (416, empty, for an empty one); a second PUT of the key: "exists"."""
    signer = Signer.from_settings(s3_bucket, seaweedfs.s3_endpoint, {"access_key_id": ACCESS_KEY,
                                                                      "secret_access_key": SECRET_KEY})
    client = s3lean.LeanClient(signer, s3_bucket)
    data = os.urandom(size)

    async def scenario():
        try:
            await client.put_if_absent("p/x", data, hashlib.sha256(data).hexdigest())
            with pytest.raises(FileExistsError):
                await client.put_if_absent("p/x", data, hashlib.sha256(data).hexdigest())
            status, body = await client.get_range("p/x", 0, SMALL_GET)
            with pytest.raises(FileNotFoundError):
                await client.get_range("p/absent", 0, SMALL_GET)
            return status, body
        finally:
            client.close()

    status, body = run(scenario())
    assert (status, body) == ((416, b"") if size == 0 else (206, data[:SMALL_GET]))
    assert bytes(obstore.get(seaweedfs.s3_store(s3_bucket), "p/x").bytes()) == data


def test_a_wrong_signature_is_refused_with_the_stores_message(seaweedfs, s3_bucket):  # noqa: F811
    signer = Signer.from_settings(s3_bucket, seaweedfs.s3_endpoint, {"access_key_id": ACCESS_KEY,
                                                                      "secret_access_key": "wrong"})
    client = s3lean.LeanClient(signer, s3_bucket)
    with pytest.raises(s3lean.S3Error, match="HTTP 403.*SignatureDoesNotMatch") as caught:
        run(client.get_range("p/x", 0, 10))
    assert caught.value.status == 403
    client.close()


# ------------------------------------------------------------------ faults, scripted
def test_an_answer_is_read_by_its_length_or_its_chunks_and_the_connection_kept():
    async def scenario():
        async with Scripted([answer(206, b"abc"), answer(206, b"defg", chunked=True)]) as server:
            client = server.client()
            first = await client.get_range(KEY, 0, 10)
            second = await client.get_range(KEY, 0, 10)
            client.close()
            return first, second, server.connections, server.requests

    first, second, connections, requests = run(scenario())
    assert (first, second, connections) == ((206, b"abc"), (206, b"defg"), 1)
    assert requests[0].startswith(b"GET /bucket/buffers/ab/abcd HTTP/1.1\r\n")
    assert b"range: bytes=0-9\r\n" in requests[0] and b"authorization: AWS4-HMAC-SHA256 Credential=key/" in requests[0]


def test_a_connection_the_store_closed_is_replaced_and_the_call_retried():
    """The store closes a kept-alive connection (its idle timeout), or drops it before
    answering: the call goes again on a new connection."""
    async def scenario():
        script = [answer(206, b"one"), "close", answer(206, b"two")]
        async with Scripted(script, hang_up_after=frozenset({0})) as server:
            client = server.client()
            first = await client.get_range(KEY, 0, 10)
            await asyncio.sleep(0.05)  # the hang-up arrives
            second = await client.get_range(KEY, 0, 10)
            client.close()
            return first, second, len(server.requests), server.connections

    assert run(scenario()) == ((206, b"one"), (206, b"two"), 3, 3)


def test_a_call_cancelled_mid_answer_leaves_no_connection_behind():
    """A request cancelled while its answer is on the way (its client went away): that
    answer must reach no later call, which would take another object's bytes for its own
    (or, for a PUT, a GET's answer for "stored")."""
    async def scenario():
        script = [("late", 0.2, answer(206, b"first")), answer(206, b"second"), answer(206, b"third")]
        async with Scripted(script) as server:
            client = server.client()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.get_range(KEY, 0, 10), 0.05)
            second = await client.get_range(KEY, 0, 10)
            await asyncio.sleep(0.3)  # the first answer has been sent by now
            third = await client.get_range(KEY, 0, 10)
            client.close()
            return second, third, server.connections

    assert run(scenario()) == ((206, b"second"), (206, b"third"), 2)


def test_a_5xx_is_retried_with_backoff_and_then_named():
    async def scenario():
        async with Scripted([answer(503, b"<Code>SlowDown</Code>"), answer(500), answer(206, b"ok")]) as server:
            client = server.client()
            recovered = await client.get_range(KEY, 0, 10)
            calls = len(server.requests)
            client.close()
        async with Scripted([answer(503, b"<Error><Code>SlowDown</Code></Error>", "Slow Down")]) as server:
            client = server.client()
            with pytest.raises(s3lean.S3Error, match=r"GET of .*/bucket/buffers/ab/abcd: HTTP 503 .*SlowDown"):
                await client.get_range(KEY, 0, 10)
            client.close()
            return recovered, calls, len(server.requests)

    assert run(scenario()) == ((206, b"ok"), 3, s3lean.RETRIES + 1)


def test_a_store_that_does_not_answer_is_given_up_within_the_bounds():
    async def scenario():
        async with Scripted(["silent"]) as server:
            client = server.client(answer_timeout=0.2, retry_budget=0.5)
            with pytest.raises(s3lean.S3Error, match=r"no byte of the answer in 0.2 s"):
                await client.get_range(KEY, 0, 10)
            client.close()
            return len(server.requests)

    assert 1 <= run(scenario()) <= s3lean.RETRIES + 1


def test_a_store_that_is_not_there_is_named():
    async def scenario():
        async with Scripted([answer(200)]) as server:
            client = server.client()
        with pytest.raises(s3lean.S3Error, match=r"cannot connect to 127.0.0.1:\d+"):  # the server is closed
            await client.get_range(KEY, 0, 10)

    run(scenario())


def test_absent_exists_and_no_bucket_are_told_apart():
    no_bucket = b"<Error><Code>NoSuchBucket</Code></Error>"

    async def scenario():
        async with Scripted([answer(404, b"<Code>NoSuchKey</Code>"), answer(404, no_bucket), answer(412)]) as server:
            client = server.client()
            with pytest.raises(FileNotFoundError):
                await client.get_range(KEY, 0, 10)
            with pytest.raises(s3lean.S3Error, match="NoSuchBucket"):
                await client.get_range(KEY, 0, 10)
            with pytest.raises(FileExistsError):
                await client.put_if_absent(KEY, b"data", hashlib.sha256(b"data").hexdigest())
            client.close()
            return server.requests[-1]

    put = run(scenario())
    assert put.startswith(b"PUT /bucket/buffers/ab/abcd HTTP/1.1\r\n") and put.endswith(b"\r\n\r\ndata")
    assert b"if-none-match: *\r\n" in put and b"content-length: 4\r\n" in put
    assert f"x-amz-content-sha256: {hashlib.sha256(b'data').hexdigest()}".encode() in put


def test_a_whole_answer_longer_than_the_range_is_not_read():
    """A store that ignores ranges answers 200 with everything: the client takes it if it
    fits the range, else drops the connection without reading it."""
    async def scenario():
        async with Scripted([answer(200, b"small"), answer(200, b"x" * 100), answer(206, b"next")]) as server:
            client = server.client()
            results = [await client.get_range(KEY, 0, 10) for _ in range(3)]
            client.close()
            return results, server.connections

    assert run(scenario()) == ([(200, b"small"), (200, None), (206, b"next")], 2)


def test_through_the_object_store_a_failing_store_is_503_and_a_missing_bucket_named():
    async def scenario():
        async with Scripted([answer(503)]) as failing, \
                Scripted([answer(404, b"<Code>NoSuchBucket</Code>")]) as no_bucket:
            found = []
            for server in (failing, no_bucket):
                store = object_store_on(server.port)
                with pytest.raises(StorageUnavailable) as caught:
                    await store.open(hashlib.sha3_256(b"x").digest())
                found.append(str(caught.value))
                store.close()
            return found

    failing, no_bucket = run(scenario())
    assert "object store get of s3://bucket/buffers/" in failing and "HTTP 503" in failing
    assert "the bucket of s3://bucket/buffers does not exist" in no_bucket


def test_through_the_object_store_a_put_that_exists_is_present(monkeypatch):
    """A 412 to the create-only PUT, then a HEAD (by obstore) that finds the object."""
    for name, value in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                        ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    data = b"some buffer"
    found = (f"HTTP/1.1 200 OK\r\ncontent-length: {len(data)}\r\netag: \"x\"\r\n"
             f"last-modified: Thu, 26 Nov 2026 12:00:00 GMT\r\n\r\n").encode()

    async def scenario():
        async with Scripted([answer(412), found]) as server:
            store = object_store_on(server.port)
            try:
                return await store.put(hashlib.sha3_256(data).digest(), body([data]))
            finally:
                store.close()

    assert run(scenario()) is PutOutcome.PRESENT


async def body(pieces: list[bytes]):
    for piece in pieces:
        yield piece


def object_store_on(port: int) -> ObjectStore:
    store = ObjectStore("s3://bucket/buffers", endpoint=f"http://127.0.0.1:{port}", layout="prefix",
                        hasher=Hasher(), writable=True, max_body_size=1 << 30, wait_timeout=1.0,
                        lock_timeout=60.0)
    if store.lean is not None:
        store.lean.close()
    store.lean = s3lean.LeanClient(Signer(f"http://127.0.0.1:{port}", "us-east-1", "key", "secret"), "bucket")
    return store


def test_an_interim_answer_is_passed_over_for_the_final_one():
    """1xx answers (100 Continue unasked for) come before the final answer, in the same
    packet or apart; the final one is the call's, and nothing is left for the next call."""
    async def scenario():
        script = [answer(100) + answer(206, b"ok"), [answer(100), 0.05, answer(403, b"<Code>AccessDenied</Code>")],
                  answer(206, b"next")]
        async with Scripted(script) as server:
            client = server.client()
            first = await client.get_range(KEY, 0, 10)
            with pytest.raises(s3lean.S3Error, match="PUT of .*: HTTP 403 <Code>AccessDenied</Code>"):
                await client.put_if_absent(KEY, b"data", hashlib.sha256(b"data").hexdigest())
            third = await client.get_range(KEY, 0, 10)
            client.close()
            return first, third

    assert run(scenario()) == ((206, b"ok"), (206, b"next"))


def test_an_answer_past_its_call_closes_the_connection():
    """Bytes after a complete answer belong to no call: the connection is dropped, and the
    next call is answered on a new one."""
    stray = b"HTTP/1.1 206 X\r\ncontent-length: 5\r\n\r\n12"
    async def scenario():
        async with Scripted([answer(206, b"one") + stray, answer(206, b"two")]) as server:
            client = server.client()
            first = await client.get_range(KEY, 0, 10)
            await asyncio.sleep(0.05)
            second = await client.get_range(KEY, 0, 10)
            client.close()
            return first, second, server.connections

    assert run(scenario()) == ((206, b"one"), (206, b"two"), 2)


def test_a_chunked_answer_longer_than_asked_is_cut_off():
    async def scenario():
        async with Scripted([answer(200, b"x" * 100, chunked=True), answer(206, b"next")]) as server:
            client = server.client()
            results = [await client.get_range(KEY, 0, 10) for _ in range(2)]
            client.close()
            return results, server.connections

    assert run(scenario()) == ([(200, None), (206, b"next")], 2)


def test_an_answer_that_ends_with_its_connection_is_read_to_the_end():
    """No length, not chunked: the body ends when the store closes the connection."""
    close_delimited = [b"HTTP/1.1 503 Slow Down\r\nconnection: close\r\n\r\n<Code>SlowDown</Code>", "hang up"]

    async def scenario():
        async with Scripted([close_delimited]) as server:
            client = server.client()
            with pytest.raises(s3lean.S3Error, match="HTTP 503 <Code>SlowDown</Code>"):
                await client.get_range(KEY, 0, 10)
            client.close()
            return len(server.requests)

    assert run(scenario()) == s3lean.RETRIES + 1  # a 503, retried: each answer was read whole


def test_a_partial_answer_that_is_not_the_range_asked_for_is_an_error():
    async def scenario():
        async with Scripted([answer(206, b"abc", content_range="bytes 5-7/100"),
                             answer(206, b"x" * 100, content_range="bytes 0-99/100")]) as server:
            client = server.client()
            with pytest.raises(s3lean.S3Error, match=r"bytes=0-9 was 3 bytes \(Content-Range: bytes 5-7/100\)"):
                await client.get_range(KEY, 0, 10)
            with pytest.raises(s3lean.S3Error, match=r"bytes=0-9 was longer than that \(Content-Range: bytes 0-99"):
                await client.get_range(KEY, 0, 10)
            client.close()

    run(scenario())


def test_a_put_answered_404_is_a_failure_not_an_absence():
    async def scenario():
        async with Scripted([answer(404, b"<Code>NoSuchKey</Code>")]) as server:
            client = server.client()
            with pytest.raises(s3lean.S3Error, match="PUT of .*: HTTP 404"):
                await client.put_if_absent(KEY, b"data", hashlib.sha256(b"data").hexdigest())
            client.close()

    run(scenario())


def test_a_successful_answer_cut_short_by_the_connection_is_not_taken():
    """A 200 with neither length nor chunks ends with the connection: cut short, nothing
    would show it, so it is a lost answer (retried), never data; an interim 100 followed by
    a hang-up likewise."""
    cut = [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"x" * 3, "hang up"]

    async def scenario():
        found = []
        for script in ([cut], [[answer(100), "hang up"]]):
            async with Scripted(script) as server:
                client = server.client()
                with pytest.raises(s3lean.S3Error, match="the connection ended"):
                    await client.get_range(KEY, 0, 10)
                client.close()
                found.append(len(server.requests))
        return found

    assert run(scenario()) == [s3lean.RETRIES + 1] * 2


class ClosedUnderUs:
    """A kept connection's transport as uvloop leaves it when the store closed it a moment
    ago: not yet seen closing (its connection_lost not yet run), and every write refused."""

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

    def abort(self) -> None:
        pass


def test_a_kept_connection_closed_under_the_call_sends_it_to_a_new_one():
    """Seen under an outage: a write to such a transport raised RuntimeError, a 500."""
    async def scenario():
        async with Scripted([answer(206, b"a"), answer(206, b"b")]) as server:
            client = server.client()
            await client.get_range(KEY, 0, 10)
            [kept] = client._idle
            kept.transport = ClosedUnderUs()
            result = await client.get_range(KEY, 0, 10)
            client.close()
            return result, server.connections

    assert run(scenario()) == ((206, b"b"), 2)


def test_a_kept_connection_found_dead_sends_the_call_to_a_new_one():
    """The store closed its kept-alive connections (a restart): the first found dead drops
    the others idle beside it, and the call goes at once to a new connection."""
    async def scenario():
        script = [answer(206, b"a"), answer(206, b"b"), answer(206, b"c"), "close", "close", answer(206, b"d")]
        async with Scripted(script) as server:
            client = server.client()
            await asyncio.gather(*(client.get_range(KEY, 0, 10) for _ in range(3)))  # three kept
            kept = len(client._idle)
            result = await client.get_range(KEY, 0, 10)
            idle = len(client._idle)
            client.close()
            return kept, result, idle, server.connections

    # the dead one, then a new one (which the store closes too: backoff), then another new one
    assert run(scenario()) == (3, (206, b"d"), 1, 5)


# ------------------------------------------------------------------ receivers and long answers
class Collecting:
    """A receiver that takes bodies longer than ``least`` and records what it was told."""

    def __init__(self, least: int = 0):
        self.least = least
        self.begun: list[int] = []
        self.arrivals: list[int] = []
        self.buffer: bytearray | None = None

    def begin(self, length: int) -> memoryview | None:
        self.begun.append(length)
        if length <= self.least:
            return None
        self.buffer = bytearray(length)
        return memoryview(self.buffer)

    def arrived(self, end: int) -> None:
        self.arrivals.append(end)


def test_a_receiver_takes_a_body_as_it_arrives_and_again_when_the_call_is_tried_again():
    """The body goes into the receiver's buffer piece by piece; an answer cut short is
    tried again, into a buffer begun anew; a body the receiver declines is collected."""
    body = os.urandom(5000)
    whole = answer(206, body)
    script = [[whole[:-3000], 0.05, "hang up"], [whole[:-2000], 0.05, whole[-2000:]], answer(206, b"short")]

    async def scenario():
        async with Scripted(script) as server:
            client = server.client()
            receiver = Collecting(least=100)
            status, got = await client.get_range(KEY, 0, 10_000, receiver)
            short = await client.get_range(KEY, 0, 10_000, receiver)
            client.close()
            return status, got, short, receiver, len(server.requests)

    status, got, short, receiver, calls = run(scenario())
    assert status == 206 and got is receiver.buffer and got == body
    assert short == (206, b"short") and calls == 3
    assert receiver.begun == [5000, 5000, 5]
    second = receiver.arrivals[receiver.arrivals.index(2000) + 1:]  # after the cut attempt's 2000 bytes
    assert second[-1] == 5000 and 0 < second[0] < 5000 and second == sorted(second)


def test_a_body_a_receiver_took_is_read_straight_into_its_buffer_and_the_connection_goes_on(monkeypatch):
    """Past the read that held its headers, a body the receiver took does not go through
    the parser: it is read into the receiver's buffer, whole and in order.  At its end the
    answer is complete and the kept-alive connection answers the next calls (with or
    without a receiver).  Cut or stalled in the middle, the call is tried again."""
    seen_by_parser = []
    on_body = s3lean._Connection.on_body
    monkeypatch.setattr(s3lean._Connection, "on_body", lambda self, body: seen_by_parser.append(len(body))
                        or on_body(self, body))
    bodies = [os.urandom(300_000), os.urandom(200_000), os.urandom(100_000), os.urandom(100_000)]

    def paced(body: bytes, end=()) -> list:
        whole = answer(206, body)
        head = len(whole) - len(body) + 1000
        return [whole[:head], 0.05, whole[head:head + 50_000], 0.05, *(end or [whole[head + 50_000:]])]

    script = [paced(bodies[0]), paced(bodies[1]), answer(206, b"small"),
              paced(bodies[2], ["hang up"]), paced(bodies[2]),
              paced(bodies[3], [0.6, "hang up"]), paced(bodies[3])]

    async def scenario():
        async with Scripted(script) as server:
            client = server.client(answer_timeout=0.3)
            receivers = [Collecting(), Collecting()]
            got = [await client.get_range(KEY, 0, 1 << 20, receivers[0]),
                   await client.get_range(KEY, 0, 1 << 20, receivers[1]),
                   await client.get_range(KEY, 0, 1 << 20)]
            kept_alive = server.connections
            got += [await client.get_range(KEY, 0, 1 << 20, Collecting()),
                    await client.get_range(KEY, 0, 1 << 20, Collecting())]
            client.close()
            return got, receivers, kept_alive, server.connections, len(server.requests)

    got, receivers, kept_alive, connections, requests = run(scenario())
    assert [bytes(body) for _, body in got] == [bodies[0], bodies[1], b"small", bodies[2], bodies[3]]
    assert got[0][1] is receivers[0].buffer and got[1][1] is receivers[1].buffer
    assert receivers[0].arrivals[-1] == len(bodies[0]) and receivers[0].arrivals == sorted(receivers[0].arrivals)
    assert kept_alive == 1 and connections == 3 and requests == 7
    assert sum(seen_by_parser) < 10_000  # each taken body's first 1000 bytes, and b"small"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("size", [100_000, 1 << 20])
def test_bytes_after_a_taken_body_end_the_connection_not_the_next_answer(loop, size):
    """A store (or proxy) that sends more than the Content-Length of a body the receiver
    took: what follows is not taken as the next call's answer (on either event loop,
    whether the read ended at the body's end or not); the connection is dropped and the
    next call answered on a new one."""
    import uvloop

    body = os.urandom(size)
    script = [answer(206, body) + answer(206, b"STALE"), answer(206, b"fresh")]

    async def scenario():
        async with Scripted(script) as server:
            client = server.client()
            receiver = Collecting()
            first = await client.get_range(KEY, 0, 1 << 21, receiver)
            second = await client.get_range(KEY, 0, 1 << 21)
            client.close()
            return first, second, server.connections

    first, second, connections = (asyncio.run if loop == "asyncio" else uvloop.run)(
        asyncio.wait_for(scenario(), BOUND))
    assert (first[0], bytes(first[1])) == (206, body)
    assert second == (206, b"fresh") and connections == 2


class Failing(Collecting):
    """A receiver that fails in ``begin`` (no memory for the body) or in ``arrived``."""

    def __init__(self, where: str):
        super().__init__()
        self.where = where

    def begin(self, length: int) -> memoryview | None:
        view = super().begin(length)
        if self.where == "begin":
            raise MemoryError(f"no {length} bytes")
        return view

    def arrived(self, end: int) -> None:
        super().arrived(end)
        if self.where == "arrived":
            raise RuntimeError("cannot schedule new futures after shutdown")


def test_a_receiver_buffer_of_another_length_than_the_body_is_refused():
    """A buffer longer than the body would never fill (the call would wait for bytes that
    are not coming): the call ends at once with the receiver's error, and is not retried."""
    class Longer(Collecting):
        def begin(self, length: int) -> memoryview | None:
            return memoryview(bytearray(length + 1))

    async def scenario():
        async with Scripted([answer(206, os.urandom(5000))]) as server:
            client = server.client()
            with pytest.raises(ValueError, match="a receiver's buffer of 5001 bytes for 5000"):
                await client.get_range(KEY, 0, 10_000, Longer())
            client.close()
            return len(server.requests)

    assert run(scenario()) == 1


@pytest.mark.parametrize("where", ["begin", "arrived"])
def test_a_receiver_that_fails_ends_the_call_with_its_own_error_not_tried_again(where):
    """The receiver's failure is the caller's, not the store's: the call raises it as it
    is (not 'an unreadable answer'), makes no second request for it, and the next call,
    on a new connection, is answered."""
    body = os.urandom(5000)

    async def scenario():
        async with Scripted([[answer(206, body)[:-2000], 0.05, answer(206, body)[-2000:]],
                             answer(206, b"next")]) as server:
            client = server.client()
            with pytest.raises(MemoryError if where == "begin" else RuntimeError) as failed:
                await client.get_range(KEY, 0, 10_000, Failing(where))
            following = await client.get_range(KEY, 0, 10_000)
            client.close()
            return failed.value, following, len(server.requests), server.connections

    failed, following, requests, connections = run(scenario())
    assert not isinstance(failed, s3lean.S3Error)
    assert following == (206, b"next") and requests == 2 and connections == 2


def test_a_long_answer_that_keeps_coming_is_read_past_the_idle_bound_and_a_trickle_is_not(monkeypatch):
    """A call gives up when no byte came for ``answer_timeout`` or when the whole answer
    took longer than ``answer_timeout`` plus its Content-Length at SLOWEST_RATE (here
    5,000 bytes/s): a long answer in pieces, each sooner than the first bound, is read
    whole; a short one that trickles in past the second is given up, however long the
    range asked for (the call's limit)."""
    monkeypatch.setattr(s3lean, "SLOWEST_RATE", 5000)  # 6,000 bytes: 1.2 s more for the whole answer
    long_body = os.urandom(6000)
    full = answer(206, long_body)
    pieces = [full[i:i + 1100] for i in range(0, len(full), 1100)]
    paced = [part for piece in pieces for part in (piece, 0.1)]
    short = answer(206, b"12345678")
    trickle = [part for i in range(len(short)) for part in (short[i:i + 1], 0.1)]

    async def scenario():
        async with Scripted([paced, trickle]) as server:
            client = server.client(answer_timeout=0.5, retry_budget=0.1)
            read = await client.get_range(KEY, 0, 1 << 30)
            with pytest.raises(s3lean.S3Error, match=r"no whole answer in 0.502 s"):
                await client.get_range(KEY, 0, 1 << 30)  # 8 bytes: not the limit's 215,000 s
            client.close()
            return read

    assert len(pieces) >= 6  # the long answer takes longer than answer_timeout
    assert run(scenario()) == (206, long_body)


def test_an_idle_connection_holds_no_answer():
    """The body of an answer (up to 64 MiB in a receiver's buffer) is the caller's alone
    once the call returns: a kept-alive connection, which may stay idle long, keeps none."""
    async def scenario():
        async with Scripted([answer(206, os.urandom(5000)), answer(206, b"small")]) as server:
            client = server.client()
            await client.get_range(KEY, 0, 10_000, Collecting())
            await client.get_range(KEY, 0, 10_000)
            kept = [(c.into, c.receiver, c.body) for c in client._idle]
            client.close()
            return kept

    assert run(scenario()) == [(None, None, [])]


def test_a_read_abandoned_mid_hash_reports_no_error_of_its_hashes(caplog):
    """A read into the object store's receiver (a compressed object: hashed as decoded)
    whose client went away: the hashing thread's errors for the bytes that came are not
    logged as 'Future exception was never retrieved'."""
    import gc
    import logging
    from functools import partial

    from hashserver import objectstore
    from hashserver.bufferfile import DecodingHash
    from hashserver.compression import ZSTD

    junk = os.urandom(3 << 20)  # not zstd: its hash fails
    whole = answer(206, junk)
    part = whole[:len(whole) - len(junk) + (3 << 19)]

    async def scenario():
        async with Scripted([[part, 30.0, "hang up"]]) as server:
            client = server.client()
            receiver = objectstore._HashedAsRead(partial(DecodingHash, Hasher(), ZSTD))
            task = asyncio.ensure_future(client.get_range(KEY, 0, 64 << 20, receiver, cut_longer=True))
            await asyncio.sleep(0.5)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await asyncio.sleep(0.2)  # the thread is done with the bytes that came
            client.close()
            hashes = list(receiver._hashes)
            del receiver
            gc.collect()
            return hashes

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        hashes = run(scenario())
        failed = sum(h.done() and not h.cancelled() and h._exception is not None for h in hashes)  # unretrieved
        del hashes
        gc.collect()
    assert failed  # the scenario did fail a hash
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def test_a_range_of_a_longer_object_is_cut_off_at_its_headers_when_asked():
    """``cut_longer``: a range whose Content-Range says the object goes on past the range,
    or does not say the object's size, is not read (body None, the connection dropped);
    a range that is the whole object is read.  Without it, the range is the answer."""
    script = [answer(206, b"0123456789", content_range="bytes 0-9/100"),
              answer(206, b"0123456789", content_range="bytes 0-9/*"),
              answer(206, b"01234"),
              answer(206, b"0123456789", content_range="bytes 0-9/100")]

    async def scenario():
        async with Scripted(script) as server:
            client = server.client()
            results = [await client.get_range(KEY, 0, 10, cut_longer=True) for _ in range(3)]
            results.append(await client.get_range(KEY, 0, 10))
            client.close()
            return results, server.connections

    results, connections = run(scenario())
    assert results == [(206, None), (206, None), (206, b"01234"), (206, b"0123456789")]
    assert connections == 3  # a new connection after each cut


def test_a_range_shorter_than_its_object_is_an_error_when_all_of_it_was_asked_for():
    """``cut_longer``: the object fits the range, so its answer must be all of it; a store
    that sends less (its Content-Range says so) is an error, not a short buffer."""
    async def scenario():
        async with Scripted([answer(206, b"0123456789", content_range="bytes 0-9/50")]) as server:
            client = server.client()
            try:
                with pytest.raises(s3lean.S3Error, match=r"was 10 bytes \(Content-Range: bytes 0-9/50\)"):
                    await client.get_range(KEY, 0, 100, cut_longer=True)
            finally:
                client.close()

    run(scenario())
