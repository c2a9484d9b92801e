"""When is a capture drop complete? Pure decision logic for the drop sensors.

A rig uploads a drop object by object; ingesting it half-way would embed and deduplicate a partial
drop (and a later re-run would have to repair it). A drop counts as complete when its marker object
exists (e.g. `_SUCCESS` or a manifest file the rig writes last), or, where allowed, once nothing in
it has changed for a quiet period. Drops already known are never considered again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

COMPLETION_RULES = ("marker", "quiet", "marker_or_quiet")


@dataclass(frozen=True)
class Decision:
    ready: list[str]  # drop names to add and run, in name order
    waiting: dict[str, str]  # name -> why not yet


def decide(
    states, *, known: set[str], now: datetime, completion: str = "marker_or_quiet", quiet_seconds: float = 600.0
) -> Decision:
    """`states`: DropState-like objects (name, has_marker, objects, newest). A drop is ready when it
    is not known, holds at least one object, and its marker exists ('marker'), or its newest object
    is older than the quiet period ('quiet'), or either ('marker_or_quiet')."""
    if completion not in COMPLETION_RULES:
        raise ValueError(f"completion must be one of {COMPLETION_RULES}, got {completion!r}")
    ready, waiting = [], {}
    quiet = timedelta(seconds=quiet_seconds)
    for st in states:
        if st.name in known:
            continue
        if st.objects == 0:
            waiting[st.name] = "no objects yet"
            continue
        marked = st.has_marker and completion in ("marker", "marker_or_quiet")
        calm = completion in ("quiet", "marker_or_quiet") and st.newest is not None and now - st.newest >= quiet
        if marked or calm:
            ready.append(st.name)
        elif completion == "marker":
            waiting[st.name] = "no marker yet"
        else:
            waiting[st.name] = f"changed {int((now - st.newest).total_seconds()) if st.newest else '?'} s ago"
    return Decision(sorted(ready), waiting)
