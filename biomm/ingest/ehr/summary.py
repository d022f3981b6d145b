"""What a cohort holds in EHR events: its section of `biomm cohort info`."""
from __future__ import annotations

from typing import Any

from biomm.store.cohort import Cohort
from biomm.store.events import event_summary


def summary(cohort: Cohort) -> dict[str, Any]:
    """Events, subjects with events, time range, events per code system and shards (`{"events": 0}` when none)."""
    return event_summary(cohort.root)
