"""The audit log: admin actions recorded in their own transaction, by whom, and every kind of tampering caught."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
from sklearn.datasets import load_iris
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.errors import IdenticalVersion, ModelNotFound, PromotionRefused
from shipyard.registry import Registry
from shipyard.registry.database import Database
from shipyard.registry.store import SQLStore
from shipyard.rollout import actions
from shipyard.rollout.policy import Arm, TrafficPolicy
from shipyard.rollout.store import TrafficStore
from shipyard.security import audit
from shipyard.security.audit import GENESIS, AuditEvent, AuditLog, record, record_config
from shipyard.security.principal import Principal, acting_as
from shipyard.security.tables import audit_head_t, audit_t
from shipyard.signature import Signature, TensorSpec

OPS = Principal("ops-key", "key", frozenset({"admin"}), key_id="k1")


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'registry.db'}")
    try:
        yield db
    finally:
        db.close()


def fill(database: Database, n: int) -> list[AuditEvent]:
    return [record(database, "alias.set", f"m@a{i}", details={"version": i}) for i in range(1, n + 1)]


def sql(database: Database, statement: Any) -> None:
    with database.transaction() as conn:
        conn.execute(statement)


def version_record(name: str, digest: str, **extra: Any) -> dict[str, Any]:
    sig = Signature(inputs=(TensorSpec("x", "FP64", (-1,)),), outputs=(TensorSpec("y", "FP64", (-1,)),),
                    format="columns")
    return {"name": name, "flavor": "sklearn", "digest": digest, "files": {"model.skops": digest},
            "signature": sig.to_dict(), **extra}


def entries(database: Database) -> list[AuditEvent]:
    return list(AuditLog(database).entries())


# -- the chain ------------------------------------------------------------------------------------


def test_an_intact_log_verifies_and_reports_its_head(database: Database) -> None:
    events = fill(database, 5)

    report = AuditLog(database).verify()

    assert report.ok and report.reason == "" and report.first_bad is None
    assert (report.checked, report.head_seq, report.head_hash) == (5, 5, events[-1].hash)
    assert AuditLog(database).head() == (5, events[-1].hash)
    assert [e.prev_hash for e in events] == [GENESIS] + [e.hash for e in events[:-1]]


def test_an_empty_log_verifies_at_the_genesis_hash(database: Database) -> None:
    report = AuditLog(database).verify()
    assert report.ok and (report.checked, report.head_seq, report.head_hash) == (0, 0, GENESIS)
    fill(database, 1)
    assert AuditLog(database).verify(expect=(0, GENESIS)).ok
    assert not AuditLog(database).verify(expect=(0, "1" * 64)).ok


def test_an_expected_entry_that_is_still_there_verifies(database: Database) -> None:
    events = fill(database, 4)
    fill(database, 2)
    assert AuditLog(database).verify(expect=(4, events[3].hash)).ok


def test_an_edited_target_is_caught_at_that_entry(database: Database) -> None:
    fill(database, 5)
    sql(database, audit_t.update().where(audit_t.c.seq == 3).values(target="m@somewhere-else"))

    report = AuditLog(database).verify()

    assert not report.ok and report.first_bad == 3 and report.checked == 2
    assert "edited" in report.reason


def test_an_edit_with_its_own_hash_recomputed_is_caught_at_the_next_entry(database: Database) -> None:
    events = fill(database, 5)
    e = events[2]
    forged = audit.entry_hash(e.seq, e.at, "mallory", e.source, e.action, e.target, e.outcome, e.details, e.prev_hash)
    sql(database, audit_t.update().where(audit_t.c.seq == 3).values(actor="mallory", hash=forged))

    report = AuditLog(database).verify()

    assert not report.ok and report.first_bad == 4
    assert "prev_hash is not entry 3's hash" in report.reason


def test_a_deleted_middle_entry_is_caught_as_missing(database: Database) -> None:
    fill(database, 5)
    sql(database, audit_t.delete().where(audit_t.c.seq == 3))

    report = AuditLog(database).verify()

    assert not report.ok and report.first_bad == 3 and "entry 3 is missing" in report.reason


def test_a_deleted_last_entry_is_caught_by_the_head(database: Database) -> None:
    fill(database, 5)
    sql(database, audit_t.delete().where(audit_t.c.seq == 5))

    report = AuditLog(database).verify()

    assert not report.ok and report.first_bad == 5 and "cut off the end" in report.reason


def test_the_end_cut_off_with_the_head_rolled_back_is_caught_only_with_an_expected_entry(
    database: Database
) -> None:
    events = fill(database, 5)
    noted = (5, events[-1].hash)  # what `shipyard audit verify` printed, kept in a ticket
    sql(database, audit_t.delete().where(audit_t.c.seq == 5))
    sql(database, audit_head_t.update().values(seq=4, hash=events[3].hash))

    assert AuditLog(database).verify().ok  # consistent: the chain alone cannot tell
    report = AuditLog(database).verify(expect=noted)

    assert not report.ok and report.first_bad == 5 and "not in the log" in report.reason


def test_a_rewritten_history_is_caught_by_an_expected_entry(database: Database) -> None:
    events = fill(database, 4)
    noted = (2, events[1].hash)
    # rewrite from entry 2 on, every hash and the head recomputed: only the noted hash betrays it
    with database.transaction() as conn:
        conn.execute(audit_t.delete().where(audit_t.c.seq >= 2))
        conn.execute(audit_head_t.update().values(seq=1, hash=events[0].hash))
        for i in (2, 3, 4):
            audit.append(conn, "alias.set", f"m@forged{i}")

    assert AuditLog(database).verify().ok
    report = AuditLog(database).verify(expect=noted)

    assert not report.ok and report.first_bad == 2 and "rewritten" in report.reason


def test_two_entries_with_their_seq_swapped_are_caught(database: Database) -> None:
    fill(database, 5)
    sql(database, audit_t.update().where(audit_t.c.seq == 2).values(seq=-1))
    sql(database, audit_t.update().where(audit_t.c.seq == 3).values(seq=2))
    sql(database, audit_t.update().where(audit_t.c.seq == -1).values(seq=3))

    report = AuditLog(database).verify()

    assert not report.ok and report.first_bad == 2


def test_an_entry_appended_past_the_head_is_caught(database: Database) -> None:
    events = fill(database, 3)
    e = events[-1]
    sql(database, audit_t.insert().values(seq=4, at=e.at, actor="x", source="y", action="alias.set", target="m@b",
                                          outcome="ok", details=None, prev_hash=e.hash,
                                          hash=audit.entry_hash(4, e.at, "x", "y", "alias.set", "m@b", "ok", None,
                                                                e.hash)))
    report = AuditLog(database).verify()
    assert not report.ok and report.first_bad == 4 and "past the head" in report.reason


def test_verify_reads_in_pages_and_finds_the_same(database: Database) -> None:
    fill(database, 7)
    assert AuditLog(database, page_size=2).verify().checked == 7
    sql(database, audit_t.update().where(audit_t.c.seq == 6).values(outcome="failed"))
    report = AuditLog(database, page_size=2).verify()
    assert not report.ok and report.first_bad == 6 and report.checked == 5


# -- reading --------------------------------------------------------------------------------------


def test_read_is_newest_first_and_filters(database: Database) -> None:
    with acting_as(OPS, "10.0.0.7"):
        record(database, "model.register", "fraud:1")
        record(database, "alias.set", "fraud@champion")
    record(database, "alias.delete", "fraud@old")
    record(database, "rollout.change", "churn")
    record(database, "alias.set", "fraudster@champion")
    log = AuditLog(database)

    assert [e.seq for e in log.read()] == [5, 4, 3, 2, 1]
    assert [e.seq for e in log.read(limit=2)] == [5, 4]
    assert [e.target for e in log.read(target="fraud")] == ["fraud@old", "fraud@champion", "fraud:1"]
    assert [e.action for e in log.read(action="alias")] == ["alias.set", "alias.delete", "alias.set"]
    assert [e.seq for e in log.read(action="alias.set")] == [5, 2]
    assert [e.seq for e in log.read(actor="ops-key")] == [2, 1]
    assert [e.seq for e in log.read(after_seq=3)] == [5, 4]
    everything = log.read()
    middle = everything[2].at
    assert all(e.at >= middle for e in log.read(since=middle)) and len(log.read(since=middle)) >= 3
    assert all(e.at < middle for e in log.read(until=middle))
    assert [e.seq for e in AuditLog(database, page_size=2).entries(after_seq=1)] == [2, 3, 4, 5]


# -- what is recorded, by whom ------------------------------------------------------------------------


def test_registration_and_alias_moves_record_one_entry_each_with_the_requests_actor(database: Database) -> None:
    store = SQLStore(database)
    with acting_as(OPS, "10.0.0.7"):
        v1 = store.add_version(version_record("fraud", "a" * 64))
        store.add_version(version_record("fraud", "b" * 64))
        store.set_alias("fraud", "champion", 1, actor="ops-key", note="first")
        store.set_alias("fraud", "champion", 2)
        store.rollback_alias("fraud", "champion")
        store.delete_alias("fraud", "champion")

    got = entries(database)

    assert [(e.action, e.target) for e in got] == [
        ("model.register", "fraud:1"), ("model.register", "fraud:2"), ("alias.set", "fraud@champion"),
        ("alias.set", "fraud@champion"), ("alias.rollback", "fraud@champion"), ("alias.delete", "fraud@champion")]
    assert {(e.actor, e.source, e.outcome) for e in got} == {("ops-key", "10.0.0.7", "ok")}
    assert got[0].details == {"flavor": "sklearn", "digest": v1.digest, "files": 1}
    assert got[2].details == {"previous": None, "version": 1, "note": "first"}
    assert got[3].details == {"previous": 1, "version": 2, "note": None}
    assert got[4].details == {"previous": 2, "version": 1, "note": None}
    assert got[5].details == {"previous": 1, "version": None, "note": None}
    assert AuditLog(database).verify().ok


def test_outside_a_request_the_actor_is_the_os_user_on_the_cli(database: Database) -> None:
    import getpass

    SQLStore(database).add_version(version_record("fraud", "a" * 64))
    [e] = entries(database)
    assert e.actor == getpass.getuser() and e.source.startswith("cli@")


def test_an_identical_registration_records_the_version_it_matched(database: Database) -> None:
    store = SQLStore(database)
    store.add_version(version_record("fraud", "a" * 64))
    with pytest.raises(IdenticalVersion):
        store.add_version(version_record("fraud", "a" * 64), allow_identical=False)

    last = entries(database)[-1]

    assert (last.action, last.target, last.outcome) == ("model.register", "fraud:1", "ok")
    assert last.details is not None and last.details["identical_to"] == 1
    assert [v.version for v in store.list_versions("fraud")] == [1]


def test_failed_actions_record_nothing(database: Database) -> None:
    store = SQLStore(database)
    store.add_version(version_record("fraud", "a" * 64))
    before = AuditLog(database).head()

    with pytest.raises(ModelNotFound):
        store.set_alias("fraud", "champion", 7)
    with pytest.raises(sa.exc.StatementError):  # a record the JSON column cannot hold: the insert raises
        store.add_version(version_record("fraud", "b" * 64, tags={"x": object()}))
    with pytest.raises(ModelNotFound):
        store.delete_alias("fraud", "champion")

    assert AuditLog(database).head() == before
    assert [v.version for v in store.list_versions("fraud")] == [1]
    assert AuditLog(database).verify().ok


def test_rollout_changes_and_deletion_are_recorded_with_revision_kind_arms_and_reason(database: Database) -> None:
    traffic = TrafficStore(database)
    policy = TrafficPolicy("fraud", (Arm("champion", "champion", 90.0), Arm("challenger", "2", 10.0)))
    with acting_as(OPS, "10.0.0.7"):
        traffic.put(policy, reason="a/b test")
        traffic.put(policy.with_weights({"champion": 50.0, "challenger": 50.0}), reason="even split")
        traffic.delete("fraud", reason="done")

    got = entries(database)

    assert [(e.action, e.target, e.actor) for e in got] == [
        ("rollout.change", "fraud", "ops-key"), ("rollout.change", "fraud", "ops-key"),
        ("rollout.delete", "fraud", "ops-key")]
    first = got[0].details
    assert first is not None and (first["revision"], first["kind"], first["reason"]) == (1, "split", "a/b test")
    assert [(a["name"], a["target"], a["weight"]) for a in first["arms"]] == [
        ("champion", "champion", 90.0), ("challenger", "2", 10.0)]
    assert got[1].details is not None and got[1].details["revision"] == 2
    assert got[2].details is not None and (got[2].details["revision"], got[2].details["reason"]) == (2, "done")


@pytest.fixture(scope="module")
def iris_models() -> dict[str, Any]:
    X, y = load_iris(return_X_y=True, as_frame=True)
    X.columns = ["a", "b", "c", "d"]
    held = np.zeros(len(X), dtype=bool)
    held[::3] = True
    return {"X": X[~held], "X_hold": X[held], "y_hold": y[held],
            "good": LogisticRegression(max_iter=1000).fit(X[~held], y[~held]),
            "bad": DummyClassifier(strategy="most_frequent").fit(X[~held], y[~held])}


def test_a_refused_promotion_is_recorded_once_and_the_alias_stays(tmp_path: Path, iris_models: dict[str, Any]) -> None:
    registry = Registry.from_settings(Settings(home=tmp_path / "home"))
    try:
        X: pd.DataFrame = iris_models["X"]
        registry.register(iris_models["good"], "iris", sample=X.head(5), alias="champion",
                          holdout=(iris_models["X_hold"], iris_models["y_hold"]))
        registry.register(iris_models["bad"], "iris", sample=X.head(5))
        traffic = TrafficStore(registry.database)
        policy = TrafficPolicy("iris", (Arm("champion", "champion", 90.0), Arm("challenger", "2", 10.0)))
        actions.start(traffic, registry, policy)
        head = AuditLog(registry.database).head()

        with acting_as(OPS, "10.0.0.7"), pytest.raises(PromotionRefused):
            actions.promote(traffic, registry, "iris")

        [refused] = AuditLog(registry.database).read(after_seq=head[0])
        assert registry.aliases("iris")["champion"] == 1
    finally:
        registry.close()
    assert (refused.action, refused.target, refused.outcome) == ("alias.set", "iris@champion", "refused")
    assert (refused.actor, refused.source) == ("ops-key", "10.0.0.7")
    assert refused.details is not None and (refused.details["previous"], refused.details["version"]) == (1, 2)
    assert {g["name"]: g["passed"] for g in refused.details["gates"]}["holdout"] is False


def test_config_is_recorded_only_when_it_changed_with_secrets_masked(database: Database, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, registry_url="postgresql://u:hunter2@db/shipyard")

    first = record_config(database, settings)
    again = record_config(database, settings)
    changed = record_config(database, replace(settings, max_queue=512))

    assert first is not None and first.action == "config.change" and first.target == "server"
    assert first.details is not None and first.details["changed"] is None
    assert "hunter2" not in first.details["yaml"] and "max_queue: 256" in first.details["yaml"]
    assert again is None
    assert changed is not None and changed.details is not None and changed.details["changed"] == ["max_queue"]
    assert changed.details["sha256"] != first.details["sha256"]
    assert record_config(database, replace(settings, max_queue=512)) is None
    assert len(entries(database)) == 2
