"""The container files (edge/Dockerfile.edge, build/docker/Dockerfile, build/docker/docker-compose.yml)
checked without a Docker engine: the compose stack's wiring (services, pinned images, ports,
healthchecks, start order), the config files it mounts and the images bake in validated by the real
validator, and every file a Dockerfile copies present and let through by its .dockerignore.
Nothing here builds or runs an image (docs/containers.md says what was and was not run)."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from ruamel.yaml import YAML

from ando import __version__
from ando.config.snapshot import Snapshot
from ando.config.source import snapshot_from_text

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "build" / "docker" / "docker-compose.yml"
DOCKERFILE = ROOT / "build" / "docker" / "Dockerfile"
EDGE_DOCKERFILE = ROOT / "edge" / "Dockerfile.edge"
EDGE_CONFIG = ROOT / "edge" / "edge-config.yaml"
# What `make binary-static` / `make binary-arm64` write (edge/ando.spec names them).
BUILT_BINARIES = (
    f"dist/ando-{__version__}-linux-x86_64-static",
    f"dist/ando-{__version__}-linux-aarch64",
)


# -- helpers ----------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return YAML(typ="safe", pure=True).load(COMPOSE.read_text())


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as the container sees it, a stand-in for each `${VAR...}` the
    user must supply (compose interpolates those from the shell)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {
        k: re.sub(r"\$\{[^}]*\}", "x" * 16, str(v))  # 16 characters: any minLength is met
        for k, v in env.items()
    }


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path, for the bind mounts (host paths relative to the compose
    file's directory, as compose resolves them)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def host_file(service: dict[str, Any], container_path: str) -> Path:
    """The host file a container path comes from, through the service's bind mounts."""
    for target, source in mounts(service).items():
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is not mounted from the host")


def published(service: dict[str, Any]) -> dict[int, str]:
    """Container port -> the host address it is published on ("" for every address)."""
    out = {}
    for spec in service.get("ports", []):
        parts = str(spec).split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        out[int(parts[-1])] = host_ip
    return out


def flag(command: list[str], name: str) -> str:
    """The value of `--name=value` in a command list."""
    for arg in command:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"--{name} is not in {command}")


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def url_in(words: list[str]) -> str:
    urls = [m for w in words for m in re.findall(r"https?://[^\s'\"]+", w)]
    assert len(urls) == 1, words
    return urls[0]


def validated(path: Path, environ: dict[str, str]) -> Snapshot:
    """The file through the real validator and compiler (built-in plugin catalog): raises
    ConfigError with every FILE:LINE:COL problem if the file is not valid."""
    return snapshot_from_text(path.read_text(), str(path), environ=environ)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{dockerfile}: a continuation line runs off the end"
    return out


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            out[name] = value
    return out


def copied_sources(dockerfile: Path) -> list[str]:
    """The build-context paths the Dockerfile copies (COPY --from=stage excluded), with ARG
    defaults filled in."""
    steps = instructions(dockerfile)
    args = arg_defaults(steps)
    out = []
    for word, rest in steps:
        if word != "COPY":
            continue
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(rest)):
            continue
        for src in parts[:-1]:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], src))
    return out


