"""A preflight check's outcome and the report people read: ``ok``, ``warning`` (the migration runs
but something will not be carried or needs attention) or ``blocker`` (it would fail), with a hint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

OK, WARNING, BLOCKER = "ok", "warning", "blocker"


@dataclass(frozen=True, slots=True)
class Check:
    side: str
    name: str
    status: str
    detail: str
    hint: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def render(checks: Sequence[Check]) -> str:
    marks = {OK: "ok     ", WARNING: "WARNING", BLOCKER: "BLOCKER"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.side:<11} {c.name}: {c.detail}")
        if c.hint and c.status != OK:
            lines.append(f"          fix: {c.hint}")
    blockers, warnings = (
        sum(c.status == BLOCKER for c in checks),
        sum(c.status == WARNING for c in checks),
    )
    lines.append(
        f"{blockers} blocker(s), {warnings} warning(s): "
        + ("migration blocked" if blockers else "ready to migrate")
    )
    return "\n".join(lines)
