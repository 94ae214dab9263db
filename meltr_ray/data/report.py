"""What an ingest run tells the user: :class:`IngestReport` (``ingest_report.json``), its summary table and
the progress bar."""
from __future__ import annotations

import collections
from dataclasses import dataclass, field


def reason_kind(reason: str) -> str:
    """The reason without its details: ``"too short: 2 frames < …"`` → ``"too short"``."""
    return reason.split(" (", 1)[0].split(":", 1)[0]


@dataclass
class IngestReport:
    """What an ingest run did; also written as ``ingest_report.json``."""
    out: str
    rows_written: int = 0
    bytes_written: int = 0
    shards: list = field(default_factory=list)
    shards_reused: int = 0
    skipped: list = field(default_factory=list)          # {"id", "video", "reason"}
    left_alone: list = field(default_factory=list)       # files in --out that ingest did not write

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        return dict(collections.Counter(reason_kind(s["reason"]) for s in self.skipped))

    def to_dict(self) -> dict:
        return {"rows_written": self.rows_written, "bytes_written": self.bytes_written, "shards": self.shards,
                "shards_reused": self.shards_reused, "skipped_count": len(self.skipped),
                "skipped_by_reason": self.skipped_by_reason, "skipped": self.skipped,
                "left_alone": self.left_alone}


def human_bytes(n: int) -> str:
    """``1234567`` → ``"1.2 MB"`` (decimal units; bytes below 1 kB)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def summary_table(report: IngestReport):
    """A rich table: rows written, bytes, shards, skipped rows by reason, files left alone in ``--out``."""
    from rich.table import Table

    table = Table(title="meltr-ray ingest")   # the folder is printed whole below the table
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("rows written", str(report.rows_written))
    table.add_row("bytes written", human_bytes(report.bytes_written))
    table.add_row("shards (reused)", f"{len(report.shards)} ({report.shards_reused})")
    table.add_row("rows skipped", str(len(report.skipped)))
    for reason, count in sorted(report.skipped_by_reason.items()):
        table.add_row(f"  skipped: {reason}", str(count))
    if report.left_alone:
        names = ", ".join(report.left_alone[:3]) + (", …" if len(report.left_alone) > 3 else "")
        table.add_row(f"files in --out not written by ingest, left alone ({names})", str(len(report.left_alone)))
    return table


class Progress:
    """A rich progress bar (or nothing when disabled): ``advance()`` one item, or ``update(done, total)``.

    ``label`` is the bar's text; ``stderr`` puts it on standard error (where the demo reports its steps)."""

    def __init__(self, enabled: bool, total: int | None, done: int = 0, label: str = "probing + writing",
                 stderr: bool = False):
        self.enabled, self.total, self.done, self.label, self.stderr = enabled, total, done, label, stderr
        self._bar = self._task = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TimeRemainingColumn
            self._bar = RichProgress("[progress.description]{task.description}", BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), transient=False,
                                     console=Console(stderr=self.stderr))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.done)
        return self

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def update(self, done: int, total: int | None = None) -> None:
        """``done`` items so far, of ``total`` (when it becomes known or changes)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total or self.total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
