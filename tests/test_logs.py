"""Tests for exporter.logs: go-kit style logfmt/json lines, levels, and secret redaction."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator

import pytest

from exporter.logs import clear_secrets, redact, register_secret, setup_logging

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

log = logging.getLogger("exporter.scheduler")


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
    clear_secrets()


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
        'level=info logger=exporter.scheduler msg="probe finished" target=onprem-ews check=tls ok=true n=3'
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
        "logger": "exporter.scheduler",
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
        'level=info logger=exporter.scheduler msg="real message" field_msg=fake bad_key_x=1'
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
    clear_secrets()
    assert redact("hunter2") == "hunter2"


def test_register_secret_is_safe_from_many_threads() -> None:
    secrets = [f"secret-{n:04d}" for n in range(200)]
    threads = [threading.Thread(target=register_secret, args=(secret,)) for secret in secrets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert redact(" ".join(secrets)) == " ".join(["<redacted>"] * len(secrets))


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
