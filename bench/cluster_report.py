"""The tables and lines bench.cluster_throughput prints and writes to RESULTS.md.

- :func:`run_rows`: every run, then the median of each (system, pushes, code);
- :func:`summary_rows`: one line per (system, pushes, code), medians over rounds,
  with relays + NATS CPU per message as a ratio to SQLite's (same pushes, same code)
  and the NATS messages per pushed message;
- :func:`before_after_rows`: with ``--before``, each system's figures before and
  after, and their ratio;
- :func:`throughput_lines`: the ratios that matter, in words (issue 12's targets,
  ``sync_interval``, the bare publisher as the floor).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

from bench.cluster_memory import Memory, memory_section
from bench.cluster_runs import Run
from bench.cluster_systems import (
    AFTER,
    ALWAYS,
    BATCH,
    BEFORE,
    DEFAULT,
    SINGLE,
    SQLITE,
    bare_kind,
    nats_version,
)
from bench.common import console, fmt, md_table, print_table, write_section

MODULE = "bench.cluster_throughput"

#: A run's group: (system, pushes, code).
Key = tuple[str, str, str]


def key_of(run: Run) -> Key:
    return (run.system, run.push, run.code)


def groups(runs: Sequence[Run]) -> dict[Key, list[Run]]:
    """Runs by (system, pushes, code), in the order first run."""
    out: dict[Key, list[Run]] = {}
    for r in runs:
        out.setdefault(key_of(r), []).append(r)
    return out


def med(runs: Sequence[Run], attr: str) -> float:
    values = [float(getattr(r, attr)) for r in runs]
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def ratio(a: Sequence[Run], b: Sequence[Run], attr: str) -> float:
    return med(a, attr) / med(b, attr)


def x(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}x"


def arrow(before: float, after: float, digits: int = 0) -> str:
    return f"{fmt(before, digits)} → {fmt(after, digits)}"


# --- every run --------------------------------------------------------------------
HEADERS = [
    "run",
    "messages",
    "wall s",
    "msgs/s",
    "pushes answered s",
    "pushes/s (asked)",
    "relays CPU µs/msg",
    "NATS CPU µs/msg (n1 / n2 / n3)",
    "NATS CPU µs/msg",
    "relays + NATS µs/msg",
    "NATS msgs/msg: relays → servers / back",
    "NATS msgs/msg: all into servers",
    "by quarter delivered: relays µs/msg",
    "by quarter delivered: NATS µs/msg",
    "load generator CPU s",
    "other processes, cores",
    "of which kernel threads µs/msg",
    "stream leader",
    "unacked after",
]


def asked(run: Run) -> str:
    if run.push != SINGLE:
        return "-"
    return f"{run.push_rate:,.0f} ({run.target_rate:,.0f})"


def row(run: Run) -> list[str]:
    by_node = (
        " / ".join(f"{c / run.messages * 1e6:.0f}" for c in run.nats_cpu_by_node)
        if run.nats_cpu_by_node
        else "-"
    )
    nats = bool(run.nats_cpu_by_node)
    return [
        f"{run.label} #{run.round}",
        f"{run.messages:,}",
        f"{run.wall_s:.2f}",
        f"{run.rate:,.0f}",
        f"{run.push_s:.2f}",
        asked(run),
        "-" if run.bare else f"{run.relay_us:.1f}",
        by_node,
        fmt(run.nats_us) if nats else "-",
        "-" if run.bare else f"{run.total_us:.1f}",
        f"{fmt(run.to_nats, 2)} / {fmt(run.from_nats, 2)}" if run.traffic else "-",
        fmt(run.nats_all_in, 1) if run.traffic else "-",
        " / ".join(fmt(q, 0) for q in run.quarters_relay_us) or "-",
        " / ".join(fmt(q, 0) for q in run.quarters_nats_us) if not run.bare and nats else "-",
        f"{run.client_cpu_s:.2f}",
        f"{run.other_cores:.2f}",
        f"{run.kthreads_us:.0f}",
        run.leader,
        f"{run.unacked} (stored - sent)" if run.bare else str(run.unacked),
    ]


def median_row(runs: Sequence[Run]) -> list[str]:
    first = runs[0]
    cluster = bool(first.nats_cpu_by_node)
    single = first.push == SINGLE
    return [
        f"**{first.label} median**",
        f"{first.messages:,}",
        f"{med(runs, 'wall_s'):.2f}",
        f"{med(runs, 'rate'):,.0f}",
        f"{med(runs, 'push_s'):.2f}",
        f"{med(runs, 'push_rate'):,.0f}" if single else "-",
        "-" if first.bare else f"{med(runs, 'relay_us'):.1f}",
        "",
        f"{med(runs, 'nats_us'):.1f}" if cluster else "-",
        "-" if first.bare else f"{med(runs, 'total_us'):.1f}",
        f"{fmt(med(runs, 'to_nats'), 2)} / {fmt(med(runs, 'from_nats'), 2)}"
        if first.traffic
        else "-",
        fmt(med(runs, "nats_all_in"), 1) if first.traffic else "-",
        "",
        "",
        f"{med(runs, 'client_cpu_s'):.2f}",
        "",
        f"{med(runs, 'kthreads_us'):.0f}",
        "",
        "",
    ]


def run_rows(runs: Sequence[Run]) -> list[list[str]]:
    return [*(row(r) for r in runs), *(median_row(g) for g in groups(runs).values())]


# --- medians by system ---------------------------------------------------------------
SUMMARY_HEADERS = [
    "system",
    "pushes",
    "code",
    "msgs/s",
    "pushes/s",
    "relays µs/msg",
    "NATS µs/msg",
    "relays + NATS µs/msg",
    "/ SQLite",
    "NATS msgs/msg: relays → servers",
    "servers → relays",
    "all into servers",
]


def sqlite_of(by: dict[Key, list[Run]], key: Key) -> list[Run]:
    """SQLite's runs with the same pushes and code (bare runs: batch, after)."""
    _, push, code = key
    return by.get((SQLITE, push, code), [])


