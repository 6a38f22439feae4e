"""The events table: one row per recognition event, field for field its JSON line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..events import Event, new_event_id
from .db import Database
from .records import product_name, utc_now

MAX_EVENTS = 100_000  # the events table is trimmed to the most recent rows


class EventLog(Database):
    _events_since_trim: int  # rows logged since the last trim (Gallery.__init__)

    # --- events --------------------------------------------------------------------------------

    def log_event(self, event: Event | Mapping[str, Any]) -> None:
        """Store one event (an `Event`, or the dict of its JSON line) as a row."""
        if isinstance(event, Event):
            event = event.to_dict()
        box, crop_box = event.get("box"), event.get("crop_box")
        with self._failures("logging a recognition event"):
            self.conn.execute(
                "INSERT INTO events(ts, label, status, score, runner_up, runner_up_score, box, "
                "latency_ms, model_id, best, crop_box, frame, crop_file, uid) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    event.get("time") or utc_now(),
                    event.get("label"),
                    event.get("status", ""),
                    event.get("score"),
                    event.get("runner_up"),
                    event.get("runner_up_score"),
                    json.dumps(list(box)) if box is not None else None,
                    event.get("latency_ms"),
                    event.get("model_id"),
                    event.get("best"),
                    json.dumps(list(crop_box)) if crop_box is not None else None,
                    event.get("frame"),
                    event.get("crop_file"),
                    event.get("id") or new_event_id(),
                ),
            )
            self._events_since_trim += 1
            if self._events_since_trim >= 1000:
                self._events_since_trim = 0
                self.conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                    (MAX_EVENTS,),
                )

    def events(
        self,
        limit: int = 100,
        *,
        offset: int = 0,
        label: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """The last `limit` events (skipping the `offset` newest), oldest first, with the keys of
        the JSON lines `run` prints (and "id"); only those of `label` / `status` when given."""
        where, params = [], []
        if label is not None:
            where.append("label = ?")
            params.append(product_name(label))
        if status is not None:
            where.append("status = ?")
            params.append(status)
        sql = (
            "SELECT uid AS id, ts AS time, label, status, score, best, runner_up, "
            "runner_up_score, box, crop_box, latency_ms, frame, model_id, crop_file FROM events"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY events.id DESC LIMIT ? OFFSET ?"
        )
        with self._failures("reading the events"):
            cur = self.conn.execute(sql, (*params, int(limit), int(offset)))
            cols = [d[0] for d in cur.description]
            rows = cur.fetchall()
        out = []
        for row in rows:
            item = dict(zip(cols, row, strict=True))
            for key in ("box", "crop_box"):
                item[key] = json.loads(item[key]) if item[key] else None
            if item["crop_file"] is None:  # as `run` prints it: the key only when a crop was saved
                del item["crop_file"]
            out.append(item)
        return out[::-1]
