"""The limiter: a global bound on checks in flight, a per-credential bound on requests as one account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from exporter.config import Config, load_config
from exporter.daemon.runner import Limiter

pytestmark = pytest.mark.asyncio(loop_scope="module")


def limited_config(tmp_path: Path, global_concurrency: int, per_credential_concurrency: int) -> Config:
    data = {
        "scenario": "onprem-bems-hybrid",
        "credentials": {
            "bemsadmin": {"username": "CORP\\BEMSAdmin", "password": "secret"},
            "other": {"username": "CORP\\Other", "password": "secret"},
        },
        "limits": {"global_concurrency": global_concurrency, "per_credential_concurrency": per_credential_concurrency},
        "targets": [
            {"name": "ews", "kind": "ews", "exchange": "onprem", "url": "https://mail.contoso.test/EWS/Exchange.asmx",
             "credential": "bemsadmin", "auth": ["basic"]},
        ],
    }  # fmt: skip
    path = tmp_path / "bems.yml"
    path.write_text(yaml.safe_dump(data))
    return load_config(str(path))


class Held:
    """Work that runs until released, and says whether it has started."""

    def __init__(self) -> None:
        self.started = False
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.started = True
        await self.release.wait()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# Each case: the global and per-credential bounds, the credentials of checks already running or queued (each held
# until the end), then the credential of one more check, and whether it starts at once.
@pytest.mark.parametrize(
    ("global_slots", "per_credential", "before", "then", "starts"),
    [
        (2, 1, ["bemsadmin", "bemsadmin"], None, True),  # the second bemsadmin check waits outside the global bound
        (2, 1, ["bemsadmin", "bemsadmin"], "other", True),  # so another account's check still runs
        (2, 1, ["bemsadmin", "bemsadmin"], "bemsadmin", False),  # and a third of the busy account waits too
        (2, 2, ["bemsadmin", None], None, False),  # two checks in flight: the global bound is full
        (2, 2, ["bemsadmin", "other"], "other", False),  # whatever account they sign in as
        (3, 2, ["bemsadmin", "bemsadmin"], "bemsadmin", False),  # the account's own bound
    ],
    ids=[
        "credential-queue-leaves-global-slot",
        "other-account-runs",
        "same-account-waits",
        "global-bound",
        "global-bound-across-accounts",
        "per-credential-bound",
    ],
)
async def test_a_check_runs_when_both_of_its_bounds_have_room(
    tmp_path: Path,
    global_slots: int,
    per_credential: int,
    before: list[str | None],
    then: str | None,
    starts: bool,
) -> None:
    limiter = Limiter(limited_config(tmp_path, global_slots, per_credential))
    earlier = [Held() for _ in before]
    tasks = [
        asyncio.create_task(limiter.run(credential, work)) for credential, work in zip(before, earlier, strict=True)
    ]
    await settle()
    last = Held()
    tasks.append(asyncio.create_task(limiter.run(then, last)))
    await settle()
    try:
        assert last.started is starts
    finally:
        for work in [*earlier, last]:
            work.release.set()
        await asyncio.gather(*tasks)
    assert last.started  # every queued check runs once the slots are free
    assert limiter.in_flight == {credential: 0 for credential in {*before, then} - {None}}
