"""One measured scenario, as every benchmark module reports it to ``bench/run`` (issue 7 "Report").

A scenario measures one metric for imagebridge and, where there is one, for a peer (Orthanc, the
machine's own limit, or imagebridge in another configuration) with the same client code, over
repeated samples taken in alternation. Results are written as JSON to ``bench/results/`` and
rendered into ``docs/benchmarks.md``; a failed or skipped scenario is kept, with its reason.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Status = Literal["ok", "failed", "skipped"]
Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Samples:
    """Repeated measurements of one side; ``unit`` is e.g. ``ms``, ``MB/s``, ``req/s``."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Samples:
        return cls(tuple(float(v) for v in values))

    @property
    def minimum(self) -> float:
        return min(self.values)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def maximum(self) -> float:
        return max(self.values)

    def summary(self) -> dict[str, float | int]:
        return {
            "min": self.minimum,
            "median": self.median,
            "max": self.maximum,
            "n": len(self.values),
        }


@dataclass
class Target:
    """A goal set by an issue: ``ratio`` (ours/peer) or ``absolute`` (ours alone) against ``value``."""

    issue: int
    text: str
    kind: Literal["ratio", "absolute"]
    value: float

    def met(self, result: Result) -> bool | None:
        measured = result.ratio() if self.kind == "ratio" else result.ours_median()
        if measured is None:
            return None
        return measured >= self.value if result.better == "higher" else measured <= self.value


@dataclass
class Result:
    """One scenario's outcome. ``ratio`` is always imagebridge / peer on medians."""

    scenario: str
    metric: str
    unit: str
    better: Better
    ours: Samples | None = None
    peer: Samples | None = None
    peer_name: str | None = None
    target: Target | None = None
    status: Status = "ok"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def ours_median(self) -> float | None:
        return self.ours.median if self.ours else None

    def ratio(self) -> float | None:
        if not self.ours or not self.peer or self.peer.median == 0:
            return None
        return self.ours.median / self.peer.median

    def verdict(self) -> bool | None:
        """True/False when a target exists and both sides were measured; None otherwise."""
        if self.status != "ok" or self.target is None:
            return None
        return self.target.met(self)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ours"] = self.ours.summary() | {"values": list(self.ours.values)} if self.ours else None
        data["peer"] = self.peer.summary() | {"values": list(self.peer.values)} if self.peer else None
        data["ratio"] = self.ratio()
        data["met"] = self.verdict()
        return data


def failed(scenario: str, metric: str, unit: str, better: Better, reason: str) -> Result:
    """A scenario that could not be measured, kept in the report with its reason."""
    return Result(scenario, metric, unit, better, status="failed", note=reason)
