"""Tables and figures for the MAE runs, built only from the files the runs write.

Reads <outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json} into one pandas
DataFrame (one row per run folder; runframe.py) and writes results.md, results.csv (long
format: one row per table cell) and PNG figures. Experiments named <name>_seed<N> form a
group, reported as mean ± sample std (n) over its finished seeds (groupby; stats.py). A run
without a result shows as "—" with its status; corrupt metrics rows are skipped. A fine-tune,
probe or kNN run counts for its experiment's MAE only when its summary's pretrained_sha256
matches the MAE's model_sha256. With --ablation_base (commands/study.sh) the study's baselines
and validation-only search tables are added. Bad input is one `error:` line, exit 2.

    python report.py --outputs_root outputs --out outputs/report
    python report.py --outputs_root results/superseded/fashion_mnist_study_v1/runs \
        --out results/superseded/fashion_mnist_study_v1 --ablation_base main \
        --environment results/superseded/fashion_mnist_study_v1/environment
"""

import argparse
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cli import UsageError, positive_float, run_cli
from fileio import TEMP_PREFIX, atomic_write_bytes, atomic_write_text
from runframe import (
    CLS_STAGES,
    DEFAULT_EVAL_SPLIT,
    FINISHED,
    KNN,
    NON_RESULT_ARGS,
    PCA_STAGE,
    PER_SEED_ARGS,
    PRETRAIN,
    SEED_SUFFIX,
    STALE_HOURS,
    collect_runs,
    differing,
    group_experiments,
    latest_reconstructions,
    pretrain_configs,
)
from stats import difference_text, estimate, interval_text, paired

DASH = "—"
SEARCH_GROUPS = r"(probe_lr|search_)"  # study.sh's validation-only search experiments

CLS_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "linear_probe",
    "recipe", "val_split",
)
ABLATION_DEFAULTS = {"decoder_layer": 4, "decoder_dim": 192, "mask_ratio": 0.75}
ABLATION_VALUES = {  # planned rows around ABLATION_DEFAULTS; values found in the runs are added
    "decoder_layer": (1, 2, 4, 6, 8),
    "decoder_dim": (64, 128, 192, 256, 512),
    "mask_ratio": (0.5, 0.6, 0.75, 0.85, 0.9),
}
ABLATION_TITLES = {
    "decoder_layer": "decoder depth (blocks)",
    "decoder_dim": "decoder width (dim)",
    "mask_ratio": "mask ratio",
}
COUPLED_KEYS = {"decoder_dim": ("decoder_head",)}  # the head count must divide the width
ABLATION_STAGES = {  # stage -> column of the ablation tables (kNN only where it was run)
    "pretrain-cls": "fine-tune: final test acc (%)",
    "pretrain-cls-lin": "linear probe: final test acc (%)",
    KNN: "kNN: test acc (%)",
}
# The paper's Table 1 (ViT-L, ImageNet-1K; fine-tune / linear probe top-1 %), entered from
# the paper by this project (issue 13 asks for its trend, not its values). No copy of the
# paper's text could be found to check them against here: UNVERIFIED. The mask ratio
# (Figure 5) is given as its trend only.
PAPER_TABLE1 = {
    "decoder_layer": {1: (84.8, 65.5), 2: (84.9, 70.0), 4: (84.9, 71.9), 8: (84.9, 73.5),
                      12: (84.4, 73.3)},
    "decoder_dim": {128: (84.9, 69.1), 256: (84.8, 71.3), 512: (84.9, 73.5), 768: (84.4, 73.1),
                    1024: (84.3, 73.1)},
}
PAPER_TRENDS = {
    "decoder_layer": "deeper decoder -> better probe, fine-tune flat",
    "decoder_dim": "wider decoder -> better probe up to 0.5x-1x the encoder width, fine-tune flat",
    "mask_ratio": "75% best for fine-tune and probe; the probe falls off on either side "
                  "(Figure 5, trend only)",
}
PAPER_NOTE = ("paper values entered by hand from the paper's Table 1, not checked against its "
              "text here (unverified)")
BASELINE_ROWS = (  # (group, stage, row label); "main" is the --ablation_base group
    ("baseline", "pixels-lin", "linear probe on raw pixels"),
    ("baseline", "pixels-knn", "kNN on raw pixels"),
    ("main", "scratch-cls-lin", "linear probe of a random encoder"),
    ("main", "scratch-cls", "scratch, same epochs as fine-tuning"),
    ("scratch_long", "scratch-cls", "scratch, long budget"),
    ("main", "pretrain-cls-lin", "MAE linear probe"),
    ("main", "pretrain-cls", "MAE fine-tune, same epochs as scratch"),
    ("ft_long", "pretrain-cls", "MAE fine-tune, long budget"),
    ("main", KNN, "MAE kNN"),
)

RULE = ("a difference holds when its 95% t-interval excludes 0, else it is inconclusive at "
        "that n; one pair has no interval")
PLATEAU_FRACTION = 4  # plateau_notes: the last quarter of a classifier's epochs
PLATEAU_MIN_EPOCHS = 8  # ... of a run with at least this many epochs
SECONDS_PER_MINUTE = 60.0
PERCENT = 100.0
ACC_DIGITS = 2
LOSS_DIGITS = 4
MINUTE_DIGITS = 1
COMMIT_DIGITS = 7  # an abbreviated git commit
FIG_PANEL_SIZE = (5.0, 3.6)  # inches per subplot
FIG_DPI = 120
STEPS_LABEL = "optimizer steps"  # x axis of the pretraining figures
LEGEND_FONT_SIZE = "small"
CSV_COLUMNS = ["table", "row", "column", "value", "std", "n", "low", "high", "text"]


# ----------------------------------------------------------------------------- cells


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


