"""Per-item problem report: one bad file never stops a batch, and the user learns which and why."""
from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from .io import append_jsonl

log = logging.getLogger(__name__)


@dataclass
class ProblemLog:
    """Collects problems of one stage run and appends them to `<root>/reports/<stage>_problems.jsonl`.

    Each line: {"time", "stage", "item", "problem"}, plus "hint" (what to do about it) when one is
    known; the item is a file path or a source URL.
    """

    path: Path
    stage: str
    items: list[dict] = field(default_factory=list)

    @classmethod
    def for_stage(cls, root: str | Path, stage: str) -> "ProblemLog":
        return cls(Path(root) / "reports" / f"{stage}_problems.jsonl", stage)

    def add(self, item: str | Path, problem: str, hint: str | None = None) -> None:
        row = {
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stage": self.stage,
            "item": str(item),
            "problem": str(problem),
        }
        if hint:
            row["hint"] = hint
        self.items.append(row)
        append_jsonl(self.path, row)
        log.warning("%s: %s: %s%s", self.stage, item, problem, f" (hint: {hint})" if hint else "")

    def __len__(self) -> int:
        return len(self.items)

    def summary(self, limit: int = 10) -> str:
        """A few human-readable lines for stdout / the notebook."""
        if not self.items:
            return f"{self.stage}: no problems"
        lines = [f"{self.stage}: {len(self.items)} problem(s), full list in {self.path}"]
        for row in self.items[:limit]:
            lines.append(f"  - {row['item']}: {row['problem']}")
        if len(self.items) > limit:
            lines.append(f"  ... and {len(self.items) - limit} more")
        for hint in dict.fromkeys(row["hint"] for row in self.items if row.get("hint")):  # each once, in order
            lines.append(f"  hint: {hint}")
        return "\n".join(lines)
