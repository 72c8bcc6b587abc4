"""Spend per day as a bar chart drawn on the server (SVG, no script), with
the same figures in a table beside it for screen readers and copying."""

from __future__ import annotations

from dataclasses import dataclass

from imagine.accounts.usage import DaySpend

WIDTH, HEIGHT, GAP, AXIS = 600, 160, 2, 16


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    credits: int


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    peak: int
    first_day: str
    last_day: str
    total: int


def spend_chart(days: list[DaySpend]) -> BarChart:
    peak = max((max(day.spent, 0) for day in days), default=0)
    slot = WIDTH / max(len(days), 1)
    drawable = HEIGHT - AXIS
    bars = []
    for index, day in enumerate(days):
        spent = max(day.spent, 0)
        height = 0.0 if peak == 0 else drawable * spent / peak
        bars.append(
            Bar(
                x=round(index * slot + GAP / 2, 2),
                y=round(drawable - height, 2),
                width=round(max(slot - GAP, 1), 2),
                height=round(height, 2),
                day=day.day.isoformat(),
                credits=spent,
            )
        )
    return BarChart(
        width=WIDTH,
        height=HEIGHT,
        bars=bars,
        peak=peak,
        first_day=days[0].day.isoformat() if days else "",
        last_day=days[-1].day.isoformat() if days else "",
        total=sum(max(day.spent, 0) for day in days),
    )