def summary_rows(runs: Sequence[Run]) -> list[list[str]]:
    by = groups(runs)
    rows = []
    for key, mine in by.items():
        system, push, code = key
        first = mine[0]
        sqlite = sqlite_of(by, key)
        total = "nats_us" if first.bare else "total_us"
        cluster = bool(first.nats_cpu_by_node)
        rows.append(
            [
                system,
                "-" if first.bare else push,
                "-" if first.bare else code,
                f"{med(mine, 'rate'):,.0f}",
                f"{med(mine, 'push_rate'):,.0f}",
                "-" if first.bare else fmt(med(mine, "relay_us"), 0),
                fmt(med(mine, "nats_us"), 0) if cluster else "-",
                fmt(med(mine, total), 0),
                x(med(mine, total) / med(sqlite, "total_us")) if sqlite else "-",
                fmt(med(mine, "to_nats"), 2) if first.traffic else "-",
                fmt(med(mine, "from_nats"), 2) if first.traffic else "-",
                fmt(med(mine, "nats_all_in"), 1) if first.traffic else "-",
            ]
        )
    return rows


# --- before and after -----------------------------------------------------------------
BEFORE_AFTER_HEADERS = [
    "system",
    "pushes",
    "msgs/s before → after",
    "after / before",
    "relays + NATS µs/msg before → after",
    "after / before",
    "relays µs/msg before → after",
    "NATS µs/msg before → after",
    "NATS msgs/msg (relays → servers) before → after",
    "/ SQLite before → after",
]


def vs(mine: Sequence[Run], sqlite: Sequence[Run]) -> float:
    """Relays + NATS CPU per message over SQLite's (medians)."""
    return ratio(mine, sqlite, "total_us") if sqlite else float("nan")


