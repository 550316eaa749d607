"""Rows of the results table, and RESULTS.md (plus RESULTS.json with every sample)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from measure import Stat


@dataclass
class Row:
    """One line of the table. ``target`` is ``(text, kind, value)`` with kind one of
    ``ratio>=``, ``ratio<=``, ``plus<=`` (ours <= reference + value), ``abs<=`` (ours
    only), or None where no target was set."""

    row: int  # which of the seven rows of the brief
    what: str
    unit: str  # tok/s, s, MB
    ours: Stat | None
    ref: Stat | None
    target: tuple[str, str, float] | None = None
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.ref is None or not self.ref.median:
            return None
        return self.ours.median / self.ref.median

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ours is None:
            return None
        _, kind, value = self.target
        if kind == "abs<=":
            return self.ours.median <= value
        if self.ref is None:
            return None
        if kind == "plus<=":
            return self.ours.median <= self.ref.median + value
        ratio = self.ratio
        return ratio >= value if kind == "ratio>=" else ratio <= value

    def to_json(self) -> dict:
        return {"row": self.row, "what": self.what, "unit": self.unit,
                "ours": self.ours.samples if self.ours else None,
                "reference": self.ref.samples if self.ref else None,
                "ratio": self.ratio, "target": self.target[0] if self.target else None, "met": self.met,
                "commands": self.commands, "notes": self.notes}  # fmt: skip


def fmt(stat: Stat | None, unit: str) -> str:
    if stat is None:
        return "—"
    digits = {"tok/s": 1, "s": 3, "MB": 1}.get(unit, 2)
    med = f"{stat.median:.{digits}f}"
    if len(stat.samples) < 2:
        return f"{med} {unit}"
    return f"{med} {unit} ({stat.lo:.{digits}f}–{stat.hi:.{digits}f})"


def table(rows: list[Row]) -> list[str]:
    out = ["| # | what | ours | reference | ratio | target | met |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "—"
        met = {True: "yes", False: "**no**", None: "—"}[r.met]
        target = r.target[0] if r.target else "none set"
        out.append(f"| {r.row} | {r.what} | {fmt(r.ours, r.unit)} | {fmt(r.ref, r.unit)} | {ratio} "
                   f"| {target} | {met} |")  # fmt: skip
    return out


def write(path: Path, *, header: dict, rows: list[Row], preamble: list[str], method: list[str],
          notes: list[str], elapsed: float, argv: list[str]) -> None:  # fmt: skip
    lines = ["# Benchmark results", "", "Written by `" + " ".join(["python bench/run.py", *argv]) + "`.", ""]
    lines += [f"- **{k}**: {v}" for k, v in header.items()]
    judged = [r.met for r in rows if r.met is not None]
    lines += ["", *preamble, "", *table(rows), "",
              f"Targets met: {sum(judged)} of {len(judged)}.", ""]  # fmt: skip
    lines += ["Each cell is the median, with the smallest and largest sample in brackets. "
              "MB is 10^6 bytes. A ratio is ours / reference; for tokens/s higher is better, for "
              "seconds and MB lower is better.", ""]  # fmt: skip
    if notes:
        lines += ["## What to know", "", *[f"- {n}" for n in notes], ""]
    lines += ["## How each row is measured", "", *method, ""]
    lines += ["## Exact commands", ""]
    seen: set[str] = set()
    for i, r in enumerate(rows):
        if i and r.row != rows[i - 1].row:
            seen = set()  # repeat a command under each row number that uses it
        cmds = [c for c in r.commands if c not in seen]
        extra = [f"  - {n}" for n in r.notes if n not in seen]
        seen.update(cmds + r.notes)
        if cmds or extra:
            lines += [f"- row {r.row}, {r.what}:", *[f"  - `{c}`" for c in cmds], *extra]
    lines += ["", f"Total time of this run: {elapsed / 60:.1f} min.", ""]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps(
        {"header": header, "rows": [r.to_json() for r in rows], "notes": notes, "seconds": elapsed},
        indent=1) + "\n")  # fmt: skip
