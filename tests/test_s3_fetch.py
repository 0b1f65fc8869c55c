"""Small misses on a bucket answered by the hot path (:meth:`Storage.fetch`).

A simple ``GET /<checksum>`` of a small plain buffer that the local tier lacks is
answered inside Sanic's protocol once its object is fetched and verified, with no
request object, router or middleware.  The differential tests send the same raw bytes
to two real servers on one bucket (each its own tier), one with the hot path and one
without, and compare every answer byte for byte.  The in-process tests read what the
hot path itself answered, and make the store slow or take it away (a TCP relay)."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from relay import RelayThread
from seaweedfs import SeaweedFS, s3_bucket, seaweedfs  # noqa: F401  (fixtures)
from test_hotpath import CLOSED, Connection, InProcess, Pair, Side, pipelined, request, statuses
from test_s3_server import s3_serve  # noqa: F401  (a fixture)

from conftest import sha3, wait_for

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install 'hashserver-sanic[s3]'")
from hashserver.config import Config  # noqa: E402
from hashserver.objectstore import FETCH_MAX, HEALTH_EVERY  # noqa: E402  (needs obstore)
from hashserver.storage import Fast  # noqa: E402

pytestmark = pytest.mark.timeout(300)

SLOW = 1.0  # seconds the slow store holds each GET (and every call with it: the relay waits)
NEVER = 150.0  # seconds: past Sanic's response timeout, a bound against hangs only


def key(checksum: str, suffix: str = "") -> str:
    return f"{checksum[:2]}/{checksum}{suffix}"


class Objects:
    """Objects put straight into the bucket, each a miss for a server that has not read it."""

    def __init__(self, weed: SeaweedFS, bucket: str):
        self.store = weed.s3_store(bucket)

    def plain(self, data: bytes) -> str:
        checksum = sha3(data)
        obstore.put(self.store, key(checksum), data)
        return checksum

    def corrupt(self, data: bytes) -> str:
        checksum = sha3(data)
        obstore.put(self.store, key(checksum), data[:-1] + bytes([data[-1] ^ 1]))
        return checksum

    def gzipped(self, data: bytes) -> str:
        checksum = sha3(data)
        obstore.put(self.store, key(checksum, ".gz"), gzip.compress(data))
        return checksum


@pytest.fixture
def pair(s3_serve, seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """Two servers on one bucket, with the hot path and without; each its own tier."""
    sides = []
    for name, switch in (("hot", "1"), ("regular", "0")):
        server = s3_serve(s3_bucket, "--cache-dir", str(tmp_path / name), env={"HASHSERVER_HOT_PATH": switch})
        sides.append(Side(server, tmp_path / name))
    return Pair(*sides)


def test_misses_are_answered_as_the_regular_route_answers_them(pair, seaweedfs, s3_bucket):  # noqa: F811
    objects = Objects(seaweedfs, s3_bucket)
    small, empty = objects.plain(os.urandom(1000)), objects.plain(b"")
    at_most, longer = objects.plain(os.urandom(FETCH_MAX)), objects.plain(os.urandom(FETCH_MAX + 1))
    corrupt, packed, absent = objects.corrupt(os.urandom(2000)), objects.gzipped(b"z" * 5000), sha3(b"absent")
    for checksum, status in ((small, 200), (empty, 200), (at_most, 200), (longer, 200), (corrupt, 400),
                             (packed, 200), (absent, 404)):
        replies = pair.both(pipelined(("GET", request("GET", checksum))))
        assert statuses(replies) == [status], checksum
    message = json.loads(pair.both(pipelined(("GET", request("GET", corrupt))))[0].body)["message"]
    assert message == (f"File corruption: file at path s3://{s3_bucket}/{key(corrupt)} "
                       "does not have the correct SHA3-256 checksum.")


def test_pipelined_misses_hits_and_regular_requests_stay_in_order(pair, seaweedfs, s3_bucket):  # noqa: F811
    objects = Objects(seaweedfs, s3_bucket)
    data = [os.urandom(100 + i) for i in range(4)]
    a, b, c, d = (objects.plain(x) for x in data)
    requests = [("GET", request("GET", a)), ("GET", request("GET", a)), ("HEAD", request("HEAD", b)),
                ("GET", request("GET", sha3(b"absent"))), ("GET", request("GET", c.upper())),
                ("GET", request("GET", d, "X-Other: 1")), ("GET", request("GET", b))]
    replies = pair.both(pipelined(*requests))
    assert statuses(replies) == [200, 200, 200, 404, 200, 200, 200]
    assert [reply.body for reply in replies] == [data[0], data[0], b"", replies[3].body, data[2], data[3], data[1]]


# ------------------------------------------------------------------ in process
@pytest.fixture
def relay(seaweedfs):  # noqa: F811
    started = RelayThread(seaweedfs.s3_endpoint).start()
    yield started
    started.close()


@pytest.fixture
def served(seaweedfs, s3_bucket, relay, tmp_path, monkeypatch):  # noqa: F811
    """The app with its hot path on a bucket behind a relay, in this process."""
    for name, value in seaweedfs.s3_env().items():
        monkeypatch.setenv(name, value)
    config = Config(f"s3://{s3_bucket}", s3_endpoint=relay.url, cache_dir=str(tmp_path / "tier"),
                    writable=True).validate()
    server = InProcess(config)
    yield server
    server.stop()


def answered_after(served: InProcess, *requests: tuple[str, bytes]) -> tuple[dict, list]:
    """What the hot path answered of these requests (sent one by one on one connection), and the replies."""
    before = served.answered
    connection = served.connect()
    replies = []
    for method, raw in requests:
        connection.send(raw)
        replies += connection.replies(method)
    connection.close()
    return {k: n - before[k] for k, n in served.answered.items() if n != before[k]}, replies


def test_the_hot_path_fetches_small_plain_objects_only(served, seaweedfs, s3_bucket):  # noqa: F811
    objects = Objects(seaweedfs, s3_bucket)
    small, longer = os.urandom(1000), os.urandom(FETCH_MAX + 1)
    small_cs, longer_cs, packed = objects.plain(small), objects.plain(longer), objects.gzipped(b"y" * 3000)
    answered, replies = answered_after(served, ("GET", request("GET", small_cs)))
    assert answered == {("get", 200): 1} and replies[0].body == small
    for method, checksum in (("HEAD", objects.plain(b"head")), ("GET", longer_cs), ("GET", packed),
                             ("GET", sha3(b"absent"))):
        answered, replies = answered_after(served, (method, request(method, checksum)))
        assert answered == {}, (method, checksum)  # the regular route answered
        assert statuses(replies) == [404 if checksum == sha3(b"absent") else 200]
    tier = served.app.ctx.storage
    wait_for(lambda: served.call(lambda: tier.held_locally(bytes.fromhex(small_cs))), "the fetched buffer in the tier")
    answered, replies = answered_after(served, ("GET", request("GET", small_cs)))
    assert answered == {("get", 200): 1} and replies[0].body == small  # now from the tier, without a fetch


def test_a_corrupt_small_object_is_a_400_from_the_hot_path(served, seaweedfs, s3_bucket):  # noqa: F811
    checksum = Objects(seaweedfs, s3_bucket).corrupt(os.urandom(500))
    answered, replies = answered_after(served, ("GET", request("GET", checksum)))
    assert answered == {("get", 400): 1}
    assert json.loads(replies[0].body) == {"message": (
        f"File corruption: file at path s3://{s3_bucket}/{key(checksum)} does not have the correct SHA3-256 checksum.")}
    assert not served.call(lambda: served.app.ctx.storage.held_locally(bytes.fromhex(checksum)))


def test_a_store_gone_is_a_503_from_the_hot_path_and_it_recovers(served, relay, seaweedfs, s3_bucket):  # noqa: F811
    data = os.urandom(700)
    checksum = Objects(seaweedfs, s3_bucket).plain(data)
    relay.cut()
    answered, replies = answered_after(served, ("GET", request("GET", checksum)))
    assert answered == {("get", 503): 1}
    assert replies[0].status == 503 and json.loads(replies[0].body)["message"].startswith("Storage unavailable")
    relay.start()
    answered, replies = answered_after(served, ("GET", request("GET", checksum)))
    assert answered == {("get", 200): 1} and replies[0].body == data


def slow_gets(relay: RelayThread) -> None:
    """Each GET the store receives from now on waits SLOW seconds (in the relay's thread)."""
    def slow(request_line: bytes) -> bool:
        if request_line.startswith(b"GET "):
            time.sleep(SLOW)
        return False
    relay.relay.cut = slow


def fetch_under_way(served: InProcess, relay: RelayThread, objects: Objects, data: bytes) -> Connection:
    """A connection whose GET of ``data`` (a new object) is being fetched from a slow store."""
    checksum = objects.plain(data)
    slow_gets(relay)
    connection = served.connect()
    connection.send(request("GET", checksum))
    time.sleep(SLOW / 5)
    return connection


def test_requests_sent_while_a_get_is_fetched_wait_for_its_answer(served, relay, seaweedfs, s3_bucket):  # noqa: F811
    objects = Objects(seaweedfs, s3_bucket)
    first, second = os.urandom(300), os.urandom(301)
    first_cs, second_cs = sha3(first), objects.plain(second)
    connection = fetch_under_way(served, relay, objects, first)
    # the regular route would answer the first of these at once (no call to the store)
    connection.send(request("GET", "/abc"), request("GET", second_cs), request("GET", first_cs, "X-A: 1"))
    replies = connection.replies("GET", "GET", "GET", "GET")
    connection.close()
    assert statuses(replies) == [200, 400, 200, 200]
    assert [replies[0].body, replies[2].body, replies[3].body] == [first, second, first]


def test_a_client_gone_while_its_get_is_fetched_leaves_the_worker_serving(
        served, relay, seaweedfs, s3_bucket):  # noqa: F811
    objects = Objects(seaweedfs, s3_bucket)
    after = os.urandom(401)
    after_cs = objects.plain(after)
    fetch_under_way(served, relay, objects, os.urandom(400)).close()
    relay.relay.cut = lambda request_line: False
    answered, replies = answered_after(served, ("GET", request("GET", after_cs)))
    assert answered == {("get", 200): 1} and replies[0].body == after


def test_a_stop_while_a_get_is_fetched_answers_it_then_closes(served, relay, seaweedfs, s3_bucket):  # noqa: F811
    data = os.urandom(600)
    connection = fetch_under_way(served, relay, Objects(seaweedfs, s3_bucket), data)
    protocol = next(iter(served.server.connections))
    assert served.call(protocol.close_if_idle) is False  # as a stopping server asks each connection
    replies = connection.replies("GET", "GET")
    connection.close()
    assert replies[0].body == data and replies[1] == CLOSED


def test_past_a_bound_reading_pauses_until_the_fetched_get_is_answered(served, relay, seaweedfs, s3_bucket):  # noqa: F811
    """Requests that arrive while a GET is fetched are held, up to a bound; then reading
    pauses until the GET is answered, and every request is answered after it."""
    data = os.urandom(200)
    connection = fetch_under_way(served, relay, Objects(seaweedfs, s3_bucket), data)
    count = 4000  # about 100 KB of requests the regular route answers at once: more than is held
    sender = threading.Thread(target=connection.sock.sendall, args=(request("GET", "/abc") * count,))
    sender.start()
    protocol = next(iter(served.server.connections))
    wait_for(lambda: not served.call(protocol.transport.is_reading), "reading paused while the GET is fetched", SLOW)
    replies = connection.replies(*["GET"] * (count + 1))
    assert served.call(protocol.transport.is_reading)
    sender.join(30)
    connection.close()
    assert replies[0].body == data and statuses(replies[1:]) == [400] * count


def test_a_fetch_that_fails_unexpectedly_leaves_the_get_to_the_regular_route(
        served, seaweedfs, s3_bucket, monkeypatch):  # noqa: F811
    data = os.urandom(800)
    checksum = Objects(seaweedfs, s3_bucket).plain(data)

    async def failing(checksum: bytes):
        raise RuntimeError("a fault of the fetch")

    monkeypatch.setattr(served.app.ctx.storage, "fetch", failing)
    answered, replies = answered_after(served, ("GET", request("GET", checksum)))
    assert answered == {} and replies[0].body == data


def test_a_failed_fetch_is_not_tried_again_until_a_put_of_the_buffer(served, seaweedfs, s3_bucket):  # noqa: F811
    data = os.urandom(900)
    checksum, storage = sha3(data), served.app.ctx.storage
    raw = bytes.fromhex(checksum)
    assert served.call(lambda: storage.peek(raw)) is Fast.FETCH
    answered, replies = answered_after(served, ("GET", request("GET", checksum)))
    assert answered == {} and statuses(replies) == [404]  # no object: the regular route answered
    assert served.call(lambda: storage.peek(raw)) is Fast.REGULAR  # now without a fetch first
    answered, replies = answered_after(served, ("PUT", request("PUT", checksum, f"Content-Length: {len(data)}",
                                                                body=data)))
    assert statuses(replies) == [200]
    assert served.call(lambda: storage.back.peek(raw)) is Fast.FETCH


# ------------------------------------------------------------------ real servers behind the relay
def start_on_relay(serve, seaweedfs, bucket: str, relay: RelayThread, hot: bool, *options: str):  # noqa: F811
    return serve(f"s3://{bucket}", "--s3-endpoint", relay.url, *options,
                 env={**seaweedfs.s3_env(), "HASHSERVER_HOT_PATH": "1" if hot else "0"})


def test_a_stop_signal_while_a_get_is_fetched_answers_it_then_closes(serve, seaweedfs, s3_bucket, relay,  # noqa: F811
                                                                     tmp_path):
    """A worker's drain (SIGTERM) waits for a GET being fetched, as for one Sanic handles."""
    data = os.urandom(600)
    checksum = Objects(seaweedfs, s3_bucket).plain(data)
    server = start_on_relay(serve, seaweedfs, s3_bucket, relay, True, "--cache-dir", str(tmp_path / "tier"))
    slow_gets(relay)
    connection = Connection(server.port)
    connection.send(request("GET", checksum), request("GET", checksum))
    time.sleep(SLOW / 3)
    server.proc.send_signal(signal.SIGTERM)
    replies = connection.replies("GET", "GET")
    connection.close()
    assert replies[0] != CLOSED and replies[0].body == data
    assert b"\r\nconnection: close\r\n" in replies[0].head and replies[1] == CLOSED


def test_held_requests_follow_a_fetch_answered_or_handed_over(serve, seaweedfs, s3_bucket, relay,  # noqa: F811
                                                               tmp_path):
    """On a real server (its protocol with the header deadline and the body window): a
    fetch that hands its GET to the regular route (a compressed object) hands over the
    requests held behind it too, in order; one answered leaves the start of a request
    held behind it to be completed."""
    objects = Objects(seaweedfs, s3_bucket)
    small, other = os.urandom(300), os.urandom(333)
    small_cs, other_cs, packed = objects.plain(small), objects.plain(other), objects.gzipped(b"q" * 4000)
    server = start_on_relay(serve, seaweedfs, s3_bucket, relay, True, "--cache-dir", str(tmp_path / "tier"))
    slow_gets(relay)
    connection = Connection(server.port)
    connection.send(request("GET", packed))
    time.sleep(SLOW / 3)
    connection.send(request("GET", small_cs) + request("GET", "/abc"))
    replies = connection.replies("GET", "GET", "GET")
    assert statuses(replies) == [200, 200, 400]
    assert replies[0].body == b"q" * 4000 and replies[1].body == small
    whole = request("GET", small_cs)
    connection.send(request("GET", other_cs))
    time.sleep(SLOW / 3)
    connection.send(whole[:20])
    time.sleep(SLOW)
    connection.send(whole[20:])
    replies = connection.replies("GET", "GET")
    connection.close()
    assert statuses(replies) == [200, 200] and [replies[0].body, replies[1].body] == [other, small]


def test_a_buffer_the_fetch_cannot_answer_costs_one_get_more_once(serve, seaweedfs, s3_bucket, relay):  # noqa: F811
    """On a bare bucket every GET is a miss: a buffer that is not a small plain object
    (longer, compressed, absent) costs the hot path's server one GET more than the
    regular route's, the first time only (GETs of its keys: the bucket's health check
    comes once a second, whichever server)."""
    objects = Objects(seaweedfs, s3_bucket)
    cases = {"longer": objects.plain(os.urandom(FETCH_MAX + 1)), "compressed": objects.gzipped(b"p" * 5000),
             "absent": sha3(b"absent here")}
    servers = {hot: start_on_relay(serve, seaweedfs, s3_bucket, relay, hot, "--cache-size", "0")
               for hot in (True, False)}
    lines: list[bytes] = []
    relay.relay.cut = lambda request_line: lines.append(request_line) or False
    for name, checksum in cases.items():
        gets = {}
        for hot, server in servers.items():
            del lines[:]
            for _ in range(3):
                connection = Connection(server.port)
                connection.send(request("GET", checksum))
                assert statuses(connection.replies("GET")) == [404 if name == "absent" else 200]
                connection.close()
            gets[hot] = sum(line.startswith(b"GET ") and checksum.encode() in line for line in lines)
        assert gets[True] == gets[False] + 1, (name, gets)


def test_a_store_gone_is_the_same_503_from_either_path(serve, seaweedfs, s3_bucket, relay, tmp_path):  # noqa: F811
    checksum = Objects(seaweedfs, s3_bucket).plain(os.urandom(500))
    pair = Pair(*(Side(start_on_relay(serve, seaweedfs, s3_bucket, relay, hot, "--cache-dir", str(tmp_path / name)),
                       tmp_path / name) for name, hot in (("hot", True), ("regular", False))))
    relay.cut()
    replies = pair.both(pipelined(("GET", request("GET", checksum))))
    assert statuses(replies) == [503]
    assert json.loads(replies[0].body)["message"].startswith(f"Storage unavailable: object store get of s3://{s3_bucket}/")


def test_a_store_that_never_answers_is_a_503_of_its_own_before_sanics_response_timeout(
        serve, seaweedfs, s3_bucket, relay):  # noqa: F811
    """A store that takes connections and requests and never answers (a black hole, not a
    refusal): each kind of call the server makes (the lean client's GET of a small miss and
    conditional PUT; obstore's HEADs and listing for /has; the health check's look) ends in
    the server's own 503 with its "Storage unavailable" message, well before Sanic's response
    timeout would answer (RESPONSE_TIMEOUT, at least 60 s) and never a hang; and the server
    answers again once the store does."""
    objects = Objects(seaweedfs, s3_bucket)
    data, new = os.urandom(700), os.urandom(800)
    small = objects.plain(data)
    server = start_on_relay(serve, seaweedfs, s3_bucket, relay, True, "--cache-size", "0", "--writable")
    relay.silence()
    time.sleep(HEALTH_EVERY + 0.5)  # the health check made for the server's start is no longer taken
    asks = [("GET", "/" + small, None), ("HEAD", "/" + small, None), ("PUT", "/" + sha3(new), new),
            ("POST", "/has", json.dumps([sha3(b"absent"), small]).encode()), ("GET", "/healthcheck", None)]

    def answer(ask: tuple[str, str, bytes | None]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=NEVER)
        try:
            connection.request(*ask)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    with ThreadPoolExecutor(len(asks)) as pool:
        answers = list(pool.map(answer, asks))
    for (method, path, _), (status, body) in zip(asks, answers, strict=True):
        assert status == 503, (method, path, status, body)
        if method != "HEAD":
            assert json.loads(body)["message"].startswith("Storage unavailable"), (method, path, body)
    relay.silence(False)
    assert answer(("GET", "/" + small, None)) == (200, data)
    assert answer(("PUT", "/" + sha3(new), new)) == (200, b"OK")
    # a check the silent store held up is given up by its own bounds, then the next one succeeds
    wait_for(lambda: answer(("GET", "/healthcheck", None))[0] == 200, "/healthcheck 200 again")