def before_after_rows(runs: Sequence[Run]) -> list[list[str]]:
    by = groups(runs)
    rows = []
    for (system, push, code), after in by.items():
        before = by.get((system, push, BEFORE), [])
        if code != AFTER or not before:
            continue
        cluster = bool(after[0].nats_cpu_by_node)
        old_sqlite = by.get((SQLITE, push, BEFORE), [])
        new_sqlite = by.get((SQLITE, push, AFTER), [])

        rows.append(
            [
                system,
                push,
                arrow(med(before, "rate"), med(after, "rate")),
                x(ratio(after, before, "rate")),
                arrow(med(before, "total_us"), med(after, "total_us")),
                x(ratio(after, before, "total_us")),
                arrow(med(before, "relay_us"), med(after, "relay_us")),
                arrow(med(before, "nats_us"), med(after, "nats_us")) if cluster else "-",
                arrow(med(before, "to_nats"), med(after, "to_nats"), 2) if cluster else "-",
                "-"
                if system == SQLITE
                else f"{x(vs(before, old_sqlite))} → {x(vs(after, new_sqlite))}",
            ]
        )
    return rows


# --- in words -----------------------------------------------------------------------
def throughput_lines(args: argparse.Namespace, runs: Sequence[Run]) -> list[str]:
    by = groups(runs)

    def pick(system: str, push: str = BATCH, code: str = AFTER) -> list[Run]:
        return by.get((system, push, code), [])

    lines: list[str] = []
    for push, target in ((BATCH, 3.0), (SINGLE, 5.0)):
        sq, de = pick(SQLITE, push), pick(DEFAULT, push)
        if not (sq and de):
            continue
        what = (
            f"batches of {args.batch}"
            if push == BATCH
            else f"single pushes asked at {args.single_rate:,.0f}/s (achieved: cluster "
            f"{med(de, 'push_rate'):,.0f}/s, SQLite {med(sq, 'push_rate'):,.0f}/s)"
        )
        lines.append(
            f"- Cluster (sync default) / SQLite, {what}, medians: relays + NATS CPU per "
            f"message **{ratio(de, sq, 'total_us'):.2f}x** ({med(de, 'total_us'):.0f} "
            f"against {med(sq, 'total_us'):.0f} µs; issue 12's target: at most "
            f"{target:g}x); relay CPU per message {ratio(de, sq, 'relay_us'):.2f}x "
            f"({med(de, 'relay_us'):.0f} µs summed over the relays against "
            f"{med(sq, 'relay_us'):.0f} µs); throughput {ratio(de, sq, 'rate'):.2f}x "
            f"({med(de, 'rate'):,.0f} against {med(sq, 'rate'):,.0f} msgs/s); the relays "
            f"sent {fmt(med(de, 'to_nats'), 2)} NATS messages per message pushed and were "
            f"sent {fmt(med(de, 'from_nats'), 2)}."
        )
    for push in (BATCH, SINGLE):
        old, new = pick(DEFAULT, push, BEFORE), pick(DEFAULT, push)
        if old and new:
            lines.append(
                f"- Cluster (sync default), {push} pushes, after / before, medians: "
                f"throughput **{ratio(new, old, 'rate'):.2f}x** ({med(new, 'rate'):,.0f} "
                f"against {med(old, 'rate'):,.0f} msgs/s"
                + ("; issue 12's target: 5x" if push == BATCH else "")
                + f"); relays + NATS CPU per message {ratio(new, old, 'total_us'):.2f}x; "
                f"NATS messages from the relays per message {fmt(med(old, 'to_nats'), 2)} → "
                f"{fmt(med(new, 'to_nats'), 2)}."
            )

    def sync_line(label: str, al: Sequence[Run], de: Sequence[Run], relays: bool) -> str:
        relay = (
            f"relay CPU per message {ratio(al, de, 'relay_us'):.2f}x "
            f"({med(al, 'relay_us'):.0f} against {med(de, 'relay_us'):.0f} µs); "
            if relays
            else ""
        )
        return (
            f"- {label}, `sync_interval: always` / default, medians: NATS server CPU per "
            f"message **{ratio(al, de, 'nats_us'):.2f}x** ({med(al, 'nats_us'):.0f} against "
            f"{med(de, 'nats_us'):.0f} µs, summed over the 3 servers); {relay}kernel threads "
            f"(journal, writeback) {med(al, 'kthreads_us'):.0f} against "
            f"{med(de, 'kthreads_us'):.0f} µs per message; throughput "
            f"{ratio(al, de, 'rate'):.2f}x ({med(al, 'rate'):,.0f} against "
            f"{med(de, 'rate'):,.0f} msgs/s)."
        )

    de, al = pick(DEFAULT), pick(ALWAYS)
    if de and al:
        lines.append(sync_line("Relays on the cluster, batches", al, de, True))
    windows = sorted({r.window for r in runs if r.bare}, key=lambda w: -w)
    for window in windows:
        bd = by.get((bare_kind(window, False), BATCH, AFTER), [])
        ba = by.get((bare_kind(window, True), BATCH, AFTER), [])
        if bd and ba:
            label = (
                f"Bare nats-py publisher, {window} publish{'es' if window > 1 else ''} in flight"
            )
            lines.append(sync_line(label, ba, bd, False))
        if de and bd and window == max(windows):
            lines.append(
                f"- NATS server CPU per message behind the relays (batches) / behind a bare "
                f"publisher ({window} in flight, sync default): "
                f"{ratio(de, bd, 'nats_us'):.1f}x ({med(de, 'nats_us'):.0f} against "
                f"{med(bd, 'nats_us'):.0f} µs; NATS messages to the servers per message "
                f"{fmt(med(de, 'to_nats'), 2)} against {fmt(med(bd, 'to_nats'), 2)}): the "
                "rest is what the relays ask beyond the publish itself (each relay's feed of "
                "every message, acks written back, reads on attach)."
            )
    return lines


