"""The container stack (infra/) is consistent with itself and with the code.

No Docker engine is needed: these tests read docker-compose.yml and the Dockerfiles
and check what `docker compose up` / `docker build` would trip over.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
DOCKERFILE = INFRA / "Dockerfile"
LAMBDA_DOCKERFILE = INFRA / "Dockerfile.lambda"

# Services whose containers run Nimbus code and so read nimbus.config.Settings.
NIMBUS_IMAGE_SERVICES = {"nimbus", "spark-worker", "ray-head", "ray-worker", "automl-worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict[str, dict]:
    return compose["services"]


def _depends_on(service: dict) -> dict[str, dict]:
    """depends_on in either syntax, as {name: options}."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return dict(deps)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _published_ports(service: dict) -> list[tuple[str, str, str]]:
    """(host_ip, host_port, spec) for each published port; '' where the spec gives none."""
    found = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                found.append((str(port.get("host_ip", "")), str(port["published"]), str(port)))
            continue
        spec = str(port).split("/", 1)[0]
        host_ip = ""
        if spec.startswith("["):  # [::1]:3000:3000
            host_ip, _, spec = spec[1:].partition("]:")
        parts = spec.split(":")
        if len(parts) == 3:  # ip:host:container
            host_ip, parts = parts[0], parts[1:]
        # "3000" publishes the container port on a random host port.
        found.append((host_ip, parts[0] if len(parts) == 2 else "", str(port)))
    return found


def _default_of(value: str) -> str:
    """The default of a '${VAR:-default}' interpolation, or the value itself."""
    match = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", value)
    return match.group(1) if match else value


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    result = []
    for line in lines:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def _copy_sources(dockerfile: Path) -> list[str]:
    sources = []
    for keyword, args in _instructions(dockerfile):
        if keyword not in ("COPY", "ADD"):
            continue
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        sources.extend(words[:-1])  # the last word is the destination
    return sources


def _copies(dockerfile: Path) -> list[tuple[list[str], str]]:
    copies = []
    for keyword, args in _instructions(dockerfile):
        if keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            copies.append((words[:-1], words[-1]))
    return copies


def _arg_default(dockerfile: Path, name: str) -> str | None:
    for keyword, args in _instructions(dockerfile):
        if keyword == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1]
    return None


# --- docker-compose.yml -----------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_spec() -> None:
    checker = Path(sys.executable).parent / "check-jsonschema"
    assert checker.exists(), f"{checker} is missing: install the project's dev extra (pip install -e '.[dev]')"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"check-jsonschema failed:\n{result.stdout}\n{result.stderr}"


def test_compose_file_has_no_obsolete_version_key(compose: dict) -> None:
    assert "version" not in compose


def test_every_depends_on_names_a_defined_service(services: dict[str, dict]) -> None:
    unknown = {
        f"{name} -> {dep}" for name, service in services.items() for dep in _depends_on(service) if dep not in services
    }
    assert not unknown, f"depends_on names services that do not exist: {sorted(unknown)}"


def test_every_service_has_a_healthcheck(services: dict[str, dict]) -> None:
    missing = []
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        if check.get("disable") or not check.get("test") or check["test"] in (["NONE"], "NONE"):
            missing.append(name)
    assert not missing, f"services without a healthcheck: {missing}"


def test_services_wait_only_for_healthy_dependencies(services: dict[str, dict]) -> None:
    # A healthcheck is only useful if dependants wait for it.
    loose = {
        f"{name} -> {dep}"
        for name, service in services.items()
        for dep, options in _depends_on(service).items()
        if (options or {}).get("condition") != "service_healthy"
    }
    assert not loose, f"depends_on without condition service_healthy: {sorted(loose)}"


def test_published_ports_bind_only_to_loopback(services: dict[str, dict]) -> None:
    exposed = [
        f"{name}: {spec}"
        for name, service in services.items()
        for host_ip, _, spec in _published_ports(service)
        if host_ip not in ("127.0.0.1", "::1")
    ]
    assert not exposed, f"ports published on every interface: {exposed}"


