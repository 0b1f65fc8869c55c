"""compose.yaml, read by a real parser of the compose format (podman-compose).

``podman-compose --dry-run config`` loads the file, fills in the ``${...}``
variables from the environment (or an env file) exactly as for ``up``, and
prints the resolved file; a required variable that is missing stops it.  It
needs no podman for that.  The Dockerfile checks at the end keep the two files
in agreement (the container port, the mount point, the defaults).
"""

from __future__ import annotations

import os
import re
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

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
REQUIRED = ("HASHSERVER_DIRECTORY", "HASHSERVER_PORT", "HASHSERVER_HOST")


def compose_config(tmp_path: Path, variables: dict[str, str], env_file: str = "") -> subprocess.CompletedProcess:
    """Run ``podman-compose config`` on the repository's compose.yaml.

    Only ``variables`` (and ``env_file``) set HASHSERVER_*: the caller's own
    environment and any ``.env`` beside compose.yaml are kept out.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HASHSERVER_", "COMPOSE_", "PODMAN_"))}
    env.update(variables)
    env_path = tmp_path / "test.env"
    env_path.write_text(env_file)
    return subprocess.run(
        [sys.executable, "-m", "podman_compose", "--dry-run", "--env-file", str(env_path),
         "-f", str(COMPOSE), "config"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )


def resolved(tmp_path: Path, variables: dict[str, str], env_file: str = "") -> dict:
    result = compose_config(tmp_path, variables, env_file)
    assert result.returncode == 0, result.stderr[-2000:]
    config = yaml.safe_load(result.stdout)
    assert list(config["services"]) == ["hashserver"]
    return config["services"]["hashserver"]


@pytest.fixture
def buffers(tmp_path: Path) -> Path:
    directory = tmp_path / "buffers"
    directory.mkdir()
    return directory


def minimal(buffers: Path) -> dict[str, str]:
    return {"HASHSERVER_DIRECTORY": str(buffers), "HASHSERVER_PORT": "18080",
            "HASHSERVER_HOST": "127.0.0.1"}


def test_structure_and_defaults(tmp_path, buffers):
    service = resolved(tmp_path, minimal(buffers))
    assert Path(service["build"]["context"]).resolve() == REPO
    assert service["image"]
    # The seed's defaults: user and group 0, read-only, prefix layout.
    assert str(service["user"]) == "0:0"
    assert service["ports"] == ["127.0.0.1:18080:8000"]
    assert service["volumes"] == [f"{buffers}:/buffers"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    assert environment["HASHSERVER_WRITABLE"] == "0"
    assert environment["HASHSERVER_LAYOUT"] == "prefix"
    assert int(environment["HASHSERVER_WORKERS"]) >= 1
    # Passed on when set; empty (the server's default) when not.
    for name in ("LOCK_TIMEOUT", "VERIFY", "MAX_BODY_SIZE", "HASH_ALGORITHM"):
        assert environment["HASHSERVER_" + name] in ("", "None"), name
    # Inside the container these come from the image; here they mean the host side.
    for name in REQUIRED:
        assert name not in environment
    assert service["restart"] in ("always", "unless-stopped")
    assert service["init"] is True
    assert service["shm_size"]
    healthcheck = service["healthcheck"]
    assert healthcheck["test"][0] == "CMD"
    assert "python3" in healthcheck["test"] and "http://127.0.0.1:8000/healthcheck" in " ".join(healthcheck["test"])


def test_user_group_writable_layout_workers(tmp_path, buffers):
    variables = dict(minimal(buffers), HASHSERVER_USER_ID="1000", HASHSERVER_GROUP_ID="1001",
                     HASHSERVER_WRITABLE="1", HASHSERVER_LAYOUT="flat", HASHSERVER_WORKERS="8",
                     HASHSERVER_HOST="0.0.0.0", HASHSERVER_PORT="5813",
                     HASHSERVER_VERIFY="always", HASHSERVER_LOCK_TIMEOUT="30")
    service = resolved(tmp_path, variables)
    assert str(service["user"]) == "1000:1001"
    assert service["ports"] == ["0.0.0.0:5813:8000"]
    environment = {k: str(v) for k, v in service["environment"].items()}
    assert environment["HASHSERVER_WRITABLE"] == "1"
    assert environment["HASHSERVER_LAYOUT"] == "flat"
    assert environment["HASHSERVER_WORKERS"] == "8"
    assert environment["HASHSERVER_VERIFY"] == "always"
    assert environment["HASHSERVER_LOCK_TIMEOUT"] == "30"


def test_only_user_id_given_keeps_group_0(tmp_path, buffers):
    service = resolved(tmp_path, dict(minimal(buffers), HASHSERVER_USER_ID="1000"))
    assert str(service["user"]) == "1000:0"


def test_variables_from_an_env_file(tmp_path, buffers):
    env_file = "".join(f"{k}={v}\n" for k, v in minimal(buffers).items()) + "HASHSERVER_WRITABLE=true\n"
    service = resolved(tmp_path, {}, env_file)
    assert service["ports"] == ["127.0.0.1:18080:8000"]
    assert service["volumes"] == [f"{buffers}:/buffers"]
    assert str(service["environment"]["HASHSERVER_WRITABLE"]) == "true"


@pytest.mark.parametrize("name", REQUIRED)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_required_variables_are_enforced(tmp_path, buffers, name, how):
    variables = minimal(buffers)
    if how == "unset":
        del variables[name]
    else:
        variables[name] = ""
    result = compose_config(tmp_path, variables)
    assert result.returncode != 0, result.stdout
    assert f"required variable {name} is missing" in result.stderr, result.stderr[-2000:]


def dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip().upper().startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_dockerfile_agrees_with_compose(tmp_path, buffers):
    """The container side that compose.yaml relies on is what the image sets."""
    env = dockerfile_env()
    assert env["HASHSERVER_DIRECTORY"] == "/buffers"
    assert env["HASHSERVER_PORT"] == "8000"
    assert env["HASHSERVER_HOST"] == "0.0.0.0"
    assert int(env["HASHSERVER_WORKERS"]) >= 1
    text = DOCKERFILE.read_text()
    assert re.search(r"^EXPOSE\s+8000\b", text, re.MULTILINE)
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms and all(re.fullmatch(r"python:3\.\d+-slim", image) for image in froms), froms
    healthcheck = re.search(r"^HEALTHCHECK\b.*?CMD\s+(\[.*\])$", text, re.MULTILINE | re.DOTALL)
    assert healthcheck and "/healthcheck" in healthcheck.group(1) and "urllib" in healthcheck.group(1)
    assert "curl" not in healthcheck.group(1) and "wget" not in healthcheck.group(1)
    assert not re.search(r"^USER\s+(root|0)\b", text, re.MULTILINE)
    cmd = re.search(r"^CMD\s+(\[.*\])$", text, re.MULTILINE).group(1)
    for name in ("HASHSERVER_HOST", "HASHSERVER_PORT", "HASHSERVER_WORKERS"):
        assert name in cmd, f"the CMD must pass {name} to Sanic's bind"