def paragraphs(args: argparse.Namespace, labels: dict[str, str], runs: Sequence[Run]) -> list[str]:
    """The section's opening: what ran, on which code, what each column means."""
    singles = any(r.push == SINGLE for r in runs)
    before = any(r.code == BEFORE for r in runs)
    return [
        f"{args.messages:,} messages to {args.devices:,} devices (message i → device i "
        f"mod {args.devices:,}), every device online. Cluster: 3 nats-server "
        f"{nats_version()} nodes (JetStream, R3 file stream and KV buckets created "
        f"by the relays) and {args.relays} relays (`pinrelay serve --store ...`), all on "
        "this one machine; SQLite: one relay on the embedded store. Batch pushes: POST "
        f"/v1/messages, {args.batch} per batch, {args.pushers} pushers on keep-alive "
        "connections (spread over the relays in turn)."
        + (
            f" Single pushes: {args.single_messages:,} messages (the same mapping), one "
            f"POST /v1/devices/{{pin}}/messages each, started at "
            f"{args.single_rate:,.0f}/s on {args.single_connections} keep-alive "
            "connections (one request at a time each, spread over the relays), or as "
            "fast as the connections are answered if that is slower."
            if singles
            else ""
        )
        + " Links from bench.linkgen processes (the devices split between the relays; "
        "one cumulative ack per read). Sync default: the nats-servers' default "
        "`sync_interval` (fsync every 2 minutes); sync always: `sync_interval: always`. "
        "Bare publish: no relay, one nats-py client publishing to an R3 file stream on a "
        f"fresh cluster of the same kind ({args.bare_payload}-byte payloads, the same "
        f"subjects, with N publishes in flight: xN; x1 sends "
        f"{min(args.messages, args.serial_messages):,} messages): JetStream's own cost, "
        "the floor. Runs rotate (the order shifts each round"
        + (", before and after side by side, their order swapped each round" if before else "")
        + f"), {args.rounds} round(s), each on fresh processes and data.",
        "",
        "Code: "
        + "; ".join(f"{side}: {label}" for side, label in labels.items())
        + "."
        + (
            ' The "after" relays ran a copy of src/ taken when the benchmark started, '
            "whatever changed in src/ meanwhile."
            if args.pin_source
            else ""
        )
        + (
            ' The "before" relays imported src/ of a temporary worktree of that commit; '
            "the load generators were the same for both."
            if before
            else ""
        ),
        "",
        "msgs/s: messages over the wall time, first push to last message received "
        "(acked as read). pushes/s: messages over the time until the last push was "
        "answered (SQLite: committed and fsynced; JetStream: acknowledged by a quorum); "
        "for single pushes the rate asked for is in brackets. CPU: utime+stime from /proc, "
        "from the first push until every relay and nats-server went quiet after the "
        "last message; relays summed (2 for the cluster; the SQLite relay with its writer "
        "process), NATS summed over the 3 servers (and per server). / SQLite: relays + "
        "NATS CPU per message over SQLite's, same pushes and same code (bare runs: NATS "
        "CPU over SQLite's batch figure). NATS msgs/msg: from each server's /connz, "
        "read before the first push and after all went quiet: messages the relays' "
        "connections sent to the servers (publishes and requests: the requests per "
        "message), and that the servers sent them (replies, acks, deliveries), per "
        "message pushed (bare runs: the publisher's connection); all into servers: "
        "/varz in_msgs summed over the 3 servers "
        "(clients and routes: replication included). by quarter delivered: the relays' "
        "and the nats-servers' CPU per message delivered in each quarter of the run "
        "(sampled every 0.25 s; the last quarter also holds what the servers did after "
        "the last message until they went quiet). other processes: CPU the rest of the "
        "machine used meanwhile, in cores (another benchmark may have been running); of "
        "which kernel threads: the CPU of the kernel's own threads (ext4 journal, "
        "writeback), where some of an fsync's work is done, per message. unacked after: "
        "messages not acknowledged in the store once the run was over (bare runs: "
        "messages in the stream minus messages sent).",
    ]


