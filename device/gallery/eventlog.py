"""The events table: one row per recognition event, field for field its JSON line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from ..events import Event, new_event_id
from .db import Database
from .records import product_name, utc_now


class EventLog(Database):
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

    def trim_events(self, max_events: int, max_age_days: float = 0.0) -> int:
        """Delete all but the newest `max_events` event rows (0: no limit) and the rows older
        than `max_age_days` (0: no limit); how many were deleted. Judged from the table itself,
        not from a count kept by this process, so a service restarted often is trimmed too
        ([gallery] max_events, max_age_days; applied by the service, device/service.py)."""
        deleted = 0
        with self.transaction("trimming the events table") as c:
            if max_events:
                deleted += c.execute(
                    "DELETE FROM events WHERE id <= "
                    "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (max_events,),
                ).rowcount
            if max_age_days:
                cutoff = datetime.now(timezone.utc) - timedelta(days=max_age_days)
                # Times are stored as utc_now() writes them: ISO text, which sorts by time.
                stamp = cutoff.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                deleted += c.execute("DELETE FROM events WHERE ts < ?", (stamp,)).rowcount
        return deleted

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
