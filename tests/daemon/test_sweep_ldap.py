"""A population read from a real OpenLDAP server (a group with nested groups, paged past the size limit) and
swept against the simulator's generated population: the directory stopped mid-sweep is a failing source, and
the sweep goes on with the last good list; restarted, the source is up again."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_clock import FakeClock
from ldap_server import SERVICE_DN, SERVICE_PASSWORD, SUFFIX, group_dn, group_ldif, person_dn, start_slapd

from bems_simulator.pki import CertificateAuthority
from bems_simulator.server import Simulator
from exporter.checks.resources import Resources
from exporter.config import load_config
from exporter.daemon.runner import Limiter
from exporter.daemon.sweep import Sweeps
from exporter.protocol.population_sources import SourceReason

USERS = 1200  # in the BEMS group, through two nested groups
OUTSIDE = 100  # in the directory and the simulator, not in the group
SCOPED_OUT_EVERY, MOVED_EVERY = 50, 100
SALES = range(1, 701)


def _uid(n: int) -> str:
    return f"user{n:06d}"


def _ldif() -> str:
    people = "".join(
        f"dn: {person_dn(_uid(n))}\nobjectClass: inetOrgPerson\nuid: {_uid(n)}\ncn: {_uid(n)}\nsn: {_uid(n)}\n"
        f"mail: {_uid(n)}@corp.example.test\n\n"
        for n in range(1, USERS + OUTSIDE + 1)
    )
    eng = range(SALES.stop, USERS + 1)
    return (
        people
        + group_ldif("bems", [group_dn("sales"), group_dn("eng")])
        + group_ldif("sales", [person_dn(_uid(n)) for n in SALES])
        + group_ldif("eng", [person_dn(_uid(n)) for n in eng])
    )


async def test_the_directory_stopped_mid_sweep_keeps_the_last_good_list(
    simulator: Simulator, tmp_path: Path, fake_clock: FakeClock
) -> None:
    slapd = start_slapd(tmp_path / "slapd", _ldif(), CertificateAuthority.create("BEMS directory CA"))
    try:
        simulator.generate_population(USERS + OUTSIDE, scoped_out_every=SCOPED_OUT_EVERY, moved_every=MOVED_EVERY)
        password = tmp_path / "bind-password"
        password.write_text(SERVICE_PASSWORD)
        path = simulator.write_exporter_config(tmp_path / "bems.yml", interval="1h", timeout="5s")
        config = yaml.safe_load(path.read_text())
        config["populations"] = {"bems-users": {
            "ldap": {"url": slapd.ldaps_url, "bind_dn": SERVICE_DN, "password_file": str(password), "base": SUFFIX,
                     "group": group_dn("bems"), "directory": "generic", "ca_file": slapd.ca_file, "page_size": 250},
            "sweep_interval": "10m", "refresh_interval": "1m",
        }}  # fmt: skip
        config["limits"] = {"per_credential_requests_per_minute": 600}
        for target in config["targets"]:
            if target["name"] == "onprem-ews":
                target["population"] = "bems-users"
        path.write_text(yaml.safe_dump(config))
        loaded = load_config(path)

        resources = Resources(fake_clock.monotonic)
        sweeps = Sweeps(resources)
        sweeps.apply(loaded, Limiter(loaded))
        sweep = sweeps.sweeps[("onprem-ews", "bems-users")]
        sweeps.start()
        try:
            await fake_clock.advance(1)
            source = sweeps.sources.state("bems-users")
            assert (source.up, len(source.members)) == (True, USERS)  # 1,200 through nesting, past 500 a page
            while len(sweep.state.done) < USERS // 3:
                await fake_clock.advance(5)
            slapd.stop()
            await fake_clock.advance(90)  # past refresh_interval: read again, refused
            assert (source.up, source.reason) == (False, SourceReason.UNREACHABLE)
            assert len(source.members) == USERS  # the last good list, still swept
            while not sweep.state.last_complete:
                await fake_clock.advance(5)
            slapd.start()
            await fake_clock.advance(65)
            assert source.up is True
        finally:
            await sweeps.stop()
            await resources.close()
    finally:
        slapd.stop()
    reasons = {mailbox: failing.reason for mailbox, failing in sweep.state.failing.items()}
    expected = {
        f"{_uid(n)}@corp.example.test": "moved" if n % MOVED_EVERY == 0 else "impersonation_denied"
        for n in range(1, USERS + 1)
        if n % SCOPED_OUT_EVERY == 0 or n % MOVED_EVERY == 0
    }
    assert reasons == expected
    assert len(sweep.state.history) == 1 and sweep.state.history[0][1:] == (USERS, len(expected))


@pytest.fixture(autouse=True)
def _generous_timeout(request: pytest.FixtureRequest) -> None:
    request.node.add_marker(pytest.mark.timeout(300))  # 1,200 checks against the simulator on a loaded machine
