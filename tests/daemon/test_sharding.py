"""Scale-out: N replicas with --shard=i/N split the work so that every check runs exactly once."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from exporter.checks import checks_for
from exporter.config import Config, load_config, parse_shard, shard_of


def estate(tmp_path: Path, targets: int = 60, mailboxes: int = 5) -> Config:
    secret = tmp_path / "pw"
    secret.write_text("not-used")
    data = {
        "scenario": "onprem-bems-hybrid",
        "credentials": {"svc": {"username": "CORP\\svc", "password_file": str(secret)}},
        "targets": [
            {"name": f"site{i}-ews", "kind": "ews", "exchange": "onprem", "credential": "svc", "auth": ["ntlm"],
             "url": f"https://mail{i}.corp.example.com/EWS/Exchange.asmx",
             "mailboxes": [f"user{j}@site{i}.corp.example.com" for j in range(mailboxes)]}
            for i in range(targets)
        ],
    }  # fmt: skip
    path = tmp_path / "estate.yml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def units(config: Config) -> Counter[tuple[str, ...]]:
    """Every unit of work a replica runs: (target, check) for target-level checks, plus the mailbox for
    per-mailbox ones."""
    found: Counter[tuple[str, ...]] = Counter()
    for target in config.targets:
        for check in checks_for(config, target):
            if check.per_mailbox:
                found.update((target.name, check.name, mailbox) for mailbox in target.mailboxes)
            else:
                found[(target.name, check.name)] += 1
    return found


def shard(config: Config, index: int, count: int) -> Config:
    return config.model_copy(update={"shard": (index, count)}).sharded()


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_shards_cover_every_unit_exactly_once(tmp_path: Path, count: int) -> None:
    config = estate(tmp_path)
    everything = units(config)
    together: Counter[tuple[str, ...]] = Counter()
    for index in range(count):
        together.update(units(shard(config, index, count)))
    assert together == everything  # the union is the whole, and nothing twice
    assert max(together.values()) == 1


@pytest.mark.parametrize("count", [2, 3, 4, 6])
def test_adding_a_shard_moves_about_one_nth(tmp_path: Path, count: int) -> None:
    config = estate(tmp_path, targets=200)
    before = {u: i for i in range(count) for u in units(shard(config, i, count))}
    after = {u: i for i in range(count + 1) for u in units(shard(config, i, count + 1))}
    moved = sum(1 for u in before if before[u] != after[u]) / len(before)
    expected = 1 / (count + 1)  # only what the new shard wins moves; nothing moves between old shards
    assert 0.6 * expected < moved < 1.4 * expected, moved
    assert all(after[u] == count for u in before if before[u] != after[u])


def test_the_split_is_even_and_stable(tmp_path: Path) -> None:
    config = estate(tmp_path, targets=200)
    sizes = [sum(units(shard(config, i, 4)).values()) for i in range(4)]
    assert max(sizes) < 1.25 * min(sizes), sizes
    assert [shard_of("site7-ews", 4) for _ in range(3)] == [shard_of("site7-ews", 4)] * 3


@pytest.mark.parametrize("text", ["3/3", "1", "-1/2", "a/b", "0/0", "1/2/3"])
def test_bad_shard_values(text: str) -> None:
    with pytest.raises(ValueError, match="is not i/N"):
        parse_shard(text)


def test_shard_flag_errors_and_config_key(tmp_path: Path) -> None:
    config = estate(tmp_path, targets=4)
    path = tmp_path / "estate.yml"
    proc = subprocess.run([sys.executable, "-m", "exporter", "--config.file", str(path), "--shard", "2/2"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 2 and "'2/2' is not i/N with 0 <= i < N" in proc.stderr
    data = yaml.safe_load(path.read_text()) | {"shard": "1/2"}
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).shard == (1, 2)
    assert config.shard is None


def test_replicas_plan_disjoint_shares_and_no_foreign_requirements(tmp_path: Path) -> None:
    from exporter.daemon import scenario
    from exporter.daemon.app import Exporter
    from exporter.daemon.store import ResultStore

    path = tmp_path / "estate.yml"
    estate(tmp_path, targets=12)
    planned = []
    for index in range(3):
        replica = Exporter(str(path), shard=(index, 3))
        replica.load()
        planned.append({(t, c) for t, checks in replica.store.checks.items() for c in checks})
        # A replica judges only the requirements it has checks for: the other sides are not "not_configured".
        empty = ResultStore(targets=replica.config.targets_by_name(), checks=replica.store.checks)
        assert all(v.reason != scenario.NOT_CONFIGURED for v in scenario.evaluate(replica.config, empty))
    whole = Exporter(str(path))
    whole.load()
    assert set().union(*planned) == {(t, c) for t, checks in whole.store.checks.items() for c in checks}
