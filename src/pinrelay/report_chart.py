"""The chart of an incident's report: backlog and delivery lag over time, one line
per relay, the incident's window shaded (PNG or SVG).

matplotlib (Agg, no display) is imported when a chart is drawn, never when a relay
starts (tests/test_cli_imports.py).  Drawing takes a few hundred milliseconds of
CPU: callers on the event loop run it in a thread (a Figure of its own, no pyplot,
so threads do not share state).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Literal

from pinrelay.core.readings import Readings
from pinrelay.core.report import Report

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[Format, str] = {"png": "image/png", "svg": "image/svg+xml"}


def draw(report: Report, readings: Sequence[Readings], fmt: Format) -> bytes:
    """The chart of ``report`` from the ``readings`` of its window, as ``fmt``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 5.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    backlog_ax, lag_ax = fig.subplots(2, 1, sharex=True)
    start = report.started_ms
    end = report.ended_ms if report.ended_ms is not None else start + report.duration_ms
    by_node: dict[str, list[Readings]] = {}
    for r in readings:
        by_node.setdefault(r.node, []).append(r)
    for node, mine in sorted(by_node.items()):
        minutes = [(r.at_ms - start) / 60_000 for r in mine]
        known = [
            (m, r.backlog) for m, r in zip(minutes, mine, strict=True) if r.backlog is not None
        ]
        if known:
            backlog_ax.plot([m for m, _ in known], [b for _, b in known], label=node)
        lag_ax.plot(minutes, [r.lag_ms / 1000 for r in mine], label=node)
    if not any(r.backlog is not None for r in readings):
        note = "backlog not measured by these relays"
        backlog_ax.text(0.5, 0.5, note, ha="center", transform=backlog_ax.transAxes)
    for ax in (backlog_ax, lag_ax):
        ax.set_ylim(bottom=0)
        ax.axvspan(0, (end - start) / 60_000, color="tab:red", alpha=0.12, lw=0)
        if report.detection_delay_ms:
            ax.axvline(report.detection_delay_ms / 60_000, color="tab:red", lw=1, ls="--")
        ax.grid(True, alpha=0.3)
    backlog_ax.set_ylabel("backlog (messages)")
    lag_ax.set_ylabel("delivery lag (s)")
    lag_ax.set_xlabel("minutes from the start (shaded: the incident; dashed: opened)")
    if by_node:
        lag_ax.legend(loc="upper right", fontsize="small")
    else:
        lag_ax.text(0.5, 0.5, "no figures recorded", ha="center", transform=lag_ax.transAxes)
        lag_ax.set_xlim(-1, max(1.0, (end - start) / 60_000 + 1))
    where = f" in {report.region}" if report.region else ""
    fig.suptitle(f"Incident {report.incident}: {report.component} {report.severity}{where}")
    out = io.BytesIO()
    # No creation date: the same figures make the same file.
    metadata = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(out, format=fmt, metadata=metadata)
    return out.getvalue()
