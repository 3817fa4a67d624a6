"""Table cells: the runs of each table row aggregated into one cell per column (mean ± sample
std (n; 95% t-interval) over a group's seeds, stats.py), or why a row has no value. A report
table is a dict of long-format cells (row, column, value, std, n, low, high, text); `wide`
shows them one row per table row. Imports no torch.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from mae_cifar.reporting.run_table import (
    DEFAULT_EVAL_SPLIT,
    FINISHED,
    NON_RESULT_ARGS,
    PER_SEED_ARGS,
    PRETRAIN,
    SEED_SUFFIX,
    differing,
)
from mae_cifar.reporting.stats import estimate, interval_text

DASH = "—"
TEST_SPLIT = "test"  # summary.json selection_split of a run without a validation split
SECONDS_PER_MINUTE = 60.0
PERCENT = 100.0
ACC_DIGITS = 2
LOSS_DIGITS = 4
MINUTE_DIGITS = 1
CELL_COLUMNS = ["row", "column", "value", "std", "n", "low", "high", "text"]  # a table's cells
CSV_COLUMNS = ["dataset", "table", *CELL_COLUMNS]  # results.csv: every table's cells


def member_why(frame: pd.DataFrame, member) -> str:
    """Why one member run (exp, stage) has no value: its progress, its pretraining's
    progress, another MAE file, 'none by design', 'n/a' (finished without it) or missing."""
    if isinstance(member.duplicate, str):
        return member.duplicate
    if member.status == FINISHED:
        return "trained from another MAE file: pretrained_sha256 differs" if member.paired == "no" \
            else "n/a"
    if isinstance(member.status, str):
        return member.progress
    own = frame[frame["exp"] == member.exp]
    if member.stage == PRETRAIN:
        sources = {Path(p).parent.parent.name for p in own["pretrained_model_path"].dropna()}
        if sources and member.exp not in sources:
            return f"none by design: its classifiers use {', '.join(sorted(sources))}'s MAE"
    mae = own[own["stage"] == PRETRAIN]
    if member.stage.startswith("pretrain-") and len(mae) and mae["status"].iloc[0] != FINISHED:
        return f"pretraining {mae['progress'].iloc[0]}"
    return "missing"


def settings_differ(rows: pd.DataFrame) -> list[str]:
    """The args.json keys that change the numbers (all but NON_RESULT_ARGS and PER_SEED_ARGS)
    on which rows' runs disagree: such runs are not seeds of one setting."""
    args = [a for a in rows["args"] if isinstance(a, dict)]
    keys = sorted({k for a in args for k in a} - NON_RESULT_ARGS - PER_SEED_ARGS)
    return differing(pd.Series(args, dtype=object), tuple(keys)) if len(args) > 1 else []


def not_averaged(rows: pd.DataFrame, keys: list[str], digits: int) -> dict:
    """A cell for seeds whose settings differ: each run's value, no mean."""
    runs = ", ".join(f"{x:.{digits}f} (`{exp}`)" for exp, x in zip(rows["exp"], rows["x"],
                                                                  strict=True))
    return {"value": None, "std": None, "n": 0, "low": None, "high": None,
            "text": f"not averaged: settings differ between seeds ({', '.join(keys)}): {runs}"}


def cell(members: pd.DataFrame, frame: pd.DataFrame, digits: int, why: bool) -> dict:
    """Mean ± std (n; 95% CI where n >= 2) of members' x, then why the members without one
    have none (if why). n is shown for groups of seeds. Members whose settings differ are not
    averaged (not_averaged)."""
    valued = members[members["x"].notna()]
    values = valued["x"]
    whys = {m.exp: member_why(frame, m) for m in members[members["x"].isna()].itertuples()
            } if why else {}
    if len(values) or len(set(whys.values())) > 1:  # name the members when it matters
        notes = [f"{exp}: {w}" if len(members) > 1 else w for exp, w in whys.items()]
    else:
        notes = sorted(set(whys.values()))
    if values.empty:
        return {"value": None, "std": None, "n": 0, "low": None, "high": None,
                "text": f"{DASH} ({'; '.join(notes)})" if notes else DASH}
    differ = settings_differ(valued)
    if differ:
        return not_averaged(valued, differ, digits)
    e = estimate(values)
    text = f"{e.mean:.{digits}f}" + (f" ± {e.std:.{digits}f}" if e.n > 1 else "")
    seeded = any(SEED_SUFFIX.search(exp) for exp in members["exp"].dropna())
    extra = ([f"n={e.n}"] if seeded else []) + ([interval_text(e, digits)] if e.std > 0 else [])
    extra += notes
    text += f" ({'; '.join(extra)})" if extra else ""
    return {"value": e.mean, "std": e.std if e.n > 1 else None, "n": e.n,
            "low": e.low if e.n > 1 else None, "high": e.high if e.n > 1 else None,
            "text": text}


def member_values(frame: pd.DataFrame, members: pd.DataFrame, key: str,
                  scale: float = 1.0) -> pd.DataFrame:
    """members (row, exp, stage; exp None for a row without runs) with their run's columns
    and x = key * scale where the run is usable."""
    rows = members.merge(frame, on=["exp", "stage"], how="left")
    rows["x"] = rows[key].where(rows["usable"].eq(True)) * scale
    return rows


