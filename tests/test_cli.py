"""Acceptance tests: the real command line, run as subprocesses (``python -m exporter``).

Every process gets its own session and its whole process group is killed when the test ends; ports
are free ones found at run time; everything listens on loopback; every wait has a deadline. The
simulator runs in-process (the ``simulator`` fixture), so these tests never block the event loop while
a subprocess works: they poll with ``asyncio.sleep`` and run blocking calls in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
import yaml
from loopback import bound_socket, port_of, spawn_with_sockets
from samples import Samples, parse, value

from bems_simulator.pki import CertificateAuthority
from bems_simulator.server import Simulator

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("onprem-ews", "onprem-autodiscover", "online-ews", "online-autodiscover", "online-graph")
# Target → its auth methods, as the simulator's exporter config implies them.
AUTH = {
    "onprem-ews": "basic, ntlm",
    "onprem-autodiscover": "basic, ntlm",
    "online-ews": "oauth",
    "online-autodiscover": "none",
    "online-graph": "oauth",
}
# Target → its checks: auth where a credential signs in, token once per Entra credential (its first target),
# service_health once per Entra credential (its first graph target).
CHECKS = {
    "onprem-ews": "reachability, tls, auth, impersonation",
    "onprem-autodiscover": "reachability, tls, auth, autodiscover",
    "online-ews": "reachability, tls, auth, token, impersonation, ews_settings",
    "online-autodiscover": "reachability, tls, autodiscover",
    "online-graph": "reachability, tls, graph, service_health",
}
EXIT_TIMEOUT = 5.0  # seconds a stopped process may take to exit
START_TIMEOUT = 10.0  # seconds a process may take to start listening


# --- processes -------------------------------------------------------------------------------------


class Proc:
    """A started ``python -m exporter``; its output goes to files, so a chatty process never blocks."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout_file: Path, stderr_file: Path) -> None:
        self.popen = popen
        self.stdout_file = stdout_file
        self.stderr_file = stderr_file

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_file.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.popen.poll() is None

    def send_signal(self, sig: signal.Signals) -> None:
        assert self.running(), f"process already exited ({self.returncode}); stderr:\n{self.stderr[-3000:]}"
        self.popen.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                pytest.fail(f"process did not exit within {timeout} s; stderr:\n{self.stderr[-3000:]}")
            await asyncio.sleep(0.02)
        return code

    def group_is_empty(self) -> bool:
        """After ``wait``: True when no process is left in the group it led (no orphaned children)."""
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return True
        return False


class CLI:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def start(
        self, *args: str, program: str = "exporter", environment: Mapping[str, str] | None = None,
        sockets: Mapping[str, socket.socket] | None = None,
    ) -> Proc:  # fmt: skip
        """``python -m PROGRAM ARGS``: the exporter, or ``bems_simulator`` for the demo and the simulator;
        ``environment`` adds to (or overrides) the test's own; with ``sockets``, the program is
        socket-activated (``--web.systemd-socket``) on them, by name."""
        n = len(self.procs)
        stdout_file, stderr_file = self.workdir / f"proc{n}.stdout", self.workdir / f"proc{n}.stderr"
        # The working tree's code, whether or not the package is installed; output is not unbuffered on
        # purpose: what an operator piping the output to a file would see is what the tests see.
        path = [str(ROOT), str(ROOT / "simulator"), os.environ.get("PYTHONPATH")]
        env = {**os.environ, **(environment or {}), "PYTHONPATH": os.pathsep.join(filter(None, path))}
        env.pop("PYTHONUNBUFFERED", None)
        with stdout_file.open("wb") as out, stderr_file.open("wb") as err:
            streams: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": out, "stderr": err}
            where: dict[str, Any] = {"cwd": self.workdir, "env": env, "start_new_session": True}
            if sockets is None:
                popen = subprocess.Popen([sys.executable, "-m", program, *args], **streams, **where)
            else:
                argv = [sys.executable, "-m", program, *args, "--web.systemd-socket"]
                popen = spawn_with_sockets(argv, sockets, **streams, **where)
        proc = Proc(popen, stdout_file, stderr_file)
        self.procs.append(proc)
        return proc

    async def run(self, *args: str, timeout: float = 15.0, program: str = "exporter") -> Proc:
        proc = self.start(*args, program=program)
        await proc.wait(timeout)
        return proc

    def kill_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float, proc: Proc | None = None
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds or as soon as ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if proc is not None and not proc.running():
            pytest.fail(f"process exited ({proc.returncode}) while waiting for {what}; stderr:\n{proc.stderr[-3000:]}")
        if time.monotonic() > deadline:
            tail = f"; stderr:\n{proc.stderr[-3000:]}" if proc is not None else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{tail}")
        await asyncio.sleep(0.05)