def test_no_two_services_publish_the_same_host_port(services: dict[str, dict]) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for name, service in services.items():
        for _, host_port, _ in _published_ports(service):
            if host_port in seen:
                clashes.append(f"{host_port}: {seen[host_port]} and {name}")
            if host_port:
                seen[host_port] = name
    assert not clashes, clashes


def _bind_mounts(service: dict) -> dict[str, Path]:
    """{target: absolute source} for bind mounts, sources resolved against infra/."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts[volume["target"]] = (INFRA / volume["source"]).resolve()
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/", "~")):
            mounts[target] = (INFRA / source).resolve()
    return mounts


def test_localstack_applies_the_resources_file_the_local_stack_uses(services: dict[str, dict]) -> None:
    localstack = services["localstack"]
    mounts = _bind_mounts(localstack)
    env = _environment(localstack)

    # The hook reads $NIMBUS_RESOURCES, which must be the mounted copy of localstack/resources.json.
    assert env.get("NIMBUS_RESOURCES") in mounts, "NIMBUS_RESOURCES does not point at a mounted file"
    assert mounts[env["NIMBUS_RESOURCES"]] == (ROOT / "localstack" / "resources.json").resolve()

    # And the hook itself is the one `nimbus local up` runs against moto.
    hooks = mounts.get("/etc/localstack/init/ready.d")
    assert hooks == (ROOT / "localstack" / "init" / "ready.d").resolve()
    assert (hooks / "nimbus_resources.py").is_file()

    assert set(env["SERVICES"].split(",")) >= {"s3", "sqs"}


def test_every_bind_mount_source_exists(services: dict[str, dict]) -> None:
    missing = [
        f"{name}: {source}"
        for name, service in services.items()
        for source in _bind_mounts(service).values()
        if not source.exists()
    ]
    assert not missing, f"bind mounts of paths that do not exist: {missing}"


def test_nimbus_settings_in_compose_are_real_settings(services: dict[str, dict]) -> None:
    from nimbus.config import Settings

    fields = {name.upper() for name in Settings.model_fields}
    unknown = {
        f"{name}: {key}"
        for name in NIMBUS_IMAGE_SERVICES
        for key in _environment(services[name])
        if key.startswith("NIMBUS_") and key.removeprefix("NIMBUS_") not in fields
    }
    assert not unknown, f"NIMBUS_* variables that Settings ignores (typos?): {sorted(unknown)}"


def test_gateway_waits_for_every_backend_it_is_pointed_at(services: dict[str, dict]) -> None:
    nimbus = services["nimbus"]
    env = _environment(nimbus)
    hosts = {
        key: urlsplit(env[key]).hostname
        for key in (
            "NIMBUS_REDIS_URL",
            "NIMBUS_MONGO_URL",
            "NIMBUS_AWS_ENDPOINT_URL",
            "NIMBUS_MLFLOW_TRACKING_URI",
            "NIMBUS_SPARK_MASTER",
            "NIMBUS_RAY_ADDRESS",
        )
    }
    deps = _depends_on(nimbus)
    for key, host in hosts.items():
        assert host in services, f"{key}={env[key]} names no service"
        assert deps.get(host, {}).get("condition") == "service_healthy", f"nimbus does not wait for {host} ({key})"


def test_gateway_listens_where_its_healthcheck_and_port_look(services: dict[str, dict]) -> None:
    nimbus = services["nimbus"]
    command = nimbus["command"] if isinstance(nimbus["command"], list) else shlex.split(nimbus["command"])
    assert command[:3] == ["nimbus", "local", "serve"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    assert f"localhost:{port}/health" in str(nimbus["healthcheck"]["test"])
    assert f"127.0.0.1:{port}:{port}" in nimbus["ports"]


def test_nodes_that_run_nimbus_code_share_the_nimbus_image(services: dict[str, dict]) -> None:
    # Spark executors and Ray workers need the driver's Python minor version and packages.
    images = {services[name].get("image") for name in NIMBUS_IMAGE_SERVICES}
    builds = [services[name].get("build") for name in NIMBUS_IMAGE_SERVICES]
    assert len(images) == 1 and None not in images, images
    assert all(build == builds[0] for build in builds), builds
    assert builds[0]["dockerfile"] == "infra/Dockerfile"
    assert (INFRA / builds[0]["context"]).resolve() == ROOT


def test_spark_master_runs_the_spark_version_the_nimbus_image_pins(services: dict[str, dict]) -> None:
    image, _, tag = services["spark-master"]["image"].partition(":")
    assert image == "apache/spark"
    build_arg = services["nimbus"]["build"]["args"]["SPARK_VERSION"]
    assert tag == build_arg, "spark-master's tag and the SPARK_VERSION build arg must interpolate the same way"
    assert _default_of(build_arg) == _arg_default(DOCKERFILE, "SPARK_VERSION")


def test_ray_version_of_compose_and_dockerfile_agree(services: dict[str, dict]) -> None:
    build_arg = services["nimbus"]["build"]["args"]["RAY_VERSION"]
    assert _default_of(build_arg) == _arg_default(DOCKERFILE, "RAY_VERSION")


def test_ray_and_spark_nodes_find_their_heads(services: dict[str, dict]) -> None:
    assert "spark://spark-master:7077" in services["spark-worker"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert "--ray-client-server-port=10001" in services["ray-head"]["command"]
    assert _depends_on(services["spark-worker"])["spark-master"]["condition"] == "service_healthy"
    assert _depends_on(services["ray-worker"])["ray-head"]["condition"] == "service_healthy"


# --- Dockerfiles ------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, LAMBDA_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_copies_the_code_the_functions_import(dockerfile: Path) -> None:
    sources = {source.rstrip("/") for source in _copy_sources(dockerfile)}
    assert {"shared", "functions"} <= sources, sources


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, LAMBDA_DOCKERFILE], ids=lambda p: p.name)
def test_everything_a_dockerfile_copies_exists_in_the_build_context(dockerfile: Path) -> None:
    # The build context is the repository root for both images. Git keeps no empty
    # folders, so a folder with no file in it is missing from a fresh clone (and CI).
    def present(source: str) -> bool:
        path = ROOT / source
        return path.is_file() or (path.is_dir() and any(p.is_file() for p in path.rglob("*")))

    missing = [source for source in _copy_sources(dockerfile) if not present(source)]
    assert not missing, f"{dockerfile.name} copies paths a clone of the repository lacks: {missing}"


def test_platform_image_installs_the_project_and_runs_the_gateway_as_non_root() -> None:
    instructions = _instructions(DOCKERFILE)
    keywords = [keyword for keyword, _ in instructions]
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    assert any(k == "RUN" and "pip install ." in a for k, a in instructions)
    assert any(k == "RUN" and "openjdk-17-jre-headless" in a for k, a in instructions)
    user = [a for k, a in instructions if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    # USER comes before the command, so the gateway never runs as root.
    assert keywords.index("USER") < keywords.index("CMD")
    assert ("EXPOSE", "3000") in instructions
    cmd = [a for k, a in instructions if k == "CMD"][-1]
    assert '"nimbus", "local", "serve"' in cmd


def test_lambda_image_puts_nimbus_and_the_handlers_in_the_task_root() -> None:
    instructions = _instructions(LAMBDA_DOCKERFILE)
    assert instructions[0] == ("FROM", "public.ecr.aws/lambda/python:3.12")
    copies = _copies(LAMBDA_DOCKERFILE)
    # shared/ holds the nimbus package: its contents land in the task root (import nimbus).
    assert (["shared/"], "${LAMBDA_TASK_ROOT}/") in copies
    assert (["functions/"], "${LAMBDA_TASK_ROOT}/functions/") in copies
    cmd = [a for k, a in instructions if k == "CMD"][-1]
    handler = re.fullmatch(r'\["([\w/]+)\.(\w+)"\]', cmd)
    assert handler, cmd
    assert (ROOT / f"{handler.group(1)}.py").is_file(), f"default handler module {handler.group(1)}.py is missing"


def test_build_context_leaves_out_local_state() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".nimbus", "node_modules", ".env"} <= ignored
