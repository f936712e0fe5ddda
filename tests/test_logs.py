"""Tests for exporter.logs: go-kit style logfmt/json lines, levels, and secret redaction."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from check_runner import run

from bems_simulator.server import Simulator
from exporter.config import load_config
from exporter.logs import PROTOCOL_LOGGERS, redact, register_secret, replace_secrets, setup_logging

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

log = logging.getLogger("exporter.daemon.scheduler")


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Restores the root logger's handlers and level, and forgets registered secrets."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    for name in PROTOCOL_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    replace_secrets([])


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def _logfmt_without_ts(line: str) -> str:
    ts, _, rest = line.partition(" ")
    assert TIMESTAMP.fullmatch(ts.removeprefix("ts=")), line
    return rest


def test_logfmt_shape(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt")
    log.info("probe finished", extra={"fields": {"target": "onprem-ews", "check": "tls", "ok": True, "n": 3}})
    [line] = _lines(capsys)
    assert line.startswith("ts=")
    assert _logfmt_without_ts(line) == (
        'level=info logger=exporter.daemon.scheduler msg="probe finished" target=onprem-ews check=tls ok=true n=3'
    )


def test_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "json")
    log.warning("slow %s", "probe", extra={"fields": {"target": "onprem-ews", "seconds": 1.5, "ok": False}})
    [line] = _lines(capsys)
    record = json.loads(line)
    assert list(record) == ["ts", "level", "logger", "msg", "target", "seconds", "ok"]
    assert TIMESTAMP.fullmatch(record.pop("ts"))
    assert record == {
        "level": "warn",
        "logger": "exporter.daemon.scheduler",
        "msg": "slow probe",
        "target": "onprem-ews",
        "seconds": 1.5,
        "ok": False,
    }


@pytest.mark.parametrize(
    ("value", "rendered"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param("two words", '"two words"', id="space"),
        pytest.param("a=b", '"a=b"', id="equals"),
        pytest.param('say "hi"', '"say \\"hi\\""', id="quotes"),
        pytest.param("line1\nline2", '"line1\\nline2"', id="newline"),
        pytest.param("tab\there", '"tab\\there"', id="tab"),
        pytest.param('back\\slash "q"', '"back\\\\slash \\"q\\""', id="backslash-in-quoted"),
        pytest.param("C:\\dir", "C:\\dir", id="backslash-alone-needs-no-quotes"),
        pytest.param("", '""', id="empty"),
        pytest.param(None, "null", id="none"),
        pytest.param("bell\x07", '"bell\\u0007"', id="control-character"),
    ],
)
def test_logfmt_quoting_and_escaping(capsys: pytest.CaptureFixture[str], value: object, rendered: str) -> None:
    setup_logging("info", "logfmt")
    log.info("m", extra={"fields": {"v": value}})
    [line] = _lines(capsys)
    assert line.endswith(f" v={rendered}")


def test_field_keys_cannot_break_or_shadow_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt")
    log.info("real message", extra={"fields": {"msg": "fake", "bad key=x": 1}})
    [line] = _lines(capsys)
    assert _logfmt_without_ts(line) == (
        'level=info logger=exporter.daemon.scheduler msg="real message" field_msg=fake bad_key_x=1'
    )


def test_err_field_is_the_error_text_unless_an_exception_fills_it(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt")
    log.warning("check failed", extra={"fields": {"err": "connection refused"}})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("crashed", extra={"fields": {"err": "shadow"}})
    plain, with_exception = _lines(capsys)
    assert plain.endswith(' err="connection refused"')
    assert " field_err=shadow err=" in with_exception and "RuntimeError: boom" in with_exception


def _raise_and_log(message: str) -> None:
    try:
        raise RuntimeError(message)
    except RuntimeError:
        log.exception("probe crashed", extra={"fields": {"target": "onprem-ews"}})


def test_exception_goes_into_err_on_one_logfmt_line(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt")
    _raise_and_log("boom")
    [line] = _lines(capsys)
    assert ' msg="probe crashed" target=onprem-ews err="Traceback (most recent call last):\\n' in line
    assert line.endswith('RuntimeError: boom"')


def test_exception_goes_into_err_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("error", "json")
    _raise_and_log("boom")
    [line] = _lines(capsys)
    record = json.loads(line)
    assert record["level"] == "error"
    assert record["err"].startswith("Traceback (most recent call last):\n")
    assert record["err"].endswith("RuntimeError: boom")


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_secrets_are_redacted_everywhere(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    secret = 'p4ss"word\\with escapes'  # quoting/escaping would hide it from a search of the final line
    register_secret(secret)
    register_secret("tok3n")
    setup_logging("info", fmt)
    log.info("login with %s", secret, extra={"fields": {"password": secret, "url": "https://x/?t=tok3n"}})
    _raise_and_log(f"auth failed for {secret}")
    output = capsys.readouterr().err
    assert "p4ss" not in output
    assert "tok3n" not in output
    assert output.count("<redacted>") == 4  # msg, password, url, err
    if fmt == "json":
        first, second = (json.loads(line) for line in output.splitlines())
        assert first["msg"] == "login with <redacted>"
        assert first["password"] == "<redacted>"
        assert first["url"] == "https://x/?t=<redacted>"
        assert second["err"].endswith("RuntimeError: auth failed for <redacted>")


def test_numeric_field_holding_a_secret_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    register_secret("271828")
    setup_logging("info", "json")
    log.info("m", extra={"fields": {"pin": 271828, "count": 7}})
    record = json.loads(capsys.readouterr().err)
    assert record["pin"] == "<redacted>"
    assert record["count"] == 7


def test_redact_helper_and_its_limits() -> None:
    assert redact("nothing registered") == "nothing registered"
    register_secret("abc")  # too short to redact without mangling ordinary text
    register_secret("hunter2")
    register_secret("hunter2hunter2")
    assert redact("abc hunter2hunter2 and hunter2") == "abc <redacted> and <redacted>"
    replace_secrets([])
    assert redact("hunter2") == "hunter2"


def test_register_secret_is_safe_from_many_threads() -> None:
    """Threads released together by a barrier: without the lock, two would build on the same set and the last
    swap in would lose the other's secret. Few enough that each registration's regex stays cheap."""
    secrets = [f"secret-{n:04d}" for n in range(32)]
    start = threading.Barrier(len(secrets))

    def register(secret: str) -> None:
        start.wait(timeout=30)
        register_secret(secret)

    threads = [threading.Thread(target=register, args=(secret,)) for secret in secrets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redact(" ".join(secrets)) == " ".join(["<redacted>"] * len(secrets))


def test_a_reload_redacts_the_secrets_both_configs_share_all_along() -> None:
    """replace_secrets swaps the new set in whole: a line logged during a reload never sees no secrets at all."""
    shared = [f"shared-{n:03d}" for n in range(100)]
    replace_secrets([*shared, "old-secret"])
    reloading = threading.Thread(target=lambda: [replace_secrets([*shared, f"new-{n}"]) for n in range(20)])
    leaked: list[str] = []
    reloading.start()
    while reloading.is_alive():
        if (line := redact(shared[0])) != "<redacted>":
            leaked.append(line)
    reloading.join()
    assert not leaked
    assert redact("old-secret new-19") == "old-secret <redacted>"


@pytest.mark.parametrize(("level", "visible"), [("debug", ["debug", "info"]), ("info", ["info"])])
def test_level_filtering(capsys: pytest.CaptureFixture[str], level: str, visible: list[str]) -> None:
    setup_logging(level, "json")
    log.debug("d")
    log.info("i")
    assert [json.loads(line)["level"] for line in _lines(capsys)] == visible


def test_warn_and_error_levels(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warn", "logfmt")
    log.info("hidden")
    log.warning("w")
    log.critical("c")
    levels = [_logfmt_without_ts(line).split(" ")[0] for line in _lines(capsys)]
    assert levels == ["level=warn", "level=error"]


def test_calling_setup_again_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt")
    setup_logging("info", "json")
    log.info("once")
    [line] = _lines(capsys)
    assert json.loads(line)["msg"] == "once"


@pytest.mark.parametrize(
    ("level", "fmt", "message"),
    [
        ("verbose", "logfmt", "unknown log level 'verbose' (expected one of: debug, info, warn, error)"),
        ("info", "text", "unknown log format 'text' (expected one of: logfmt, json)"),
    ],
)
def test_bad_arguments(level: str, fmt: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        setup_logging(level, fmt)


# --- the token rule: a secret is redacted where it is a token of its own, in every form it travels in ----------

SHORT = "Adm1"  # four characters: the shortest secret that is redacted
PAIR = "CORP\\BEMSAdmin:Adm1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("password Adm1 rejected", "password <redacted> rejected", id="alone"),
        pytest.param("http://svc:Adm1@proxy:3128", "http://svc:<redacted>@proxy:3128", id="userinfo"),
        pytest.param("pw=Adm1&next=1", "pw=<redacted>&next=1", id="form-field"),
        pytest.param('"Adm1"', '"<redacted>"', id="quoted"),
        pytest.param("pw%3DAdm1", "pw%3D<redacted>", id="after-a-percent-escape"),
        pytest.param("CORP\\BEMSAdm1n", "CORP\\BEMSAdm1n", id="inside-a-word-stays-whole"),
        pytest.param("Adm1nistrator xAdm1", "Adm1nistrator xAdm1", id="prefix-and-suffix-of-words"),
        pytest.param("QWRtMQ==", "<redacted>", id="base64"),
    ],
)
def test_a_short_secret_is_redacted_as_a_token_never_inside_words(text: str, expected: str) -> None:
    register_secret(SHORT)
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("secret", "text", "expected"),
    [
        pytest.param("p@ss w0rd!", "http://svc:p%40ss%20w0rd%21@proxy", "http://svc:<redacted>@proxy", id="quote"),
        pytest.param("p@ss w0rd!", "password=p%40ss+w0rd%21", "password=<redacted>", id="quote-plus"),
        pytest.param("!x-Adm1-x!", "a!x-Adm1-x!b", "a<redacted>b", id="edges-that-are-not-word-characters"),
        pytest.param(
            PAIR,
            f"sent {base64.b64encode(PAIR.encode()).decode()} to the proxy",
            "sent <redacted> to the proxy",
            id="base64-of-the-user-password-pair",
        ),
    ],
)
def test_derived_forms_of_a_secret_are_redacted(secret: str, text: str, expected: str) -> None:
    register_secret(secret)
    assert redact(text) == expected


def test_replace_secrets_forgets_the_old_ones() -> None:
    replace_secrets(["old-secret"])
    replace_secrets(["new-secret"])
    assert redact("old-secret new-secret") == "old-secret <redacted>"


NTLM_NEGOTIATE = "TlRMTVNTUAABAAAAMpCI4gAAAAAoAAAAAAAAACgAAAAGAbEdAAAADw=="  # MS-NLMP 4.2.4.1.1 shape
PROSE = "the server offers Basic and NTLM authentication"
HEADER_PROSE = "WWW-Authenticate offers Negotiate, NTLM"
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sub2ZmaWNlMzY1LmNvbSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"Authorization: NTLM {NTLM_NEGOTIATE}", "Authorization: <redacted>", id="authorization-header"),
        pytest.param(
            "{'WWW-Authenticate': 'NTLM TlRMTVNTUAACAAAA', 'Content-Length': '0'}",
            "{'WWW-Authenticate': '<redacted>', 'Content-Length': '0'}",
            id="challenge-in-a-header-dict",
        ),
        pytest.param("proxy-authorization=Basic c3ZjOnB3", "proxy-authorization=<redacted>", id="proxy-header"),
        pytest.param(f"sending Bearer {JWT}", "sending Bearer <redacted>", id="bearer-token"),
        pytest.param(f"token {JWT} cached", "token <redacted> cached", id="bare-jwt"),
        pytest.param("Negotiate YIIGhgYGKwYBBQUCoIIGejCCBnagMDAuBgkqhkiC9xIBAgI=", "Negotiate <redacted>", id="spnego"),
        pytest.param(f"NTLM step output: {NTLM_NEGOTIATE}", "NTLM step output: <redacted>", id="pyspnego-line"),
        pytest.param(
            "SPNEGO step input: oYIBCjCCAQagAwoBAaEMBgorBgEEAYI3AgIK", "SPNEGO step input: <redacted>", id="spnego-line"
        ),
        pytest.param(f"blob={NTLM_NEGOTIATE}", "blob=<redacted>", id="ntlmssp-anywhere"),
        pytest.param(PROSE, PROSE, id="prose-stays"),
        pytest.param(HEADER_PROSE, HEADER_PROSE, id="header-named-in-prose-stays"),
        pytest.param('Basic realm="mail.corp.example.com"', 'Basic realm="mail.corp.example.com"', id="realm-stays"),
    ],
)
def test_protocol_tokens_are_redacted_without_any_registered_secret(text: str, expected: str) -> None:
    assert redact(text) == expected


# --- the NTLM and OAuth libraries at --log.level debug, against the simulator ---------------------------------

# What must never reach a log line: NTLM messages, header values, bearer tokens (JWTs) and Basic credentials.
LEAKS = [
    re.compile(r"TlRMTVNT"),
    re.compile(r"(?i)(authorization|authenticate)[\"']?\s*[:=]\s*[\"']?(?!<redacted>)\S"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    re.compile(r"(?i)\b(basic|bearer|ntlm|negotiate) (?!<redacted>)[A-Za-z0-9+/=._~-]{16,}"),
    re.compile(r"step (input|output): (?!<redacted>)[A-Za-z0-9+/]"),
]


@pytest.mark.parametrize("protocol_debug", [False, True], ids=["default", "protocol-debug"])
async def test_debug_logs_of_real_ntlm_and_oauth_sign_ins_carry_no_token(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str], protocol_debug: bool
) -> None:
    # A timeout that a loaded machine cannot reach: the sign-ins here must succeed (debug logging of every
    # protocol step, MSAL and NTLM in threads), and what is judged is what they log.
    config = load_config(simulator.write_exporter_config(tmp_path / "bems.yml", interval="30s", timeout="30s"))
    replace_secrets(config.secrets())  # as the daemon does at every load
    setup_logging("debug", "logfmt", protocol_debug=protocol_debug)
    targets = config.targets_by_name()
    for target, check in [("onprem-ews", "auth"), ("onprem-autodiscover", "auth"), ("online-ews", "auth"),
                          ("online-graph", "token"), ("online-graph", "graph")]:  # fmt: skip
        result = await run(config, targets[target], check)
        assert result.success, (target, check, result.message)
    output = capsys.readouterr().err
    lines = output.splitlines()
    assert lines, "the checks logged at debug"
    for line in lines:
        for leak in LEAKS:
            assert not leak.search(line), line
    credentials = simulator.credentials
    pair = f"{credentials.onprem_username}:{credentials.onprem_password}"
    for secret in (credentials.onprem_password, credentials.client_secret, base64.b64encode(pair.encode()).decode()):
        assert secret not in output
    loggers = {match.group(1).split(".")[0] for match in re.finditer(r" logger=(\S+) ", output)}
    if protocol_debug:
        # The flag lets them through, redacted: pyspnego's NTLM steps, urllib3's requests, MSAL's cache.
        assert {"spnego", "urllib3", "msal"} <= loggers, loggers
        assert "NTLM step output: <redacted>" in output
    else:
        assert not loggers & set(PROTOCOL_LOGGERS), loggers


def test_protocol_loggers_still_log_warnings_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "logfmt")
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTPS connection")
    logging.getLogger("urllib3.connectionpool").warning("Connection pool is full, discarding connection")
    [line] = _lines(capsys)
    assert "Connection pool is full" in line


def test_protocol_debug_follows_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", "logfmt", protocol_debug=True)
    logging.getLogger("spnego._ntlm").debug("NTLM step output: x")
    logging.getLogger("msal.application").info("Broker enabled? None")
    [line] = _lines(capsys)
    assert "Broker enabled" in line