def cls_columns(split: str) -> list[tuple]:
    """(column, summary key, scale, digits, why) of a classifier row."""
    return [("final test acc (%)", "final_test_acc", PERCENT, ACC_DIGITS, True),
            (f"best {split} acc (%)", "best_val_acc", PERCENT, ACC_DIGITS, False),
            (f"test acc at best-{split} epoch (%)", "test_acc_at_best", PERCENT, ACC_DIGITS,
             False),
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
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=CSV_COLUMNS[1:])


def table(name: str, title: str, index: str, cells: pd.DataFrame, notes=()) -> dict:
    """A report table: its long cells, name (in results.csv), title, row header and notes."""
    return {"name": name, "title": title, "index": index, "cells": cells, "notes": list(notes)}


# ----------------------------------------------------------------------------- tables


def members_of(groups: dict[str, list[str]], rows: list[tuple]) -> pd.DataFrame:
    """(row label, group or None, stage) -> one member (row, exp, stage) per experiment."""
    return pd.DataFrame([(row, exp, stage) for row, group, stage in rows
                         for exp in groups.get(group, [None])],
                        columns=["row", "exp", "stage"])


def eval_split_notes(frame: pd.DataFrame) -> list[str]:
    """Which groups measured eval loss / kNN on which split, when the splits differ."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["eval_split"].notna()]
    by_split = runs.groupby("eval_split")["group"].unique()
    if len(by_split) < 2:
        return []
    return ["eval loss and kNN measured on: " + "; ".join(
        f"{split}: {', '.join(f'`{g}`' for g in groups)}" for split, groups in by_split.items())]


def pretrain_table(frame: pd.DataFrame) -> dict:
    """One row per experiment group with a pretraining stage."""
    groups = group_experiments(frame)
    with_mae = frame.loc[frame["stage"] == PRETRAIN, "group"].unique()
    members = members_of(groups, [(f"`{g}`", g, PRETRAIN) for g in groups if g in with_mae])
    return table("pretrain", "MAE pretraining", "experiment",
                 aggregate_columns(frame, members, pretrain_columns(frame)),
                 eval_split_notes(frame))


def main_table(frame: pd.DataFrame, group: str) -> dict:
    """Scratch / fine-tuned / linear probes of one experiment group (mean ± std over seeds)."""
    groups = group_experiments(frame)
    own = frame[frame["group"] == group]
    finished = own[own["stage"].isin(CLS_STAGES) & (own["status"] == FINISHED)]
    splits = sorted({s for s in finished["selection_split"] if isinstance(s, str)})
    unsplit = finished.loc[finished["selection_split"].isna(), "exp"] + "/" + finished.loc[
        finished["selection_split"].isna(), "stage"]
    pretrained = (own["stage"] == PRETRAIN).any()
    # a group with its own pretraining lists every classifier (the missing ones too); a
    # classifier-only group (a long scratch, a long fine-tune) lists the ones it has
    stages = [s for s in CLS_STAGES if pretrained or (own["stage"] == s).any()]
    members = members_of(groups, [(CLS_STAGES[s], group, s) for s in stages])
    notes = []
    if pretrained:
        pre = aggregate_columns(frame, members_of(groups, [("", group, PRETRAIN)]),
                                pretrain_columns(frame))
        notes.append("MAE pretraining: " + ", ".join(pre["column"] + " " + pre["text"]))
    if len(splits) > 1:
        notes.append(f"runs differ in selection split ({', '.join(splits)}), see summary.json")
    if len(unsplit):
        notes.append("finished, but summary.json names no selection split (another project "
                     f"or an older version): {', '.join(unsplit)}")
    notes += plateau_notes(own)
    for stage, runs in own.groupby("stage", sort=False):
        diff = settings_differ(runs[runs["args"].map(bool) & runs["duplicate"].isna()])
        if diff:
            notes.append(f"{stage}: settings differ between seeds (not averaged): "
                         f"{', '.join(diff)}")
    cells = aggregate_columns(frame, members, cls_columns("/".join(splits) or "selection-split"))
    return table(f"main:{group}", f"Classification: `{group}`", "classifier", cells, notes)


def plateau_gain(metrics: pd.DataFrame) -> tuple[int, float] | None:
    """(epochs in the last quarter, validation accuracy gain in points over it: the last
    epoch's val_acc minus the val_acc of the epoch before that quarter), or None when there are
    fewer than PLATEAU_MIN_EPOCHS epochs with a val_acc."""
    points = metrics.reindex(columns=["epoch", "val_acc"]).dropna()
    if len(points) < PLATEAU_MIN_EPOCHS:
        return None
    last = len(points) // PLATEAU_FRACTION
    return last, (points["val_acc"].iloc[-1] - points["val_acc"].iloc[-1 - last]) * PERCENT


def plateau_notes(own: pd.DataFrame) -> list[str]:
    """Per classifier stage of a group: how much validation accuracy still rose over the last
    quarter of the epochs, the range over its usable seeds (is it still rising?)."""
    notes = []
    for stage, runs in own[own["stage"].isin(CLS_STAGES) & own["usable"].eq(True)].groupby(
            "stage", sort=False):
        gains = [g for g in runs["metrics"].map(plateau_gain) if g is not None]
        if gains:
            lo, hi = min(g for _, g in gains), max(g for _, g in gains)
            spans = sorted({n for n, _ in gains})
            notes.append(f"{CLS_STAGES[stage]}: validation accuracy over the last "
                         f"{'/'.join(map(str, spans))} epochs (last epoch minus the epoch "
                         f"before them): {lo:+.{ACC_DIGITS}f} to {hi:+.{ACC_DIGITS}f} points "
                         f"over {len(gains)} seed(s)")
    return notes


def is_variant(configs: pd.DataFrame, base: str, key: str) -> pd.Series:
    """Groups whose pretraining differs from base's in key (and the keys coupled to it) only."""
    shown = configs.drop(columns=list(COUPLED_KEYS.get(key, ()))).map(repr)
    differs = shown.ne(shown.loc[base])
    return differs[key] & (differs.sum(axis=1) == 1)


def find_ablation_base(frame: pd.DataFrame) -> str | None:
    """Group with the default decoder/mask settings that has the most one-key variants."""
    configs = pretrain_configs(frame)
    defaults = pd.Series(ABLATION_DEFAULTS)
    candidates = sorted(g for g in configs.index
                        if configs.loc[g, defaults.index].tolist() == defaults.tolist())
    return max(candidates, default=None,
               key=lambda g: sum(is_variant(configs, g, k).sum() for k in ABLATION_DEFAULTS))


def ablation_groups(configs: pd.DataFrame, key: str, base: str) -> dict:
    """Value of key -> groups: base plus the groups that differ from it only in key."""
    by_value = {configs.loc[base, key]: [base]}
    for group in configs.index[is_variant(configs, base, key)]:
        by_value.setdefault(configs.loc[group, key], []).append(group)
    return by_value


def value_order(value) -> tuple:
    """Sort key: numbers in order, then anything else (e.g. a missing setting) by its text."""
    is_number = isinstance(value, (int, float))
    return (not is_number, value if is_number else 0, str(value))


def ablation_label(value, groups: list[str], base: str, configs: pd.DataFrame, key: str) -> str:
    """Row label: the value, '(default)' and any coupled setting that differs from the base."""
    label = f"{value}" + (" (default)" if base in groups else "")
    for coupled in COUPLED_KEYS.get(key, ()):
        values = sorted({str(configs.loc[g, coupled]) for g in groups}
                        - {str(configs.loc[base, coupled])})
        label += "".join(f" ({coupled}={v})" for v in values)
    return label


def ablation_members(frame: pd.DataFrame, key: str, base: str) -> pd.DataFrame:
    """(row, value, group, exp, stage) of an ablation: one row per value of key (the planned
    ones too when base has the default settings), its groups' experiments at each stage."""
    configs, groups = pretrain_configs(frame), group_experiments(frame)
    by_value = ablation_groups(configs, key, base)
    is_default = configs.loc[base, list(ABLATION_DEFAULTS)].tolist() == list(
        ABLATION_DEFAULTS.values())
    values = sorted(set(ABLATION_VALUES[key] if is_default else ()) | set(by_value),
                    key=value_order)
    return pd.DataFrame([
        (ablation_label(v, by_value[v], base, configs, key) if v in by_value else f"{v}",
         v, g, exp, stage)
        for stage in ABLATION_STAGES for v in values for g in by_value.get(v, [None])
        for exp in groups.get(g, [None])], columns=["row", "value", "group", "exp", "stage"])


def ablation_table(frame: pd.DataFrame, key: str, base: str) -> dict:
    """MAE Table-1-style ablation of key around the group base: rows = values, columns =
    fine-tune / probe (/ kNN where it was run) final test accuracy; with the paper's table,
    notes and a finding judged against the seed noise of the base."""
    members = ablation_members(frame, key, base)
    experiments = members.groupby("row", sort=False)["group"].agg(
        lambda gs: ", ".join(f"`{g}`" for g in dict.fromkeys(gs.dropna())) or DASH)
    groups, members = set(members["group"].dropna()), members.drop(columns="group")
    parts = [text_column(members, "experiment", experiments)]
    parts += [aggregate(frame, members[members["stage"] == stage], column, "final_test_acc",
                        PERCENT) for stage, column in ABLATION_STAGES.items()
              if stage != KNN or (frame["stage"] == KNN).any()]
    accs = member_values(frame, members, "final_test_acc", PERCENT)
    numbers = {v: tuple(by_seed(rows[rows["stage"] == s])
                        for s in ("pretrain-cls", "pretrain-cls-lin"))
               for v, rows in accs.groupby("value", sort=False)}
    base_value = pretrain_configs(frame).loc[base, key]
    result = table(f"ablation:{key}", f"Ablation: {ABLATION_TITLES[key]}", ABLATION_TITLES[key],
                   pd.concat(parts, ignore_index=True),
                   ablation_notes(frame, key, base, groups))
    result["finding"] = ablation_sentence(key, numbers, base_value)
    result["paper"] = pd.DataFrame.from_dict(
        {v: {"paper fine-tune (%)": ft, "paper linear probe (%)": lin}
         for v, (ft, lin) in PAPER_TABLE1.get(key, {}).items()}, orient="index")
    result["paper"].index.name = ABLATION_TITLES[key]
    return result


def ablation_notes(frame: pd.DataFrame, key: str, base: str, groups: set) -> list[str]:
    """The default experiment, how rows are compared, variants whose classifier settings
    differ."""
    config = pretrain_configs(frame).loc[base]
    notes = [f"default experiment `{base}` ({config['total_epoch']} pretraining epochs on "
             f"{config['dataset']}); each other row changes only {key}",
             "final-epoch accuracy on the whole test split; rows are compared with the default "
             f"row on the same seeds (paired; {RULE})",
             f"paper trend: {PAPER_TRENDS[key]}"]
    first = frame[frame["args"].map(bool)].drop_duplicates(["group", "stage"]).set_index(
        ["group", "stage"])["args"]
    for stage in ABLATION_STAGES:
        for group in sorted(groups - {base}):
            if (base, stage) in first.index and (group, stage) in first.index:
                diff = differing(first.loc[[(base, stage), (group, stage)]], CLS_CONFIG_KEYS)
                if diff:
                    notes.append(f"`{group}` {stage} differs from the default in "
                                 f"{', '.join(diff)}")
    return notes


def by_seed(rows: pd.DataFrame) -> pd.Series | None:
    """One arm's usable values x indexed by seed (args.json's), for pairing; None when its
    seeds' settings differ (they are not one arm)."""
    rows = rows[rows["x"].notna() & rows["seed"].notna()]
    if settings_differ(rows):
        return None
    return pd.Series(rows["x"].to_numpy(), index=rows["seed"].astype(int).to_numpy(), dtype=float)


def compare(name: str, a: pd.Series | None, b: pd.Series | None,
            digits: int = ACC_DIGITS) -> str:
    """'name +X points, 95% CI [...], n=... pairs ...: holds' (stats.difference_text) for the
    paired difference a - b by seed; says so when an arm mixes settings."""
    if a is None or b is None:
        return f"{name}: not compared (settings differ between the seeds of one arm)"
    if isinstance(a, SeedFree) and isinstance(b, SeedFree):
        a, b = pd.Series([float(a)]), pd.Series([float(b)])
    elif isinstance(a, SeedFree):
        a = pd.Series(float(a), index=b.index)
    elif isinstance(b, SeedFree):
        b = pd.Series(float(b), index=a.index)
    difference = paired(a, b)
    if difference.n == 0:
        seeds = [", ".join(map(str, sorted(x.dropna().index))) or "none" for x in (a, b)]
        return (f"{name}: no pair (no common seed: seeds {seeds[0]} vs {seeds[1]}; a one-seed "
                "row is n=1, no interval)")
    return f"{name} {difference_text(difference, digits)}"


def ablation_sentence(key: str, numbers: dict, base_value) -> str:
    """Each row minus the default row (base_value), then the highest minus the lowest value,
    on probe and fine-tune, each paired by seed (numbers: value -> (fine-tune, probe) seed
    series), each with its interval and verdict (RULE)."""
    values = [v for v, (ft, lin) in numbers.items()
              if ft is None or lin is None or len(lin) or len(ft)]
    if len(values) < 2:
        return f"{ABLATION_TITLES[key]}: fewer than two finished rows; no finding yet."

    def both(a, b):
        return "; ".join(compare(name, numbers[a][i], numbers[b][i])
                         for name, i in (("probe", 1), ("fine-tune", 0)))

    rows = [f"{v} minus {base_value}: {both(v, base_value)}" for v in sorted(
        values, key=value_order) if v != base_value and base_value in numbers]
    lo, hi = min(values, key=value_order), max(values, key=value_order)
    return (f"{ABLATION_TITLES[key]}, paired by seed. " + ". ".join(rows)
            + f". Endpoints {lo} -> {hi}: {both(hi, lo)}. Paper: {PAPER_TRENDS[key]}.")


def pixel_rows(frame: pd.DataFrame) -> list[tuple]:
    """(group, stage, label) of the baseline group's PCA pixel stages (baselines.py
    --pca_dim N: pixels-pca<N>-lin / -knn), by width."""
    stages = frame.loc[frame["group"] == "baseline", "stage"]
    found = sorted({s for s in stages if PCA_STAGE.match(s)}, key=lambda s: (
        int(PCA_STAGE.match(s)[1]), s))
    return [("baseline", s, f"{'linear probe' if s.endswith('-lin') else 'kNN'} on raw pixels, "
             f"PCA to {PCA_STAGE.match(s)[1]} dims") for s in found]


def baseline_rows(frame: pd.DataFrame, main: str) -> list[tuple]:
    """BASELINE_ROWS with the PCA pixel rows after the raw-pixel ones, and the tuned MAE probe
    (baselines.py --features mae: mae-lin) where it was run."""
    rows = [*BASELINE_ROWS[:2], *pixel_rows(frame), *BASELINE_ROWS[2:]]
    if ((frame["stage"] == "mae-lin") & (frame["group"] == main)).any():
        rows.insert(rows.index(BASELINE_ROWS[5]) + 1,
                    ("main", "mae-lin", "MAE linear probe, tuned (baselines.py)"))
    return rows


def arm(frame: pd.DataFrame, group: str, stage: str) -> pd.Series | None:
    """Final test accuracy (%) of a group's usable runs of stage, by seed (by_seed). A
    SEED_FREE stage's one run stands for every seed (SeedFree)."""
    rows = frame[(frame["group"] == group) & (frame["stage"] == stage)]
    values = by_seed(rows.assign(x=rows["final_test_acc"].where(rows["usable"].eq(True))
                                 * PERCENT))
    return SeedFree(values.iloc[0]) if SEED_FREE.match(stage) and values is not None and len(
        values) == 1 else values


class SeedFree(float):
    """The one result of a run that no seed changes (kNN on pixels, PCA or not: no random
    step), paired with every seed of the other arm."""


def best_pixels(frame: pd.DataFrame, method: str) -> str | None:
    """The baseline group's pixel stage of method ('lin' or 'knn') with the highest mean best
    validation accuracy (the choice never sees test), or None."""
    runs = frame[(frame["group"] == "baseline") & frame["usable"].eq(True)
                 & frame["stage"].str.match(rf"^pixels-(pca\d+-)?{method}$")]
    means = runs.groupby("stage")["best_val_acc"].mean().dropna()
    return means.idxmax() if len(means) else None


def baselines_sentence(frame: pd.DataFrame, main: str) -> str:
    """The headline differences, each paired by seed with its interval and verdict (RULE):
    MAE probe(s) and kNN minus the best pixel probe and kNN (chosen on validation), fine-tune
    minus scratch at both budgets, MAE probe minus a random encoder's."""
    pairs = []
    for method, stages in (("lin", ("pretrain-cls-lin", "mae-lin")), ("knn", (KNN,))):
        pixels = best_pixels(frame, method)
        pairs += [(f"MAE {stage} minus the best pixel {method} on validation ({pixels})",
                   (main, stage), ("baseline", pixels)) for stage in stages
                  if pixels and (frame["stage"] == stage).any()]
    pairs += [("MAE fine-tune minus scratch, same epochs", (main, "pretrain-cls"),
               (main, "scratch-cls")),
              ("MAE fine-tune minus scratch, long budget", ("ft_long", "pretrain-cls"),
               ("scratch_long", "scratch-cls")),
              ("MAE probe minus a random encoder's probe", (main, "pretrain-cls-lin"),
               (main, "scratch-cls-lin"))]
    parts = [compare(name, arm(frame, *a), arm(frame, *b)) for name, a, b in pairs
             if ((frame["group"] == a[0]) & (frame["stage"] == a[1])).any()
             and ((frame["group"] == b[0]) & (frame["stage"] == b[1])).any()]
    return ("final test accuracy, paired by seed: " + "; ".join(parts) + ".") if parts else \
        "no pair of baseline rows has finished; no finding yet."


def baselines_table(frame: pd.DataFrame, main: str) -> dict:
    """The study's baselines: every row on the same labelled subset, validation and test split;
    with the headline differences (baselines_sentence)."""
    groups = group_experiments(frame)
    rows = [(label, main if group == "main" else group, stage)
            for group, stage, label in baseline_rows(frame, main)]
    members = members_of(groups, rows)
    names = text_column(members, "experiment",
                        {label: f"`{group}` {stage}" for label, group, stage in rows})
    result = table("baselines", "Baselines", "model",
                   aggregate_columns(frame, members, cls_columns("val"), names),
                   ["every row uses the same labelled training images, validation split and "
                    f"whole test split; differences are paired by seed ({RULE})",
                    "a kNN on pixels (PCA or not) has no random step: its one run is paired "
                    "with every seed of the other arm"])
    result["finding"] = baselines_sentence(frame, main)
    return result


PROBE_STAGES = ("pretrain-cls-lin", "mae-lin")  # linear probes of an MAE encoder
SEED_FREE = re.compile(r"^pixels-(pca\d+-)?knn$")  # baselines.py stages no seed changes


def search_table(frame: pd.DataFrame, main: str) -> dict:
    """The validation-only search: every probe/kNN run of probe_lr* and search_* experiments
    and of the main arm's seed they vary, by best validation accuracy (test accuracy not
    shown: it plays no part in the choice), with the raw-pixel baselines as reference rows."""
    searched = frame["group"].str.match(SEARCH_GROUPS)
    seeds = frame.loc[searched, "seed"].dropna()
    reference = (frame["group"] == main) & (frame["seed"] == seeds.iloc[0]) if len(seeds) \
        else pd.Series(False, index=frame.index)
    finished = frame["status"] == FINISHED
    runs = frame[(searched | reference) & finished & frame["stage"].isin((*PROBE_STAGES, KNN))]
    pixels = frame[frame["stage"].str.startswith("pixels-") & finished]
    runs = pd.concat([runs, pixels]).sort_values("best_val_acc", ascending=False,
                                                 kind="stable") if searched.any() \
        else runs.iloc[:0]
    is_pixels = runs["stage"].str.startswith("pixels-")
    shown = pd.DataFrame({
        "row": "`" + runs["exp"] + "` " + runs["stage"],
        "pool": runs["pool"].fillna("cls").where(~is_pixels, DASH),
        "block": runs["block"].fillna(-1).astype(int).astype(str).where(~is_pixels, DASH),
        "probe base lr": runs["base_learning_rate"].where(~runs["stage"].str.endswith("knn"),
                                                          DASH),
        "best val acc (%)": (runs["best_val_acc"] * PERCENT).map(lambda v: f"{v:.{ACC_DIGITS}f}"),
        "selection split": runs["selection_split"].fillna(DASH)})
    cells = shown.melt("row", var_name="column", value_name="text")
    cells["text"] = cells["text"].astype(str)
    is_acc = cells["column"] == "best val acc (%)"
    cells["value"] = np.where(is_acc, pd.to_numeric(cells["text"], errors="coerce"), np.nan)
    cells["n"] = is_acc.astype(int)
    note = ("sorted by best validation accuracy; test accuracies are in the run files and are "
            "not used to choose; the raw-pixel rows are the baselines to beat")
    result = table("search", "Validation-only search (probe lr, pooling, block, pretraining "
                   "variants)", "run", cells, [note])
    if len(runs):
        result["finding"] = search_sentence(frame, runs)
    return result


def search_sentence(frame: pd.DataFrame, runs: pd.DataFrame) -> str:
    """The MAE probe the validation split picks vs the raw-pixel probe the validation split
    picks, on the test split: the picked run's experiment group and stage against the pixel
    stage, paired by seed (RULE), never against another arm's spread."""
    probes = runs[runs["stage"].isin(PROBE_STAGES)]
    pixels = runs[runs["stage"].str.match(r"^pixels-(pca\d+-)?lin$")]
    if probes.empty or pixels.empty:
        return "no MAE probe or no raw-pixel probe has finished; no finding yet."
    best, pixel = probes.iloc[0], pixels.iloc[0]  # runs are sorted by best_val_acc
    difference = compare("picked MAE probe minus picked pixel probe",
                         arm(frame, best["group"], best["stage"]),
                         arm(frame, pixel["group"], pixel["stage"]))
    return (f"the best MAE probe on validation, `{best['exp']}` {best['stage']} "
            f"({best['best_val_acc'] * PERCENT:.{ACC_DIGITS}f}% val), scores "
            f"{best['final_test_acc'] * PERCENT:.{ACC_DIGITS}f}% final test vs the best "
            f"raw-pixel probe on validation, `{pixel['exp']}` {pixel['stage']}, "
            f"{pixel['final_test_acc'] * PERCENT:.{ACC_DIGITS}f}%; paired by seed over their "
            f"experiments: {difference}.")


ENV_PART = re.compile(r"^# Environment of one invocation of part `([^`]+)`", re.M)
ENV_FINISHED = re.compile(r"^- finished: ([^;]+);.*?: ([0-9.]+) min", re.M)
ENV_COMMIT = re.compile(r"^- git commit: ([0-9a-f]+)", re.M)


def parts_table(env_dir: Path) -> dict:
    """One row per environment/<part>_<time>.md the study's runs wrote: part, when it
    finished, its wall time and commit; the total wall time under them."""
    rows = []
    paths = Path(env_dir).glob("*.md")  # <part>_<UTC time>.md: in the order they finished
    for path in sorted(paths, key=lambda p: (p.stem.rpartition("_")[2], p.name)):
        text = path.read_text(encoding="utf-8", errors="replace")
        part, finished, commit = (ENV_PART.search(text), ENV_FINISHED.search(text),
                                  ENV_COMMIT.search(text))
        rows.append({"row": f"`{path.name}`", "part": part[1] if part else DASH,
                     "finished": finished[1] if finished else DASH,
                     "wall time (min)": finished[2] if finished else DASH,
                     "git commit": commit[1][:COMMIT_DIGITS] if commit else DASH})
    total = sum(float(r["wall time (min)"]) for r in rows if r["wall time (min)"] != DASH)
    rows.append({"row": "total", "part": "", "finished": "",
                 "wall time (min)": f"{total:.{MINUTE_DIGITS}f}", "git commit": ""})
    cells = pd.DataFrame(rows).melt("row", var_name="column", value_name="text")
    is_time = cells["column"] == "wall time (min)"
    cells["value"] = np.where(is_time, pd.to_numeric(cells["text"], errors="coerce"), np.nan)
    cells["n"] = is_time.astype(int)
    return table("parts", "Study parts (environment files written by the runs)", "file",
                 cells, [f"each part's command, machine and versions: {Path(env_dir).name}/"
                         "<file>"])


def main_groups(frame: pd.DataFrame, base: str | None) -> list[str]:
    """Groups that get a classification table: those with a pretraining or classifier run,
    but for the one-key variants of base (the ablation tables show them)."""
    configs = pretrain_configs(frame)
    variants = set() if base not in configs.index else {
        g for key in ABLATION_DEFAULTS for gs in ablation_groups(configs, key, base).values()
        for g in gs} - {base}
    trained = set(frame.loc[frame["stage"].isin([PRETRAIN, *CLS_STAGES]), "group"])
    return [g for g in group_experiments(frame) if g in trained - variants]


def build_tables(frame: pd.DataFrame, ablation_base: str | None = None) -> list[dict]:
    """Every table of the report, in order. Ablations need a base group with a readable
    pretraining args.json (given, or the one with the default settings and most variants);
    the study's baselines and search only come with --ablation_base."""
    base = ablation_base or find_ablation_base(frame)
    groups = main_groups(frame, base)
    if ablation_base:  # the study: its search experiments are in the search table
        groups = [g for g in groups if not re.match(SEARCH_GROUPS, g)]
    tables = [pretrain_table(frame), *(main_table(frame, g) for g in groups)]
    if base in pretrain_configs(frame).index:
        tables += [ablation_table(frame, key, base) for key in ABLATION_DEFAULTS]
    if ablation_base in set(frame["group"]):
        tables = [baselines_table(frame, ablation_base), *tables]
        search = search_table(frame, ablation_base)
        tables += [search] if len(search["cells"]) else []
    return tables


# ----------------------------------------------------------------------------- Markdown & CSV


def escape(text) -> str:
    """text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def frame_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of frame (index as the first column); `|` escaped."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(v) for v in (index, *row)) + " |"
              for index, row in zip(frame.index, frame.itertuples(index=False), strict=True)]
    return "\n".join(lines) + "\n"


def wide(result: dict) -> pd.DataFrame:
    """The table's text cells, one row per table row (in order), one column per column."""
    cells = result["cells"]
    shown = cells.pivot(index="row", columns="column", values="text").reindex(
        index=cells["row"].unique(), columns=cells["column"].unique())
    shown.index.name = result["index"]
    return shown


def markdown(result: dict) -> str:
    """A table as a Markdown section: title, table (or '(no runs)'), paper table, notes,
    finding."""
    parts = [f"### {result['title']}", ""]
    parts += [frame_markdown(wide(result)) if len(result["cells"]) else "(no runs)\n"]
    if len(result.get("paper", ())):
        parts += ["The paper's Table 1 (ViT-L, ImageNet-1K):", "",
                  frame_markdown(result["paper"]), f"- {PAPER_NOTE}"]
    parts += [f"- {note}" for note in result["notes"]]
    if "finding" in result:
        parts += ["", f"**Finding:** {result['finding']}"]
    return "\n".join(parts).rstrip("\n") + "\n"


def row_major(cells: pd.DataFrame) -> pd.DataFrame:
    """cells ordered row by row (rows in their table order), columns in order within a row."""
    order = {row: i for i, row in enumerate(cells["row"].unique())}
    return cells.sort_values("row", key=lambda rows: rows.map(order), kind="stable")


def results_csv(tables: list[dict]) -> str:
    """Long format: table,row,column,value,std,n,text (value empty where there is no number)."""
    frames = [row_major(t["cells"]).assign(table=t["name"]) for t in tables if len(t["cells"])]
    cells = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return cells.reindex(columns=CSV_COLUMNS).astype({"n": "Int64"}).to_csv(
        index=False, lineterminator="\n")


def pairing_notes(frame: pd.DataFrame) -> list[str]:
    """Runs written before hashes were recorded, and runs left out for another MAE file."""
    notes = []
    legacy = frame.loc[frame["paired"] == "legacy", "exp"].nunique()
    if legacy:
        notes.append(f"{legacy} experiment(s) have runs without pretrained_sha256 / model_sha256 "
                     "(written before hashes were recorded): shown, but not checked to come "
                     "from their experiment's MAE file")
    unpaired = frame[frame["paired"] == "no"]
    if len(unpaired):
        notes.append("runs whose pretrained_sha256 differs from their MAE's model_sha256 are "
                     "left out of the tables: " + ", ".join(sorted(unpaired["exp"] + "/"
                                                                  + unpaired["stage"])))
    return [f"- {note}" for note in notes]


def render_markdown(command: str, tables: list[dict], images: list[tuple[str, str]],
                    notes: list[str]) -> str:
    """results.md: the command that made it, the tables, then the figures."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Results", "",
        (f"Generated by `{command}` on {stamp} "
         "from the run files (args.json, metrics.csv, summary.json); do not edit by hand."), "",
        ("Final = last epoch; best = highest accuracy over epochs on the model-selection split "
         "named in the header (summary.json selection_split; selection never sees the test "
         "split). Seeds of one experiment (`<name>_seed<N>`; the seed is args.json's) are "
         "shown as mean ± sample std (n = finished seeds; 95% t-interval, df = n - 1, where "
         "n >= 2 and the std is not 0); seeds whose settings differ are not averaged. "
         "Differences are paired by "
         f"seed: {RULE}. "
         f"{DASH} (status) marks a run without a result."), "",
    ]
    body = [markdown(t) for t in tables] + (notes + [""] if notes else [])
    figures = ["## Figures", ""] + [f"![{caption}]({name})\n" for caption, name in images]
    return "\n".join(header + body + figures)


# ----------------------------------------------------------------------------- figures


def new_figure(ncols: int = 1, nrows: int = 1) -> tuple[Figure, list]:
    """A headless (Agg) figure with nrows x ncols axes, as one list row by row."""
    width, height = FIG_PANEL_SIZE
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(nrows, ncols, squeeze=False).ravel())


def finish_axes(ax, xlabel: str, ylabel: str) -> None:
    """Labels, and a legend or a 'no data yet' note."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlabel in ("epoch", STEPS_LABEL):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.lines or ax.containers:
        ax.legend(fontsize=LEGEND_FONT_SIZE)
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)


