"""Served-traffic usage over time: window usage and perplexity since the model was loaded,
in bounded memory (what the dashboard's usage-over-time line draws).

At most one point per ``spacing`` seconds is kept: updates within the current interval
replace its newest point, so the last point is always the current state. When
``capacity`` points are exceeded, every other one is dropped and the spacing doubles, so
the series spans the whole uptime with at most ``capacity + 1`` points, at a resolution
that coarsens as the service runs longer (256 points: 1 s apart for the first ~4 min,
2 s to ~8.5 min, ..., ~17 min apart after three days).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UsagePoint:
    t: float  # seconds since the history started (the model was loaded)
    tokens_seen: int
    window_usage: float
    perplexity: float


class UsageHistory:
    """Not thread-safe: the service records and reads under the model's usage lock."""

    def __init__(self, start: float, *, capacity: int = 256, spacing: float = 1.0) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError(f"capacity={capacity!r} is not allowed; expected an even int >= 2")
        if not spacing > 0:
            raise ValueError(f"spacing={spacing!r} is not allowed; expected seconds > 0")
        self.start = start
        self.capacity = capacity
        self.spacing = spacing
        self._points: list[UsagePoint] = []
        self._interval_start = start  # when the newest point's interval began

    def record(self, now: float, tokens_seen: int, window_usage: float, perplexity: float) -> None:
        """The figures at time ``now`` (same clock as ``start``)."""
        point = UsagePoint(now - self.start, tokens_seen, window_usage, perplexity)
        if self._points and now - self._interval_start < self.spacing:
            self._points[-1] = point
            return
        self._points.append(point)
        self._interval_start = now
        if len(self._points) > self.capacity:
            # capacity + 1 is odd: [::2] keeps the first and the newest point.
            self._points = self._points[::2]
            self.spacing *= 2

    def points(self) -> list[UsagePoint]:
        return list(self._points)
