"""Training metrics: append-only CSV + JSONL (and TensorBoard, opt-in)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable


class MetricsLog:
    """`metrics.csv` + `metrics.jsonl` in `run_dir`. `keep(row)` decides which rows of an
    existing log survive (resume: the rows up to the resume point); None starts a new log."""

    def __init__(self, run_dir: Path, keep: Callable[[dict], bool] | None = None, tensorboard: bool = False):
        self.csv, self.jsonl = Path(run_dir) / "metrics.csv", Path(run_dir) / "metrics.jsonl"
        rows = []
        if keep is not None and self.jsonl.exists():
            rows = [r for r in (json.loads(x) for x in self.jsonl.read_text().splitlines() if x.strip()) if keep(r)]
        self.csv.unlink(missing_ok=True)
        self.jsonl.unlink(missing_ok=True)
        for r in rows:
            self.write(r, tb=False)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def _csv_row(self, row: dict):
        header: list[str] = []
        if self.csv.exists():
            with open(self.csv, newline="") as f:
                header = next(csv.reader(f), [])
        if header and not set(row) <= set(header):  # a new column: rewrite with the union of columns
            with open(self.csv, newline="") as f:
                old = list(csv.DictReader(f))
            header = header + [k for k in row if k not in header]
            with open(self.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=header)
                w.writeheader()
                w.writerows(old)
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header or list(row))
            if not header:
                w.writeheader()
            w.writerow(row)

    def write(self, row: dict, tb: bool = True):
        self._csv_row(row)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        if tb and self.tb is not None:
            step = row.get("global_step", row["step"])
            for k, v in row.items():
                if k not in ("step", "global_step") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