def aggregate(frame: pd.DataFrame, members: pd.DataFrame, column: str, key: str,
              scale: float = 1.0, digits: int = ACC_DIGITS, why: bool = True) -> pd.DataFrame:
    """One table column: a cell (value, std, n, text) per row, over the row's members."""
    rows = member_values(frame, members, key, scale)
    cells = [{"row": row, "column": column, **cell(group, frame, digits, why)}
             for row, group in rows.groupby("row", sort=False)]
    return pd.DataFrame(cells)


def text_column(members: pd.DataFrame, column: str, texts: dict) -> pd.DataFrame:
    """A column of text cells (row -> text), no numbers."""
    rows = members["row"].drop_duplicates()
    return pd.DataFrame({"row": rows, "column": column, "value": None, "std": None, "n": 0,
                         "text": rows.map(texts)})


def selection_unit(split: str) -> str:
    """The unit of a column chosen on split ('val', 'test' or both as 'test/val'): '%', and
    where runs without a validation split chose on the test split, that they did."""
    splits = split.split("/")
    if TEST_SPLIT not in splits:
        return "%"
    return f"%, {'' if len(splits) == 1 else 'some '}selected on {TEST_SPLIT}"


def cls_columns(split: str) -> list[tuple]:
    """(column, summary key, scale, digits, why) of a classifier row; the best-epoch columns
    name the split that chose the epoch (selection_unit)."""
    unit = selection_unit(split)
    return [("final test acc (%)", "final_test_acc", PERCENT, ACC_DIGITS, True),
            (f"best {split} acc ({unit})", "best_val_acc", PERCENT, ACC_DIGITS, False),
            (f"test acc at best-{split} epoch ({unit})", "test_acc_at_best", PERCENT,
             ACC_DIGITS, False),
            ("epochs", "epochs", 1.0, 0, False),
            ("wall time incl. feature extraction (min)", "total_seconds",
             1 / SECONDS_PER_MINUTE, MINUTE_DIGITS, False)]


def eval_splits(frame: pd.DataFrame) -> str:
    """The split(s) the finished pretraining runs measured eval loss and kNN on ('val/test'
    when they differ; 'test' when none has finished)."""
    splits = frame.loc[frame["stage"] == PRETRAIN, "eval_split"].dropna().unique()
    return "/".join(sorted(splits)) or DEFAULT_EVAL_SPLIT


def pretrain_columns(frame: pd.DataFrame) -> list[tuple]:
    """(column, summary key, scale, digits, why) of a pretraining row; the eval loss and kNN
    columns are labelled by the split they were measured on (summary.json
    images.eval_split)."""
    split = eval_splits(frame)
    return [("epochs", "epochs", 1.0, 0, True),
            ("optimizer steps", "steps", 1.0, 0, False),
            ("final train loss", "final_train_loss", 1.0, LOSS_DIGITS, False),
            (f"final eval loss ({split} images)", "final_eval_loss", 1.0, LOSS_DIGITS, False),
            (f"final kNN acc on {split} (%)", "knn_acc", PERCENT, ACC_DIGITS, False),
            ("wall time (min)", "wall_seconds", 1 / SECONDS_PER_MINUTE, MINUTE_DIGITS, False)]


def aggregate_columns(frame: pd.DataFrame, members: pd.DataFrame, columns: list[tuple],
                      *texts: pd.DataFrame) -> pd.DataFrame:
    """A table's cells in long format (row, column, value, std, n, text): the text columns,
    then one aggregate per (column, key, scale, digits, why) over members (row, exp, stage)."""
    parts = [*texts, *(aggregate(frame, members, *spec) for spec in columns)] if len(
        members) else []
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CELL_COLUMNS)


def text_cells(shown: pd.DataFrame, numeric: list[str]) -> pd.DataFrame:
    """A table given as text (one row per table row: its "row" label, then one column per
    table column) in long cells; the numeric columns also get their value, n=1 (one run)."""
    if shown.empty:
        return pd.DataFrame(columns=["row", "column", "text", "value", "n"])
    cells = shown.melt("row", var_name="column", value_name="text")
    cells["text"] = cells["text"].astype(str)
    is_number = cells["column"].isin(numeric)
    cells["value"] = np.where(is_number, pd.to_numeric(cells["text"], errors="coerce"), np.nan)
    cells["n"] = is_number.astype(int)
    return cells


def table(name: str, title: str, index: str, cells: pd.DataFrame, notes=()) -> dict:
    """A report table: its long cells, name (in results.csv), title, row header and notes."""
    return {"name": name, "title": title, "index": index, "cells": cells, "notes": list(notes)}


def wide(result: dict) -> pd.DataFrame:
    """The table's text cells, one row per table row (in order), one column per column."""
    cells = result["cells"]
    shown = cells.pivot(index="row", columns="column", values="text").reindex(
        index=cells["row"].unique(), columns=cells["column"].unique())
    shown.index.name = result["index"]
    return shown
