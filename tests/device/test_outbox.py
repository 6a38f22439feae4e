"""The outbox: owed in the event row's transaction, delivered in order, marked per output,
given up after [outbox] max_age_s, kept across a restart."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from device import outbox
from device.config import Config
from device.gallery import Gallery
from device.outputs import DeliveryError, Output, Outputs, RejectedError, make_test_event

from .brokers import wait_for


def event(n: int) -> dict[str, Any]:
    e = make_test_event()
    e.update(frame=n, label=f"p{n}", test=False)
    return e


class Recorder(Output):
    """An output that records what it got; `fail` makes its next sends fail."""

    kind = "recorder"

    def __init__(self, name: str = "rec", fail: int = 0, reject: bool = False) -> None:
        self.name = name
        self.got: list[str] = []
        self.fail = fail
        self.reject = reject

    def send(self, event: dict[str, Any], crop_jpeg: bytes | None) -> str:
        if self.reject:
            raise RejectedError("HTTP 400 Bad Request: no")
        if self.fail:
            self.fail -= 1
            raise DeliveryError("receiver away")
        self.got.append(event["id"])
        return "ok"


def fast(**outbox_changes: float) -> Config:
    return Config().replace("outbox", retry_initial_s=0.01, retry_max_s=0.05, **outbox_changes)


def write(gallery: Gallery, outputs: Outputs, ev: dict[str, Any]) -> None:
    """What the event log does: the event row and its outbox rows in one transaction."""
    with gallery.transaction("logging an event") as conn:
        gallery.log_event(ev)
        outputs.enqueue(conn, ev)
    outputs.notify()


def rows(db: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT output, event_id, status FROM outbox ORDER BY seq").fetchall()


def test_owed_in_the_event_rows_transaction(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Gallery(db) as gallery, Outputs(fast(), db, outputs=[Recorder("a"), Recorder("b")]) as o:
        ev = event(1)
        write(gallery, o, ev)
        assert [(r[0], r[1]) for r in rows(db)] == [("a", ev["id"]), ("b", ev["id"])]
        # A failure after the outbox rows (here: inside the same transaction) leaves neither the
        # event row nor its outbox rows.
        with pytest.raises(RuntimeError), gallery.transaction() as conn:
            gallery.log_event(event(2))
            o.enqueue(conn, event(2))
            raise RuntimeError("power cut")
        assert len(gallery.events()) == 1 and len(rows(db)) == 2
        # The same event twice is owed once.
        write(gallery, o, ev)
        assert len(rows(db)) == 2


def test_delivered_in_order_and_marked_per_output(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    a, b = Recorder("a"), Recorder("b", fail=3)
    with Gallery(db) as gallery, Outputs(fast(), db, outputs=[a, b]) as o:
        o.start()
        evs = [event(i) for i in range(5)]
        for ev in evs:
            write(gallery, o, ev)
        ids = [e["id"] for e in evs]
        wait_for(lambda: a.got == ids and b.got == ids, what="both outputs")
        wait_for(lambda: all(r[2] == "delivered" for r in rows(db)), what="rows marked")
        stats = o.stats()
        assert stats["a"]["delivered"] == 5 and stats["a"]["failed"] == 0
        assert stats["b"]["delivered"] == 5 and stats["b"]["failed"] == 3
        assert stats["b"]["backlog"] == 0 and stats["b"]["state"] == "ok"


def test_rejected_is_not_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "g.db"
    r = Recorder("r", reject=True)
    with Gallery(db) as gallery, Outputs(fast(), db, outputs=[r]) as o:
        o.start()
        write(gallery, o, event(1))
        wait_for(lambda: rows(db)[0][2] == "rejected", what="the row rejected")
        assert o.stats()["r"]["rejected"] == 1 and o.stats()["r"]["failed"] == 0
    assert "HTTP 400 Bad Request: no" in caplog.text


def test_given_up_after_max_age(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "g.db"
    r = Recorder("r")
    with Gallery(db), Outputs(fast(max_age_s=60), db, outputs=[r]) as o:
        with sqlite3.connect(db) as conn:  # an event owed for two minutes (the device was off)
            old, new = event(1), event(2)
            outbox.enqueue(conn, o.owed, old["id"], "{}", now=time.time() - 120)
            outbox.enqueue(conn, o.owed, new["id"], json.dumps(new))
        caplog.set_level(logging.WARNING)
        o.start()
        wait_for(
            lambda: [x[2] for x in rows(db)] == ["expired", "delivered"], what="the rows marked"
        )
        assert r.got == [new["id"]]
        assert o.stats()["r"]["expired"] == 1
        assert "1 given up" in o.status_text()
    assert f"gave up event {old['id']}" in caplog.text


def test_backlog_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    down = Recorder("r", fail=10**6)
    with Gallery(db) as gallery:
        with Outputs(fast(), db, outputs=[down]) as o:
            o.start()
            evs = [event(i) for i in range(3)]
            for ev in evs:
                write(gallery, o, ev)
            wait_for(lambda: o.stats()["r"]["failed"] >= 2, what="failed attempts")
            assert o.stats()["r"]["backlog"] == 3 and "3 queued" in o.status_text()
        up = Recorder("r")
        with Outputs(fast(), db, outputs=[up]) as o2:
            o2.start()
            wait_for(lambda: up.got == [e["id"] for e in evs], what="the backlog after restart")


def test_orphans_and_finished_rows_pruned(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with Gallery(db), sqlite3.connect(db, isolation_level=None) as conn:
        outbox.ensure_schema(conn)
        gone = [outbox.Owed("gone")]
        outbox.enqueue(conn, gone, "old", "{}", now=time.time() - 10_000)
        outbox.enqueue(conn, gone, "young", "{}")
        outbox.enqueue(conn, [outbox.Owed("r")], "done", "{}")
        seq = conn.execute("SELECT seq FROM outbox WHERE event_id = 'done'").fetchone()[0]
        outbox.finish(conn, seq, outbox.DELIVERED, now=time.time() - 2 * outbox.KEEP_FINISHED_S)
        assert outbox.drop_orphans(conn, ["r"], max_age_s=3600) == {"gone": 1}
        assert outbox.prune_finished(conn, "r") == 1
        left = [r[0] for r in conn.execute("SELECT event_id FROM outbox")]
        assert left == ["young"]
