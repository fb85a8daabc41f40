"""Classification results as files: one row per input image, as CSV or JSON Lines.

A row is an image path with its top-k (class, confidence) pairs, best first, or the reason it
could not be classified. The file is written to a temporary name and renamed, so a reader never
sees half of it. CSV columns: image, error, class_1, confidence_1, ..., class_k, confidence_k
(error empty for a classified image, the class columns empty for one that was not). JSON Lines:
{"image": ..., "predictions": [{"class": ..., "probability": ...}, ...]} as inference.py --json
prints, or {"image": ..., "error": ...}. Confidences are written in full, not rounded.

Class names and file names come from folders and files we did not write: a CSV cell holds each as
display_text.spreadsheet_cell writes it (controls escaped, backslashes kept, and quoted where a spreadsheet
would run it as a formula: "=HYPERLINK(...)" becomes "'=HYPERLINK(...)"); JSON Lines keep them exact (json.dumps
escapes them).
"""

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from atomic_files import write_atomically
from display_text import spreadsheet_cell

RESULT_FORMATS = (".csv", ".jsonl")


@dataclass
class ResultRow:
    """One input image: its top-k (class, probability) pairs, or why it could not be classified."""

    image: str
    predictions: list[tuple[str, float]] | None = None
    error: str | None = None


def result_format(path: Path) -> str:
    """ ".csv" or ".jsonl" from the file name; ValueError (one line) for any other extension."""
    suffix = path.suffix.lower()
    if suffix not in RESULT_FORMATS:
        raise ValueError(f"{path}: unknown results format {suffix or '(no extension)'}; name the file .csv or .jsonl")
    return suffix


def write_results(path: Path, rows: list[ResultRow]) -> None:
    """Write `rows` to `path` in the format its extension names; OSError if it cannot be written."""
    text = results_csv(rows) if result_format(path) == ".csv" else results_jsonl(rows)
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))  # a crash leaves no half-written file


def results_csv(rows: list[ResultRow]) -> str:
    k = max((len(row.predictions) for row in rows if row.predictions), default=0)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["image", "error", *[f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "confidence")]])
    for row in rows:
        pairs = [value for name, p in row.predictions or [] for value in (spreadsheet_cell(name), p)]
        cells = [spreadsheet_cell(row.image), spreadsheet_cell(row.error or "")]
        writer.writerow([*cells, *pairs, *[""] * (2 * k - len(pairs))])  # every row k pairs wide
    return out.getvalue()


def results_jsonl(rows: list[ResultRow]) -> str:
    lines = []
    for row in rows:
        if row.error is not None:
            lines.append({"image": row.image, "error": row.error})
        else:
            predictions = [{"class": name, "probability": p} for name, p in row.predictions or []]
            lines.append({"image": row.image, "predictions": predictions})
    return "".join(json.dumps(line) + "\n" for line in lines)
