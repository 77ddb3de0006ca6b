"""Telemetry retention and downsampling.

Raw windows live ``raw_retention_s`` (2 days); older ones are merged per device, release, reference and
hour into ``telemetry_rollups`` in the same transaction that deletes them, so no window is ever counted
twice or lost; rollups live ``rollup_retention_s`` (30 days).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import delete, select

from edgefleet.errors import EdgefleetError
from edgefleet.server._audit import audit
from edgefleet.server._fleet_models import TelemetryRollup
from edgefleet.server._fleetview import ACTOR, FleetQueries, release_of
from edgefleet.server._models import Device, TelemetryWindowRow
from edgefleet.telemetry import Window, merge_windows

__all__ = ["Retention"]

log = logging.getLogger(__name__)


class Retention:
    """Applies the retention settings of the fleet's queries (read at each pass) to stored telemetry."""

    def __init__(self, queries: FleetQueries) -> None:
        self.queries = queries

    def maintain(self, now: float | None = None) -> dict[str, Any]:
        """Roll raw windows older than ``raw_retention_s`` up per hour; delete rollups past their retention.

        Each batch of raw windows is merged into its rollup rows and deleted in one transaction, so a
        crash leaves every window either raw or rolled up. Unreadable rows are left in place and counted.
        """
        q = self.queries
        now = q.now() if now is None else now
        cut = now - q.config.raw_retention_s
        res = q.config.rollup_s
        report = {"rolled_up": 0, "rollups_written": 0, "rollups_deleted": 0, "unreadable": 0}
        last_id = 0
        while True:
            with q.db.write() as s:
                q.db.lock(s, "fleet-maintain")
                rows = list(
                    s.execute(
                        select(TelemetryWindowRow.id, TelemetryWindowRow.device_id, TelemetryWindowRow.data)
                        .where(TelemetryWindowRow.id > last_id, TelemetryWindowRow.end < cut)
                        .order_by(TelemetryWindowRow.id)
                        .limit(q.config.maintain_batch)
                    )
                )
                if not rows:
                    break
                last_id = rows[-1][0]
                devices = {
                    d.id: d for d in s.scalars(select(Device).where(Device.id.in_({r[1] for r in rows})))
                }
                groups: dict[tuple[str, str, str, float], list[Window]] = {}
                done: list[int] = []
                for wid, dev_id, data in rows:
                    try:
                        w = Window.from_dict(data, config=q.window_config, check_time=False)
                    except EdgefleetError as e:
                        log.warning("telemetry window %s is unreadable, left in place: %s", wid, e.message)
                        report["unreadable"] += 1
                        continue
                    rel = release_of(w.tags, devices.get(dev_id))
                    key = (dev_id, rel, w.reference_id or "-", math.floor(w.start / res) * res)
                    groups.setdefault(key, []).append(w)
                    done.append(wid)
                for (dev_id, rel, ref, bucket), ws in groups.items():
                    row = s.scalars(
                        select(TelemetryRollup).where(
                            TelemetryRollup.device_id == dev_id,
                            TelemetryRollup.release == rel,
                            TelemetryRollup.reference_id == ref,
                            TelemetryRollup.resolution_s == res,
                            TelemetryRollup.bucket == bucket,
                        )
                    ).one_or_none()
                    parts = list(ws)
                    if row is not None:
                        parts.insert(0, Window.from_dict(row.data, config=q.window_config, check_time=False))
                    m = merge_windows(parts, on_mismatch="drop")
                    n = len(ws) + (row.windows if row is not None else 0)
                    if row is None:
                        s.add(
                            TelemetryRollup(
                                device_id=dev_id,
                                release=rel,
                                reference_id=ref,
                                resolution_s=res,
                                bucket=bucket,
                                start=m.start,
                                end=m.end,
                                windows=n,
                                updated_at=now,
                                data=m.to_dict(),
                            )
                        )
                    else:
                        row.start, row.end, row.windows, row.updated_at, row.data = (
                            m.start,
                            m.end,
                            n,
                            now,
                            m.to_dict(),
                        )
                    report["rollups_written"] += 1
                if done:
                    s.execute(delete(TelemetryWindowRow).where(TelemetryWindowRow.id.in_(done)))
                report["rolled_up"] += len(done)
            if len(rows) < q.config.maintain_batch:
                break
        with q.db.write() as s:
            q.db.lock(s, "fleet-maintain")
            gone = s.execute(
                delete(TelemetryRollup).where(TelemetryRollup.end < now - q.config.rollup_retention_s)
            ).rowcount
            report["rollups_deleted"] = int(gone or 0)
            if report["rolled_up"] or report["rollups_deleted"]:
                audit(
                    s,
                    "telemetry.maintained",
                    actor=ACTOR,
                    now=now,
                    **report,
                    message=f"{report['rolled_up']} raw windows rolled up, {report['rollups_deleted']} rollups expired",
                )
        if report["rolled_up"] or report["rollups_deleted"]:
            log.info("telemetry retention: %s", report)
        return report