def series(metrics: pd.DataFrame, column: str, scale: float = 1.0) -> tuple[list, list]:
    """(epochs, values * scale) of a metrics column, without the empty (nan) cells."""
    points = metrics.reindex(columns=["epoch", column]).dropna()
    return points["epoch"].tolist(), (points[column] * scale).tolist()


def step_series(run, column: str, scale: float = 1.0) -> tuple[list, list]:
    """(optimizer steps at the end of each epoch, values * scale) of a pretraining metrics
    column: (epoch + 1) * steps_per_epoch."""
    epochs, values = series(run.metrics, column, scale)
    return [(e + 1) * run.steps_per_epoch for e in epochs], values


def loss_targets(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Pretraining runs with a known step count, by loss target (never two on one axis):
    'normalised pixels' (norm_pix_loss) and 'pixels'."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["steps_per_epoch"].notna()]
    norm = runs["args"].map(lambda a: a.get("norm_pix_loss") is True)
    return {name: part for name, part in (("pixels", runs[~norm]),
                                           ("normalised pixels", runs[norm])) if len(part)}


def plot_pretrain_curves(frame: pd.DataFrame) -> Figure:
    """Train and eval reconstruction loss vs optimizer steps, one line per experiment; one row
    of panels per loss target (norm_pix_loss or not: different units)."""
    targets = loss_targets(frame) or {"pixels": frame.iloc[:0]}
    fig, axes = new_figure(2, len(targets))
    split = eval_splits(frame)
    for row, (target, runs) in enumerate(targets.items()):
        pair = axes[2 * row: 2 * row + 2]
        for run in runs.itertuples():
            for ax, column in zip(pair, ("train_loss", "eval_loss"), strict=True):
                ax.plot(*step_series(run, column), label=run.exp)
        for ax, name in zip(pair, ("train loss", f"eval loss ({split} images)"), strict=True):
            ax.set_title(f"{target} target: {name}")
            finish_axes(ax, STEPS_LABEL, name)
    fig.suptitle("MAE pretraining (one row per loss target)")
    return fig


def plot_knn(frame: pd.DataFrame) -> Figure:
    """kNN accuracy of the encoder vs optimizer steps for the pretraining runs that logged it."""
    fig, (ax,) = new_figure()
    runs = frame[(frame["stage"] == PRETRAIN) & frame["steps_per_epoch"].notna()]
    for run in runs.itertuples():
        steps, acc = step_series(run, "knn_acc", PERCENT)
        if steps:
            ax.plot(steps, acc, marker="o", label=run.exp)
    ax.set_title(f"kNN accuracy on {eval_splits(frame)} during pretraining")
    finish_axes(ax, STEPS_LABEL, "kNN acc (%)")
    return fig


def figure_notes(frame: pd.DataFrame) -> list[str]:
    """Pretraining runs left out of the step figures: no known image count or batch size."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["steps_per_epoch"].isna()
                 & frame["metrics"].map(len).gt(0)]
    return [f"- left out of the figures against optimizer steps (no image count in summary.json "
            f"or max_train_images / batch_size in args.json): {', '.join(runs['exp'])}"
            ] if len(runs) else []


def plot_classifier_curves(frame: pd.DataFrame, exp: str) -> Figure:
    """Loss (train dashed, val solid) and accuracy (train dashed, test solid) per classifier."""
    fig, (loss_ax, acc_ax) = new_figure(2)
    for run in frame[(frame["exp"] == exp) & frame["stage"].isin(CLS_STAGES)].itertuples():
        label = CLS_STAGES[run.stage]
        line, = loss_ax.plot(*series(run.metrics, "val_loss"), label=f"{label} val")
        color = line.get_color()
        loss_ax.plot(*series(run.metrics, "train_loss"), linestyle="--", color=color)
        acc_ax.plot(*series(run.metrics, "test_acc", PERCENT), label=f"{label} test", color=color)
        acc_ax.plot(*series(run.metrics, "train_acc", PERCENT), linestyle="--", color=color)
    loss_ax.set_title(f"{exp}: loss (dashed = train)")
    acc_ax.set_title(f"{exp}: accuracy (dashed = train)")
    finish_axes(loss_ax, "epoch", "loss")
    finish_axes(acc_ax, "epoch", "accuracy (%)")
    return fig


def plot_ablation(result: dict) -> Figure:
    """Fine-tune and linear-probe accuracy vs the ablated value (error bars = std over seeds)."""
    fig, axes = new_figure(2)
    rows = wide(result).index
    for ax, stage in zip(axes, ("pretrain-cls", "pretrain-cls-lin"), strict=True):
        column = ABLATION_STAGES[stage]
        cells = result["cells"][result["cells"]["column"] == column].set_index("row").reindex(rows)
        name = column.split(":")[0]
        if cells["value"].notna().any():
            ax.errorbar(range(len(rows)), cells["value"].astype(float),
                        yerr=cells["std"].astype(float).fillna(0.0), marker="o", capsize=3,
                        label=name)
        ax.set_xticks(range(len(rows)), [r.split(" ")[0] for r in rows])
        ax.set_title(f"{result['index']}: {name}")
        finish_axes(ax, result["index"], "final test acc (%)")
    return fig


def build_figures(frame: pd.DataFrame, tables: list[dict]) -> dict[str, Figure]:
    """PNG file name -> figure, for every figure of the report."""
    figures = {"pretrain_loss.png": plot_pretrain_curves(frame)}
    pretrain_runs = frame[frame["stage"] == PRETRAIN].itertuples()
    if any(series(run.metrics, "knn_acc")[0] for run in pretrain_runs
           if pd.notna(run.steps_per_epoch)):  # the monitor ran (and its steps are known)
        figures["knn_acc.png"] = plot_knn(frame)
    for t in tables:
        if t["name"].startswith("main:"):
            group = t["name"].removeprefix("main:")
            cls = frame[(frame["group"] == group) & frame["stage"].isin(CLS_STAGES)]
            figures |= {f"classifier_{exp}.png": plot_classifier_curves(frame, exp)
                        for exp in cls["exp"].unique()}
        if t["name"].startswith("ablation:"):
            figures[f"ablation_{t['name'].removeprefix('ablation:')}.png"] = plot_ablation(t)
    return figures


# ----------------------------------------------------------------------------- writing


def save_figure(fig: Figure, path: Path) -> None:
    """Render fig to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    atomic_write_bytes(path, buf.getvalue())


def copy_reconstructions(frame: pd.DataFrame, out: Path) -> list[tuple[str, str]]:
    """Copy each experiment's latest reconstruction grid to out; returns (caption, file name)."""
    copied = []
    for exp, path in latest_reconstructions(frame):
        name = f"reconstruction_{exp}.png"
        atomic_write_bytes(out / name, path.read_bytes())
        copied.append((f"`{exp}`, {path.parent.name}", name))
    return copied


def remove_temp_files_here(out: Path) -> None:
    """Delete .tmp-* files a killed report left in out (not in subfolders: run folders)."""
    for path in out.glob(TEMP_PREFIX + "*"):
        if path.is_file():
            path.unlink()


def write_report(root, out=None, ablation_base: str | None = None,
                 stale_hours: float = STALE_HOURS, environment=None) -> Path:
    """Write results.md, results.csv and the PNG figures of root into out; returns results.md.
    A root (or environment folder) that is not a folder, or an unwritable out, is a
    UsageError (nothing is created)."""
    if not Path(root).is_dir():
        raise UsageError(f"--outputs_root {root} is not a folder of run folders")
    if environment is not None and not Path(environment).is_dir():
        raise UsageError(f"--environment {environment} is not a folder")
    out = Path(out) if out is not None else Path(root) / "report"
    frame = collect_runs(root, stale_hours)
    tables = build_tables(frame, ablation_base)
    tables += [parts_table(environment)] if environment is not None else []
    figures = build_figures(frame, tables)
    command = f"python report.py --outputs_root {root} --out {out} --stale_hours {stale_hours}"
    command += f" --ablation_base {ablation_base}" if ablation_base else ""
    command += f" --environment {environment}" if environment is not None else ""
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_files_here(out)
        for name, fig in figures.items():
            save_figure(fig, out / name)
        images = [(name.removesuffix(".png").replace("_", " "), name) for name in figures]
        images += copy_reconstructions(frame, out)
        atomic_write_text(out / "results.csv", results_csv(tables))
        atomic_write_text(out / "results.md", render_markdown(command, tables, images,
                                                              pairing_notes(frame)
                                                              + figure_notes(frame)))
    except OSError as e:
        raise UsageError(f"cannot write the report to {out}: "
                         f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
                         ) from None
    return out / "results.md"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # input
    parser.add_argument("--outputs_root", default="outputs",
                        help="folder holding <exp_name>/<stage>/ run folders")
    parser.add_argument("--stale_hours", type=positive_float, default=STALE_HOURS,
                        help="an unfinished run is 'running' while its .lock file exists and a "
                             "file in it was written within this many hours, else 'stopped'")
    parser.add_argument("--ablation_base", default=None,
                        help="experiment used as the default row of the ablation tables "
                             "(default: the experiment with decoder depth 4, width 192, "
                             "mask 0.75 that has the most one-setting variants); given, it "
                             "also adds the study's baselines and validation-only search")
    # output
    parser.add_argument("--environment", default=None,
                        help="folder of a study's environment/<part>_<time>.md files "
                             "(commands/study.sh): adds a table of each part's wall time")
    parser.add_argument("--out", default=None,
                        help="folder for results.md, results.csv and the PNG figures "
                             "(default: <outputs_root>/report)")
    return parser


def main(args: argparse.Namespace) -> None:
    path = write_report(args.outputs_root, args.out, args.ablation_base, args.stale_hours,
                        args.environment)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