# --- HTTP and metrics --------------------------------------------------------------------------------


async def fetch(
    session: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: Any
) -> tuple[int, str, dict[str, str]] | None:
    """(status, body, headers), or None when the connection fails."""
    try:
        async with session.request(method, url, **kwargs) as response:
            return response.status, await response.text(), dict(response.headers)
    except (aiohttp.ClientError, TimeoutError):
        return None


def targets_of(samples: Samples, name: str | None = None) -> set[str]:
    """Targets with a series of metric ``name`` (any metric when None)."""
    return {
        dict(labels)["target"]
        for metric, labels in samples
        if (name is None or metric == name) and "target" in dict(labels)
    }


async def scrape(session: aiohttp.ClientSession, base: str, **kwargs: Any) -> Samples:
    outcome = await fetch(session, f"{base}/metrics", **kwargs)
    if outcome is None or outcome[0] != 200:
        return {}
    return parse(outcome[1])


def start_activated(cli: CLI, *args: str, program: str = "exporter", **sockets: socket.socket) -> tuple[Proc, int]:
    """``cli.start(ARGS)`` socket-activated on a fresh ``web`` socket (and ``sockets``); the web port. The test
    keeps no copy of the sockets: once the process exits, nothing listens there."""
    with bound_socket() as web:
        return cli.start(*args, program=program, sockets={"web": web, **sockets}), port_of(web)


async def start_daemon(cli: CLI, http: aiohttp.ClientSession, config: Path, *args: str) -> tuple[Proc, str]:
    proc, port = start_activated(cli, "--config.file", str(config), *args)
    base = f"http://127.0.0.1:{port}"

    async def healthy() -> bool:
        outcome = await fetch(http, f"{base}/-/healthy")
        return outcome is not None and outcome[0] == 200

    await eventually(healthy, "/-/healthy to answer 200", START_TIMEOUT, proc)
    return proc, base


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def daemon_config(simulator: Simulator, tmp_path: Path) -> Path:
    return simulator.write_exporter_config(tmp_path / "bems.yml", interval="1s", timeout="1s")


def secrets_of(simulator: Simulator) -> tuple[str, str]:
    return simulator.credentials.onprem_password, simulator.credentials.client_secret


# --- --version and --config.check -------------------------------------------------------------------


async def test_version_prints_program_name_and_version(cli: CLI) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    proc = await cli.run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"bems-exchange-exporter {version}\n"


async def test_config_check_summarises_a_valid_file(cli: CLI, simulator: Simulator, tmp_path: Path) -> None:
    config = daemon_config(simulator, tmp_path)
    proc = await cli.run("--config.check", "--config.file", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{config}: valid"
    assert "scenario: onprem-bems-hybrid" in lines
    assert f"targets ({len(TARGETS)}):" in lines
    for name in TARGETS:
        heads = [i for i, line in enumerate(lines) if line.startswith(f"  {name}: ")]
        assert len(heads) == 1, f"{name} not listed once in:\n{proc.stdout}"
        details = lines[heads[0] + 1]
        assert f"checks: {CHECKS[name]}; auth: {AUTH[name]};" in details, details
    for secret in secrets_of(simulator):
        assert secret not in proc.stdout


@pytest.mark.parametrize("write_probe", [False, None], ids=["graph-without-write-probe", "graph-default"])
async def test_config_check_warns_of_graph_push_without_write_probe(
    cli: CLI, simulator: Simulator, tmp_path: Path, write_probe: bool | None
) -> None:
    data = yaml.safe_load(daemon_config(simulator, tmp_path).read_text(encoding="utf-8"))
    data["notifications"] = {"listen_address": "127.0.0.1:0", "public_url": "https://monitor.example.test/bems"}
    (graph,) = [target for target in data["targets"] if target["name"] == "online-graph"]
    graph["push"] = {"mailbox": "carol@contoso.test"} | ({} if write_probe is None else {"write_probe": write_probe})
    path = tmp_path / "push.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    proc = await cli.run("--config.check", "--config.file", str(path))
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stdout.splitlines() if "graph push target" in line]
    expected = ["warning: graph push target online-graph has write_probe: false: delivery is not verified"]
    assert [line.split(" (")[0] for line in warned] == (expected if write_probe is False else [])


