"""Phase 3: gsender-bcc with Graphite down: RssAnon as undelivered intervals pile up."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from common import Check, Running, Tracer, agent_command, proc_status, progress, spread
from local_carbon import free_port

UNDELIVERED_FIRST = 100  # RssAnon is read after this many intervals and after --undelivered


def undelivered_run(marks: Tuple[int, ...], runs: int) -> dict:
    """gsender-bcc at frequency 1 with nothing listening, ``runs`` agents side by side: RssAnon
    after each mark of intervals, and the growth per interval from the first mark to the last."""
    result: dict = {"marks": marks, "runs": [], "failure": ""}
    agents = []
    for run in range(runs):
        port = free_port()  # free a moment ago; nothing is started on it
        tracer = Tracer("gsender", "gsender-bcc, Graphite down",
                        agent_command("--prefix", f"bench.down{run}", frequency=1), agent=True)
        try:
            agents.append(Running(tracer, port))
        except RuntimeError as error:
            result["failure"] = str(error)
            break
        result["runs"].append({"port": port, "readings": [], "failure": ""})
    try:
        for mark in marks:
            for number, (agent, run) in enumerate(zip(agents, result["runs"]), start=1):
                if run["failure"]:
                    continue
                if not agent.wait_intervals(mark, mark * 1.5 + 30):
                    run["failure"] = f"{agent.intervals} intervals reported, not {mark}"
                    continue
                reading = undelivered_reading(agent)
                run["readings"].append(reading)
                progress(f"Graphite down, run {number}/{runs}: after {reading['intervals']} "
                         f"intervals RssAnon {(reading['rss_anon_kib'] or 0) / 1024:.1f} MiB, "
                         f"outbox {reading['outbox_bytes'] / 1024:.0f} KiB")
    finally:
        for agent, run in zip(agents, result["runs"]):
            if not agent.alive():
                run["failure"] = run["failure"] or "exited early"
            agent.stop_and_stderr()
    for run in result["runs"]:
        first, last = (run["readings"][0], run["readings"][-1]) if run["readings"] else ({}, {})
        run["slope_kib"] = undelivered_slope(first, last)
    return result


def undelivered_reading(agent: Running) -> dict:
    """RssAnon, peak RSS and the outbox's bytes on disk of an agent, and its intervals so far."""
    intervals = agent.intervals
    status = proc_status(agent.proc.pid)
    outbox = Path(agent._folder) / "state" / "outbox"
    stored = sum(p.stat().st_size for p in outbox.glob("*") if p.is_file()) \
        if outbox.is_dir() else 0
    return {"intervals": intervals, "rss_anon_kib": status.get("RssAnon"),
            "peak_rss_kib": status.get("VmHWM"), "outbox_bytes": stored}


def undelivered_slope(first: dict, last: dict) -> Optional[float]:
    """KiB of RssAnon more per interval from one reading to a later one (None if unknown)."""
    if not first or not last or last["intervals"] <= first["intervals"] \
            or first["rss_anon_kib"] is None or last["rss_anon_kib"] is None:
        return None
    return (last["rss_anon_kib"] - first["rss_anon_kib"]) / (last["intervals"] - first["intervals"])


def undelivered_lines(undelivered: dict, checks: List[Check]) -> List[str]:
    """The Graphite-down figures for the memory section, and their targets added to checks."""
    runs = undelivered.get("runs", [])
    if not runs:
        return [f"- Graphite down: FAILED: {undelivered['failure']}"] \
            if undelivered.get("failure") else []
    marks = undelivered["marks"]
    last = len(marks) - 1  # a run that failed before a mark has no reading for it

    def at(index: int, key: str, scale: float = 1.0) -> List[Optional[float]]:
        return [run["readings"][index][key] * scale if len(run["readings"]) > index
                and run["readings"][index][key] is not None else None for run in runs]
    slopes = [run["slope_kib"] for run in runs]
    failures = [f"run {n}: {run['failure']}" for n, run in enumerate(runs, 1) if run["failure"]]
    failures += [undelivered["failure"]] if undelivered["failure"] else []
    lines = [f"- Graphite down (issues 11 and 28): {len(runs)} agents side by side, default "
             f"configuration at frequency 1, nothing listening on their ports. RssAnon after "
             f"{marks[0]} undelivered intervals {spread(at(0, 'rss_anon_kib', 1 / 1024), '.1f')} "
             f"MiB, after {marks[-1]} {spread(at(last, 'rss_anon_kib', 1 / 1024), '.1f')} MiB "
             f"(outbox {spread(at(last, 'outbox_bytes', 1 / 1024), '.0f')} KiB on disk); growth "
             f"between them {spread(slopes, '.3f')} KiB per interval (median and range over the "
             f"runs; one page of 4 KiB over {marks[-1] - marks[0]} intervals is "
             f"{4 / (marks[-1] - marks[0]):.3f})."
             + (f" FAILED: {'; '.join(failures)}" if failures else "")]
    checks.append(Check(f"RssAnon after {marks[-1]} undelivered intervals, MiB",
                        at(last, "rss_anon_kib", 1 / 1024), 40, " MiB", ".1f"))
    checks.append(Check(f"RssAnon growth per undelivered interval, {marks[0]} to {marks[-1]}, "
                        f"KiB", slopes, 0.1, " KiB", ".3f", aim=True))
    return lines