def report(
    args: argparse.Namespace, labels: dict[str, str], runs: list[Run], memory: Memory | None
) -> None:
    """Print every table; write the section of RESULTS.md unless --no-results."""
    console.print()
    sections: list[str] = []
    if runs:
        rows = run_rows(runs)
        summary = summary_rows(runs)
        changes = before_after_rows(runs)
        lines = throughput_lines(args, runs)
        print_table("Every run", HEADERS, rows)
        print_table("Medians by system", SUMMARY_HEADERS, summary)
        if changes:
            print_table("Before and after (medians)", BEFORE_AFTER_HEADERS, changes)
        for line in lines:
            console.print(line)
        sections += [
            "### Durable throughput and CPU per message: cluster and SQLite, batch and "
            "single pushes" + (", before and after" if changes else ""),
            "",
            *paragraphs(args, labels, runs),
            "",
            "Medians over the rounds:",
            "",
            md_table(SUMMARY_HEADERS, summary),
            "",
        ]
        if changes:
            sections += [
                "Before and after (medians over the rounds):",
                "",
                md_table(BEFORE_AFTER_HEADERS, changes),
                "",
            ]
        sections += [*lines, "", "Every run:", "", md_table(HEADERS, rows), ""]
    if memory is not None and len(memory.stages) >= 4:
        sections += memory_section(args, memory)
    if args.no_results or not sections:
        return
    path = write_section(
        MODULE,
        "Cluster: durable throughput, CPU per message, memory per route (bench.cluster_throughput)",
        "\n".join(sections),
    )
    console.print(f"[green]wrote[/] {path}")