@pytest.mark.parametrize(
    ("where", "key"),
    [("top", "bogus"), ("target", "targets[1].colour")],
    ids=["top-level", "in-a-target"],
)
async def test_config_check_rejects_an_unknown_key(
    cli: CLI, simulator: Simulator, tmp_path: Path, where: str, key: str
) -> None:
    data = yaml.safe_load(daemon_config(simulator, tmp_path).read_text(encoding="utf-8"))
    if where == "top":
        data["bogus"] = 1
    else:
        data["targets"][1]["colour"] = "red"
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    proc = await cli.run("--config.check", "--config.file", str(bad))
    assert proc.returncode == 1
    assert proc.stdout == ""
    written = key.rpartition(".")[2]
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if text.lstrip(" -").startswith(written))
    assert proc.stderr == f"error: {bad}:{line}: {key}: unknown key\n"


async def test_config_check_names_a_missing_file(cli: CLI, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-config.yml"
    proc = await cli.run("--config.check", "--config.file", str(missing))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {missing}: ")
    assert len(proc.stderr.splitlines()) == 1, proc.stderr


# --- probe ---------------------------------------------------------------------------------------------


def assert_no_secrets(simulator: Simulator, *texts: str) -> None:
    for secret in secrets_of(simulator):
        for text in texts:
            assert secret not in text


async def test_probe_reports_every_step_when_all_pass(cli: CLI, simulator: Simulator, sim_config_file: Path) -> None:
    proc = await cli.run("probe", "onprem-ews", "--config.file", str(sim_config_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout
    lines = report.splitlines()
    assert lines[0].startswith("onprem-ews (ews, exchange=onprem) https://localhost:")
    for step in ("DNS lookup of localhost", "TCP connect to localhost:", "TLS handshake with localhost:"):
        assert any(re.match(rf"\s+✓ {re.escape(step)}", line) for line in lines), f"no ✓ {step} in:\n{report}"
    assert any(re.match(r"\s+✓ reachability: ok", line) for line in lines), report
    assert any(re.match(r"\s+✓ tls: ok", line) for line in lines), report
    assert "✗" not in report
    assert lines[-1] == "4 of 4 checks passed"
    assert_no_secrets(simulator, proc.stdout, proc.stderr)


async def test_probe_explains_a_failure(cli: CLI, simulator: Simulator, sim_config_file: Path) -> None:
    await simulator.set_fault("onprem-ews", "expired")
    # Flags before the subcommand work as well as after it.
    proc = await cli.run("--config.file", str(sim_config_file), "probe", "onprem-ews")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = proc.stdout
    lines = report.splitlines()
    assert any(re.match(r"\s+✓ reachability: ok", line) for line in lines), report
    assert any(re.match(r"\s+✗ tls: FAILED, reason=certificate", line) for line in lines), report
    assert any(re.match(r"\s+✗ TLS handshake with localhost:\d+", line) for line in lines), report
    assert any(re.match(r"\s+hint: \S", line) for line in lines), report
    assert lines[-1] == "1 of 4 checks passed"
    assert_no_secrets(simulator, proc.stdout, proc.stderr)


async def test_probe_runs_only_the_requested_check(cli: CLI, simulator: Simulator, sim_config_file: Path) -> None:
    await simulator.set_fault("onprem-ews", "expired")  # would fail the tls check, were it run
    proc = await cli.run("probe", "onprem-ews", "--check", "reachability", "--config.file", str(sim_config_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout
    assert re.search(r"^\s+✓ reachability: ok", report, re.MULTILINE), report
    assert "tls:" not in report
    assert "TLS handshake" not in report
    assert report.splitlines()[-1] == "1 of 1 checks passed"


async def test_probe_of_an_unknown_target_lists_the_configured_ones(
    cli: CLI, simulator: Simulator, sim_config_file: Path
) -> None:
    proc = await cli.run("probe", "no-such-target", "--config.file", str(sim_config_file))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "'no-such-target'" in proc.stderr
    for name in TARGETS:
        assert name in proc.stderr


# --- the daemon ------------------------------------------------------------------------------------------


async def test_daemon_serves_reloads_on_sighup_and_stops_on_sigterm(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = daemon_config(simulator, tmp_path)
    proc, base = await start_daemon(cli, http, config, "--log.format", "json", "--log.level", "debug")

    async def probed(expected: set[str]) -> bool:
        return targets_of(await scrape(http, base), "bems_probe_success") == expected

    await eventually(lambda: probed(set(TARGETS)), "bems_probe_success for every target", 5, proc)

    # A good file without online-ews: its series go at once.
    original = config.read_text(encoding="utf-8")
    data = yaml.safe_load(original)
    data["targets"] = [t for t in data["targets"] if t["name"] != "online-ews"]
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)
    remaining = set(TARGETS) - {"online-ews"}

    async def online_ews_gone() -> bool:
        samples = await scrape(http, base)
        return targets_of(samples) == remaining and targets_of(samples, "bems_probe_success") == remaining

    await eventually(online_ews_gone, "online-ews series to vanish after SIGHUP", 5, proc)
    assert value(await scrape(http, base), "bems_config_last_reload_successful") == 1

    # A broken file: reported, and the last good configuration keeps running.
    config.write_text(original.replace("targets:", "targets: [", 1), encoding="utf-8")
    proc.send_signal(signal.SIGHUP)

    async def reload_failed() -> bool:
        return value(await scrape(http, base), "bems_config_last_reload_successful") == 0

    await eventually(reload_failed, "bems_config_last_reload_successful 0", 5, proc)
    assert proc.running()
    samples = await scrape(http, base)
    assert targets_of(samples, "bems_probe_success") == remaining
    assert (await fetch(http, f"{base}/-/healthy"))[0] == 200  # type: ignore[index]

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert proc.group_is_empty()

    logs = proc.stderr
    entries = []
    for line in logs.splitlines():
        entry = json.loads(line)  # one JSON object per line, nothing else on stderr
        assert isinstance(entry, dict), line
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), line
        entries.append(entry)
    assert any(e["level"] == "debug" for e in entries), "--log.level debug logged no debug entry"
    assert any(e["msg"] == "configuration reloaded" for e in entries)
    assert any(e["level"] == "error" and "reload failed" in e["msg"] for e in entries)
    assert_no_secrets(simulator, logs, proc.stdout)


@pytest.mark.parametrize(
    ("sockets", "reason"),
    [
        (None, "no sockets were handed over (LISTEN_PID and LISTEN_FDS are not set)"),
        ({"web": "unbound"}, "fd 3: a TCP socket that does not listen"),
        ({"notifications": "listening"}, "no socket for the web port: only one named notifications"),
    ],
    ids=["none", "not-listening", "no-web-socket"],
)
async def test_bad_activation_sockets_are_a_one_line_error(
    cli: CLI, sim_config_file: Path, sockets: dict[str, str] | None, reason: str
) -> None:
    with bound_socket() as listening, socket.socket() as unbound:
        if sockets is None:
            proc = await cli.run("--config.file", str(sim_config_file), "--web.systemd-socket")
        else:
            handed = {name: listening if kind == "listening" else unbound for name, kind in sockets.items()}
            proc = cli.start("--config.file", str(sim_config_file), sockets=handed)
            await proc.wait(15)
    assert proc.returncode == 1
    assert proc.stderr == f"error: --web.systemd-socket: {reason}\n", proc.stderr


@pytest.mark.parametrize("command", ["daemon", "demo"])
async def test_a_busy_port_is_a_one_line_error(cli: CLI, sim_config_file: Path, tmp_path: Path, command: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        address = f"127.0.0.1:{port}"
        if command == "daemon":
            proc = await cli.run("--config.file", str(sim_config_file), "--web.listen-address", address)
        else:
            demo_args = ("demo", "--state-dir", str(tmp_path / "demo"), "--web.listen-address", address)
            proc = await cli.run(*demo_args, program="bems_simulator")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert str(port) in last and "in use" in last.lower(), last
    prefix = "error: cannot listen on" if command == "daemon" else "error: cannot start the demo on"
    assert last.startswith(f"{prefix} {address}: "), last


async def test_a_bad_listen_address_is_rejected(cli: CLI, sim_config_file: Path) -> None:
    proc = await cli.run("--config.file", str(sim_config_file), "--web.listen-address", "localhost")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: --web.listen-address 'localhost': "), proc.stderr


async def test_promtool_accepts_a_real_scrape(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:  # `make test` installs it: a missing tool is a failure, never a skip
        pytest.fail("promtool is not installed (run `make tools`): a real scrape must be linted")
    await simulator.set_fault("onprem-ews", "expired")  # failure series too, not only the happy path
    proc, base = await start_daemon(cli, http, daemon_config(simulator, tmp_path))

    async def complete() -> bool:
        samples = await scrape(http, base)
        failing = {"target": "onprem-ews", "exchange": "onprem", "check": "tls", "reason": "certificate"}
        return (
            targets_of(samples, "bems_probe_success") == set(TARGETS)
            and value(samples, "bems_probe_failure_reason", **failing) == 1
        )

    await eventually(complete, "every target probed and onprem-ews failing", 5, proc)
    outcome = await fetch(http, f"{base}/metrics")
    assert outcome is not None and outcome[0] == 200
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=outcome[1].encode(),
        capture_output=True,
        timeout=20,
    )
    problems = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0, problems
    assert problems == ""


# --- --web.config.file -------------------------------------------------------------------------------------


async def test_web_config_serves_https_with_basic_auth(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    ca = CertificateAuthority.create("Exporter Web Test CA")
    cert_pem, key_pem = ca.issue(["localhost"], ["127.0.0.1"])
    (web_dir / "server.crt").write_bytes(cert_pem)
    (web_dir / "server.key").write_bytes(key_pem)
    (web_dir / "ca.pem").write_bytes(ca.cert_pem)
    web_config = web_dir / "web.yml"
    web_config.write_text(
        yaml.safe_dump(
            {
                # Relative paths resolve against the web config's directory, as in exporter-toolkit.
                "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
                "basic_auth_users": {"prometheus": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()},
            }
        ),
        encoding="utf-8",
    )
    proc, port = start_activated(
        cli, "--config.file", str(daemon_config(simulator, tmp_path)), "--web.config.file", str(web_config)
    )
    https = f"https://127.0.0.1:{port}"
    tls = ssl.create_default_context(cafile=str(web_dir / "ca.pem"))
    auth = basic_auth("prometheus", "pw")

    async def healthy() -> bool:
        outcome = await fetch(http, f"{https}/-/healthy", ssl=tls, headers=auth)
        return outcome is not None and outcome[0] == 200

    await eventually(healthy, "/-/healthy over HTTPS", START_TIMEOUT, proc)

    anonymous = await fetch(http, f"{https}/metrics", ssl=tls)
    assert anonymous is not None and anonymous[0] == 401
    assert anonymous[2].get("WWW-Authenticate", "").startswith("Basic ")
    assert "bems_" not in anonymous[1]
    wrong = await fetch(http, f"{https}/metrics", ssl=tls, headers=basic_auth("prometheus", "wrong"))
    assert wrong is not None and wrong[0] == 401
    authorised = await fetch(http, f"{https}/metrics", ssl=tls, headers=auth)
    assert authorised is not None and authorised[0] == 200
    assert "bems_exporter_build_info" in authorised[1]

    reload_anonymous = await fetch(http, f"{https}/-/reload", method="POST", ssl=tls)
    assert reload_anonymous is not None and reload_anonymous[0] == 401
    reload_authorised = await fetch(http, f"{https}/-/reload", method="POST", ssl=tls, headers=auth)
    assert reload_authorised is not None and reload_authorised[0] == 200

    with pytest.raises(aiohttp.ClientError):
        async with http.get(f"http://127.0.0.1:{port}/metrics", headers=auth) as response:
            await response.read()
    assert proc.running()

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]


async def test_the_daemon_reloads_its_web_config_and_certificate_without_a_restart(
    cli: CLI, simulator: Simulator, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    ca = CertificateAuthority.create("Exporter Web Reload CA")
    (web_dir / "ca.pem").write_bytes(ca.cert_pem)

    def renew_certificate() -> bytes:
        cert_pem, key_pem = ca.issue(["localhost"], ["127.0.0.1"])
        (web_dir / "server.crt").write_bytes(cert_pem)
        (web_dir / "server.key").write_bytes(key_pem)
        return cert_pem

    def write_web_config(password: bytes | str) -> None:
        hashed = bcrypt.hashpw(password, bcrypt.gensalt(4)).decode() if isinstance(password, bytes) else password
        document = {
            "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
            "basic_auth_users": {"prometheus": hashed},
        }
        (web_dir / "web.yml").write_text(yaml.safe_dump(document), encoding="utf-8")

    first_cert = renew_certificate()
    write_web_config(b"old")
    config = daemon_config(simulator, tmp_path)
    proc, port = start_activated(cli, "--config.file", str(config), "--web.config.file", str(web_dir / "web.yml"))
    https = f"https://127.0.0.1:{port}"
    tls = ssl.create_default_context(cafile=str(web_dir / "ca.pem"))

    async def status(path: str, password: str, method: str = "GET") -> int | None:
        outcome = await fetch(http, https + path, method=method, ssl=tls, headers=basic_auth("prometheus", password))
        return None if outcome is None else outcome[0]

    async def served_certificate() -> bytes:
        def handshake() -> bytes:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                tls.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
            ):
                return ssl.DER_cert_to_PEM_cert(wrapped.getpeercert(binary_form=True)).encode()

        return await asyncio.to_thread(handshake)

    async def up() -> bool:
        return await status("/-/healthy", "old") == 200

    await eventually(up, "/-/healthy over HTTPS", START_TIMEOUT, proc)
    assert await served_certificate() == first_cert

    # A new password through POST /-/reload: the old one stops working at once.
    write_web_config(b"new")
    assert await status("/-/reload", "old", method="POST") == 200
    assert await status("/metrics", "old") == 401
    assert await status("/metrics", "new") == 200

    # A renewed certificate is served at the next handshake, without a reload or a restart.
    second_cert = renew_certificate()
    assert await served_certificate() == second_cert

    # A broken file on SIGHUP: logged, the metric says so, and the running web config stays.
    write_web_config("plaintext")
    proc.send_signal(signal.SIGHUP)

    async def reload_failed() -> bool:
        outcome = await fetch(http, f"{https}/metrics", ssl=tls, headers=basic_auth("prometheus", "new"))
        return outcome is not None and value(parse(outcome[1]), "bems_web_config_last_reload_successful") == 0

    await eventually(reload_failed, "bems_web_config_last_reload_successful 0", 5, proc)
    assert await status("/metrics", "new") == 200
    outcome = await fetch(http, f"{https}/-/reload", method="POST", ssl=tls, headers=basic_auth("prometheus", "new"))
    assert outcome is not None and outcome[0] == 500
    assert "basic_auth_users.prometheus: not a bcrypt hash" in outcome[1]
    assert "plaintext" not in outcome[1] and "plaintext" not in proc.stderr
    assert "web configuration reload failed" in proc.stderr

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]


async def test_a_listed_host_with_a_port_is_refused_at_start(cli: CLI, sim_config_file: Path) -> None:
    proc = await cli.run("--config.file", str(sim_config_file), "--web.allowed-hosts", "exporter.example:10442")
    assert proc.returncode == 2  # argparse's usage error
    assert "--web.allowed-hosts: 'exporter.example:10442' has a port" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("document", "line", "key", "reason"),
    [
        ({"bogus": 1}, 1, "bogus", "unknown key"),
        ({"basic_auth_users": {"prometheus": "pw-in-clear"}}, 2, "basic_auth_users.prometheus", "not a bcrypt hash"),
        (
            {"tls_server_config": {"cert_file": "missing.crt", "key_file": "missing.key"}},
            2,
            "tls_server_config.cert_file",
            "cannot read",
        ),
    ],
    ids=["unknown-key", "plaintext-password", "missing-certificate"],
)
async def test_bad_web_config_is_fatal(
    cli: CLI, sim_config_file: Path, tmp_path: Path, document: dict[str, Any], line: int, key: str, reason: str
) -> None:
    web_config = tmp_path / "web.yml"
    web_config.write_text(yaml.safe_dump(document), encoding="utf-8")
    proc, _port = start_activated(cli, "--config.file", str(sim_config_file), "--web.config.file", str(web_config))
    await proc.wait(15)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {web_config}:{line}: {key}: {reason}"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert "pw-in-clear" not in proc.stderr


# --- demo and simulate ---------------------------------------------------------------------------------------


async def start_demo(cli: CLI, tmp_path: Path, *flags: str) -> tuple[Proc, str]:
    proc, port = start_activated(cli, "demo", "--state-dir", str(tmp_path / "demo"), *flags, program="bems_simulator")
    base = f"http://127.0.0.1:{port}"
    await eventually(lambda: "Metrics:" in proc.stdout, "the demo's URLs on stdout", START_TIMEOUT, proc)
    assert re.search(rf"^\s*Landing page:\s+{re.escape(base)}/$", proc.stdout, re.MULTILINE), proc.stdout
    assert re.search(rf"^\s*Metrics:\s+{re.escape(base)}/metrics$", proc.stdout, re.MULTILINE), proc.stdout
    return proc, base


# A line of the simulator's request log (aiohttp's access log format, its quotes escaped by logfmt):
# "POST /EWS/Exchange.asmx HTTP/1.1" 200
REQUEST_LOG_LINE = re.compile(r'(?:GET|POST|PATCH|PUT|DELETE) /\S* HTTP/1\.1\\?" \d{3}')


def assert_demo_stdout_ends_with_its_urls_and_fault_examples(stdout: str) -> None:
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    assert re.fullmatch(r"curl -X POST http://127\.0\.0\.1:\d+/api/v1/reset", lines[-1]), lines
    assert lines[-3].startswith('curl -X PUT -d \'{"kind": "callback_blocked"}\' http://127.0.0.1:'), lines
    assert re.fullmatch(
        r"curl -X PUT -d '\{\"fault\": \"refuse\"\}' http://127\.0\.0\.1:\d+/api/v1/proxy/fault", lines[-5]
    )
    assert lines[-8].startswith('curl -X PUT -d \'{"fault": "expired"}\''), lines
    assert lines[-11].startswith("Outside:"), lines
    assert lines[-15].startswith("BEMS Exchange Exporter demo is running") and lines[-14].startswith("Landing page:")
    assert not REQUEST_LOG_LINE.search(stdout), stdout


async def assert_the_demo_breaks_the_path_from_outside_alone(
    http: aiohttp.ClientSession, stdout: str, inside: str, proc: Proc
) -> None:
    """The demo's second vantage point (issue 17): green like the inside one, then, with the proxy that stands
    for its path refusing, failing with reason proxy while the inside stays green."""
    outside = re.search(r"^\s*Outside:\s+(http://127\.0\.0\.1:\d+)/ ", stdout, re.MULTILINE)
    admin = re.search(r"^\s*Simulator API:\s+(http://127\.0\.0\.1:\d+)/", stdout, re.MULTILINE)
    assert outside and admin, stdout
    onprem = {"target": "onprem-ews", "exchange": "onprem", "check": "reachability"}

    async def outside_reaches_onprem() -> bool:
        return value(await scrape(http, outside[1]), "bems_probe_success", **onprem) == 1

    await eventually(outside_reaches_onprem, "onprem-ews reachable from outside", 30, proc)
    async with http.put(admin[1] + "/api/v1/proxy/fault", json={"fault": "refuse"}) as reply:
        assert reply.status == 200, await reply.text()

    async def outside_fails_through_its_path() -> bool:
        samples = await scrape(http, outside[1])
        return value(samples, "bems_probe_failure_reason", **onprem, reason="proxy") == 1

    await eventually(outside_fails_through_its_path, "onprem-ews failing from outside with reason proxy", 30, proc)
    samples = await scrape(http, inside)
    assert value(samples, "bems_probe_success", **onprem) == 1
    assert value(samples, "bems_probe_failure_reason", **onprem, reason="proxy") is None


@pytest.mark.timeout(300)  # the demo: a simulator and an exporter process, every check to a verdict
async def test_make_demo_probes_its_simulator_to_the_whole_verdict_ready_and_stops_on_sigint(
    cli: CLI, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """`make demo`, one run for what its default output shows (a demo costs a simulator and an exporter process):
    push (EWS and Graph) and BEMS' notification URL are checked and every requirement is met; the simulator logs
    nothing below a warning; Ctrl-C stops it all, secrets unprinted."""
    proc, base = await start_demo(cli, tmp_path)
    landing = await fetch(http, f"{base}/")
    assert landing is not None and landing[0] == 200
    assert "onprem-ews" in landing[1]

    async def onprem_tls_passes() -> bool:
        samples = await scrape(http, base)
        return value(samples, "bems_probe_success", target="onprem-ews", exchange="onprem", check="tls") == 1

    # The demo probes every 15 s; a check's first run comes within its first interval.
    await eventually(onprem_tls_passes, "onprem-ews tls to pass", 20, proc)

    delivery = {("onprem", "push_delivery"), ("online", "push_delivery"), ("online", "notification_url")}
    seen: dict[tuple[str, str], float] = {}

    async def ready() -> bool:
        samples = await scrape(http, base)
        seen.clear()
        seen.update({(dict(labels)["exchange"], dict(labels)["requirement"]): v
                     for (name, labels), v in samples.items() if name == "bems_requirement_met"})  # fmt: skip
        return value(samples, "bems_scenario_ready", scenario="onprem-bems-hybrid") == 1 and delivery <= seen.keys()

    # Every 15 s: a push check passes on the run after its write probe's notification arrived. Generous, for a
    # loaded machine; the wait ends as soon as the verdict is ready.
    await eventually(ready, "bems_scenario_ready 1 with the delivery requirements", 180, proc)
    assert set(seen.values()) == {1.0}, seen
    await assert_the_demo_breaks_the_path_from_outside_alone(http, proc.stdout, base, proc)

    proc.send_signal(signal.SIGINT)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert proc.group_is_empty(), "the demo left processes behind"
    assert_demo_stdout_ends_with_its_urls_and_fault_examples(proc.stdout)
    assert not REQUEST_LOG_LINE.search(proc.stderr), proc.stderr[-3000:]
    assert "logger=bems_simulator" not in proc.stderr, "nothing of the simulator's below a warning"
    assert "logger=exporter" in proc.stderr, "the exporter's own log stays"
    state = tmp_path / "demo"
    for secret_file in ("bemsadmin.password", "entra-app.secret"):
        secret = (state / secret_file).read_text(encoding="utf-8")
        assert secret not in proc.stdout and secret not in proc.stderr


@pytest.mark.timeout(300)  # the demo: a simulator and an exporter process, every check to a verdict
async def test_the_demo_logs_the_simulators_requests_with_log_requests(
    cli: CLI, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    proc, base = await start_demo(cli, tmp_path, "--log.requests")

    async def autodiscover_ran() -> bool:  # HTTP requests to the simulator, not only TLS handshakes
        samples = await scrape(http, base)
        return value(samples, "bems_probe_success", target="onprem-ews", exchange="onprem", check="auth") is not None

    await eventually(autodiscover_ran, "onprem-ews auth to run", 30, proc)
    proc.send_signal(signal.SIGINT)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert_demo_stdout_ends_with_its_urls_and_fault_examples(proc.stdout)
    assert REQUEST_LOG_LINE.search(proc.stderr), "--log.requests logs the simulator's requests"
    assert "logger=bems_simulator.requests" in proc.stderr


@pytest.mark.timeout(300)  # the demo: a simulator and an exporter process, every check to a verdict
async def test_demo_stops_on_sigterm(cli: CLI, tmp_path: Path) -> None:
    proc, _ = await start_demo(cli, tmp_path)
    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert proc.group_is_empty(), "the demo left processes behind"


@pytest.mark.parametrize(
    ("args", "instead"),
    [
        (["demo"], "run bems-simulator demo (or make demo)"),
        (["demo", "--state-dir", "x", "--web.listen-address", "127.0.0.1:1"], "run bems-simulator demo"),
        (["simulate", "--state-dir", "x"], "run bems-simulator simulate"),
    ],
    ids=["demo", "demo-with-its-flags", "simulate"],
)
async def test_the_exporter_points_its_moved_commands_to_the_simulator(cli: CLI, args: list[str], instead: str) -> None:
    """The exporter does not contain the simulator: its old subcommands say what to run instead."""
    proc = await cli.run(*args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"error: {args[0]} is not part of the exporter any more: ") and instead in line, line


async def test_the_exporter_still_refuses_unknown_flags(cli: CLI, sim_config_file: Path) -> None:
    proc = await cli.run("--config.file", str(sim_config_file), "--no-such-flag")
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


async def test_simulate_becomes_ready_and_stops_on_sigterm(cli: CLI, tmp_path: Path) -> None:
    state = tmp_path / "sim-state"
    ready_file = state / "simulator.json"
    proc = cli.start("simulate", "--state-dir", str(state), program="bems_simulator")
    await eventually(ready_file.exists, "simulator.json", START_TIMEOUT, proc)
    ready = json.loads(ready_file.read_text(encoding="utf-8"))  # written atomically: complete once present
    assert {"onprem-ews", "online-ews", "graph", "entra"} <= ready["endpoints"].keys()
    assert Path(ready["config_file"]).is_file()
    for endpoint in ready["endpoints"].values():
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", endpoint["port"]), 5)
        writer.close()
        await writer.wait_closed()

    proc.send_signal(signal.SIGTERM)
    assert await proc.wait(EXIT_TIMEOUT) == 0, proc.stderr[-3000:]
    assert not ready_file.exists(), "a clean stop removes simulator.json"
    assert proc.group_is_empty()
