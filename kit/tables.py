"""Tables for people and spreadsheets, through pandas: Markdown (GitHub's pipe tables) and CSV.

    frame = pd.DataFrame({"IoU": [0.91, None]}, index=pd.Index(["road", "car"], name="class"))
    tables.markdown(frame)              # "| class | IoU |\\n| --- | ---: |\\n| road | 0.9100 |\\n| car | n/a |\\n"
    tables.write_csv(frame, "t.csv")    # atomically

One writer for the per-class table evaluate.py prints (metrics.ConfusionMatrix.table) and the
run comparison (kit/compare.py). pandas' own to_markdown needs the tabulate package; this is the
small part of it the kit uses.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
from pandas.api.types import is_numeric_dtype

from kit import atomic

MISSING = "n/a"


def cell(value, floatfmt: str = ".4f", missing: str = MISSING) -> str:
    """One value as table text: floats with `floatfmt`, None and NaN as `missing`, "|" escaped."""
    if pd.api.types.is_scalar(value) and pd.isna(value):  # None, NaN, pd.NA
        return missing
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown(frame: pd.DataFrame, floatfmt: str = ".4f", missing: str = MISSING, right: bool | None = None) -> str:
    """`frame` as a Markdown table: its index (named by frame.index.name) as the first column,
    then its columns. Columns are right-aligned if `right`, or (None) where their dtype is
    numeric. Ends with a newline."""
    header = [frame.index.name or "", *(str(c) for c in frame.columns)]
    align = ["---", *("---:" if (is_numeric_dtype(frame[c]) if right is None else right) else "---"
                      for c in frame.columns)]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
    for index, row in zip(frame.index, frame.itertuples(index=False)):
        # Integers stay integers: itertuples gives numpy scalars, turned into Python ones first.
        values = [v.item() if hasattr(v, "item") else v for v in row]
        lines.append("| " + " | ".join([cell(index), *(cell(v, floatfmt, missing) for v in values)]) + " |")
    return "\n".join(lines) + "\n"


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """`frame` as CSV (index included, missing values empty), written atomically."""
    atomic.write_text(path, frame.to_csv())