def exec_form(steps: list[tuple[str, str]], word: str) -> list[str]:
    (rest,) = [r for w, r in steps if w == word]
    if word == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + 4 :]
    value = json.loads(rest)
    assert isinstance(value, list), f"{word} must use the exec form (no shell in the image)"
    return value


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent
    directories decides; `!` re-includes."""
    prefixes = [str(Path(*Path(path).parts[: i + 1])) for i in range(len(Path(path).parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        anywhere = pat.startswith("**/")  # at any depth: match the last component
        pat = pat[3:] if anywhere else pat
        for p in prefixes:
            if fnmatch.fnmatchcase(Path(p).name if anywhere else p, pat):
                verdict = not negate
                break
    return verdict


def dockerignore(dockerfile: Path) -> list[str]:
    """BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile."""
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore} is missing: the whole checkout would be the build context"
    return [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


# -- the compose stack ------------------------------------------------------------------------


def test_compose_has_the_four_services_with_pinned_images():
    services = load_compose()["services"]
    assert set(services) == {"ando", "etcd", "victoriametrics", "victorialogs"}
    for name in ("etcd", "victoriametrics", "victorialogs"):
        image = services[name]["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.match(r"v\d+\.\d+\.\d+", tag), image
    build = services["ando"]["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_every_service_has_an_exec_form_healthcheck_and_ando_waits_for_them():
    services = load_compose()["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] == "CMD", (name, test)
    depends = services["ando"]["depends_on"]
    assert depends == {
        name: {"condition": "service_healthy"}
        for name in ("etcd", "victoriametrics", "victorialogs")
    }


def test_compose_victoria_services_listen_where_they_are_probed():
    services = load_compose()["services"]
    for name, port in (("victoriametrics", 8428), ("victorialogs", 9428)):
        service = services[name]
        assert port_of(flag(service["command"], "httpListenAddr")) == port
        health = urlsplit(url_in(service["healthcheck"]["test"]))
        assert (health.hostname, health.port, health.path) == ("127.0.0.1", port, "/health")
        assert published(service) == {port: "127.0.0.1"}


def test_compose_ando_config_validates_and_is_wired_to_the_other_services():
    services = load_compose()["services"]
    ando = services["ando"]
    command = ando["command"]
    config_path = command[command.index("-c") + 1]
    config = host_file(ando, config_path)
    assert config.is_file(), config
    snap = validated(config, compose_env(ando))
    node = snap.node

    # etcd: the service's client URL, on the port etcd listens on.
    etcd_cmd = services["etcd"]["command"]
    etcd_port = urlsplit(flag(etcd_cmd, "listen-client-urls")).port
    assert node.etcd is not None
    assert [urlsplit(h)[:2] for h in node.etcd["hosts"]] == [("http", f"etcd:{etcd_port}")]
    assert flag(etcd_cmd, "advertise-client-urls") == f"http://etcd:{etcd_port}"

    # Metrics pushed to VictoriaMetrics, logs to VictoriaLogs, by service name and port.
    obs = node.observability
    vm = obs["victoria_metrics"]
    vm_port = port_of(flag(services["victoriametrics"]["command"], "httpListenAddr"))
    assert vm["url"] == f"http://victoriametrics:{vm_port}"
    assert vm["interval"] > 0 and dict(vm["extra_labels"])
    vl_port = port_of(flag(services["victorialogs"]["command"], "httpListenAddr"))
    assert obs["victoria_logs"]["url"] == f"http://victorialogs:{vl_port}"

    # What is published is what the config listens on; only the data plane on every address.
    ports = published(ando)
    assert ports[node.listen[0].port] == ""
    for listen in (
        node.admin["listen"],
        obs["status"]["listen"],
        obs["prometheus"]["listen"],
    ):
        assert ports[port_of(listen)] == "127.0.0.1", listen

    # The healthcheck asks the status server the config sets up.
    health = urlsplit(url_in(ando["healthcheck"]["test"]))
    assert (health.port, health.path) == (port_of(obs["status"]["listen"]), "/status/ready")


def test_compose_admin_api_has_no_default_key():
    ando = load_compose()["services"]["ando"]
    assert ":?" in ando["environment"]["ANDO_ADMIN_KEY"]  # compose refuses to start without it
    config = host_file(ando, "/etc/ando/ando.yaml")
    with pytest.raises(Exception, match="ANDO_ADMIN_KEY not set"):
        validated(config, {})


# -- the Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, EDGE_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_copies_files_that_exist_and_reach_the_context(dockerfile: Path):
    patterns = dockerignore(dockerfile)
    sources = copied_sources(dockerfile)
    assert sources
    for src in sources:
        if src.startswith("dist/"):
            # Built by make, not in a checkout: the glob must name what the build writes.
            assert any(fnmatch.fnmatchcase(b, src) for b in BUILT_BINARIES), src
            matches = [b for b in BUILT_BINARIES if fnmatch.fnmatchcase(b, src)]
        else:
            assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
            matches = [src]
        for path in matches:
            assert not ignored(path, patterns), f"{path} is left out of the build context"
    assert ignored(".venv/bin/python", patterns)
    assert ignored("build/tmp/arm64/root/usr/bin/python3", patterns)


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, EDGE_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_a_readiness_healthcheck(dockerfile: Path):
    steps = instructions(dockerfile)
    (user,) = [r for w, r in steps if w == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    health = exec_form(steps, "HEALTHCHECK")
    entry = exec_form(steps, "ENTRYPOINT")
    assert health[0] == entry[0]  # the image's own program, no curl/wget/shell
    probe = urlsplit(url_in(health))
    assert (probe.hostname, probe.port, probe.path) == ("127.0.0.1", 7085, "/status/ready")
    exposed = {int(p) for w, r in steps if w == "EXPOSE" for p in r.split()}
    assert {9080, 7085} <= exposed


def test_edge_image_carries_the_binary_and_the_edge_config():
    steps = instructions(EDGE_DOCKERFILE)
    copies = {shlex.split(r)[-1]: shlex.split(r)[0] for w, r in steps if w == "COPY"}
    entry = exec_form(steps, "ENTRYPOINT")
    assert copies[entry[0]].startswith("${BINARY}")
    assert copies["/etc/ando/ando.yaml"] == "edge/edge-config.yaml"
    assert exec_form(steps, "CMD") == ["run", "-c", "/etc/ando/ando.yaml"]
    assert arg_defaults(steps)["BASE"].startswith("gcr.io/distroless/static")
    # The health probe is `ando health [--timeout S] URL` (exit 0 on 200, 1 otherwise).
    health = exec_form(steps, "HEALTHCHECK")
    assert health[1] == "health"


# -- the edge config --------------------------------------------------------------------------


def test_edge_config_is_valid_small_file_mode_and_without_admin():
    snap = validated(EDGE_CONFIG, environ={})
    node = snap.node
    assert node.workers == 1
    assert node.etcd is None  # the file is the only source of truth
    assert node.admin.get("enabled", False) is False
    status = node.observability["status"]
    assert status.get("enabled", True) and port_of(status["listen"]) == 7085
    assert [listener.port for listener in node.listen] == [9080]
    assert snap.routes  # it serves something out of the box
