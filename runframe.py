"""Run folders as one tidy pandas DataFrame: one row per stage folder (experiment, seed, stage,
status, flags, metrics, summary numbers), read only from the files the runs write
(<outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json}). Imports no torch.
"""
import csv
import io
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fileio import TEMP_PREFIX, numeric_row

PRETRAIN = "mae-pretrain"
CLS_STAGES = {  # stage folder -> row label in the classification tables
    "scratch-cls": "scratch",
    "pretrain-cls": "fine-tuned (MAE)",
    "pretrain-cls-lin": "linear probe (MAE encoder)",
    "scratch-cls-lin": "linear probe (random encoder)",
}
KNN = "mae-knn"
EXTRA_STAGES = (KNN, "mae-lin", "pixels-lin", "pixels-knn")  # baselines.py
STAGES = (PRETRAIN, *CLS_STAGES, *EXTRA_STAGES)
FINISHED = "finished"
SEED_SUFFIX = re.compile(r"_seed(\d+)$")
# Pretraining settings that define an experiment; seed and exp_name are what seeds may change.
PRETRAIN_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "mask_ratio",
    "decoder_layer", "decoder_dim", "decoder_head", "emb_dim", "encoder_layer", "encoder_head",
    "patch_size", "norm_pix_loss", "pos_embed", "augment", "max_train_images",
)
SUMMARY_NUMBERS = ("epochs", "final_train_loss", "final_eval_loss", "knn_acc", "wall_seconds",
                   "feature_seconds", "final_test_acc", "best_val_acc", "test_acc_at_best")
SUMMARY_TEXTS = ("selection_split", "pretrained_sha256", "model_sha256")
ARG_COLUMNS = ("pool", "block", "base_learning_rate", "pretrained_model_path")
LOCK_FN = ".lock"  # runfolder.py's lock file, present while a process writes the run folder
STALE_HOURS = 2.0  # a locked unfinished run with no file written for this long is "stopped"
SECONDS_PER_HOUR = 3600.0
RUN_COLUMNS = ["exp", "group", "seed", "stage", "path", "status", "progress", "args", "metrics",
               *SUMMARY_NUMBERS, *SUMMARY_TEXTS, *ARG_COLUMNS, "total_seconds"]




def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None when it is missing, partial or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_row(raw: dict) -> dict | None:
    """Numeric metrics row (blank cells nan), or None for a row that training's resume would
    call damaged (fileio.numeric_row): truncated, overlong or non-numeric."""
    if not numeric_row(raw):
        return None
    return {k: float(v) if v.strip() else float("nan") for k, v in raw.items()}


def read_metrics(path: Path) -> pd.DataFrame:
    """Valid rows of metrics.csv sorted by epoch; a repeated epoch (resume) keeps its last row.
    A UTF-8 BOM (as Excel writes) is read as training reads it (fileio.read_metrics)."""
    rows = []
    try:
        for raw in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))):
            row = parse_row(raw)
            if row is not None:
                rows.append(row)
    except (OSError, UnicodeDecodeError):
        pass
    except csv.Error:  # e.g. a damaged field over the csv size limit: keep the rows before it
        pass
    frame = pd.DataFrame(rows, columns=None if rows else ["epoch"])
    return frame.drop_duplicates("epoch", keep="last").sort_values("epoch", ignore_index=True)


def run_status(stage_dir: Path, finished: bool, stale_hours: float) -> str:
    """'finished'; 'running' if locked and a file changed within stale_hours; else 'stopped'."""
    if finished:
        return FINISHED
    if not (stage_dir / LOCK_FN).exists():
        return "stopped"
    mtimes = []
    for p in stage_dir.iterdir():
        if p.name.startswith(TEMP_PREFIX):  # a writer's temporary file, renamed any moment
            continue
        try:
            mtimes.append(p.stat().st_mtime)
        except OSError:  # renamed or deleted since iterdir
            pass
    age_hours = (time.time() - max(mtimes, default=0.0)) / SECONDS_PER_HOUR
    return "running" if age_hours < stale_hours else "stopped"


def hashable_args(args: dict) -> dict:
    """args.json with list and dict values as their JSON text (settings are compared and
    grouped by value; a hand-edited list must not break that)."""
    return {k: json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v
            for k, v in args.items()}


def number(value) -> float:
    """value as a float, nan when it is not a number."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number else float("nan")


def load_run(stage_dir: Path, stale_hours: float = STALE_HOURS) -> dict:
    """One stage folder as a row of the runs frame. Summary fields are filled only when the
    run finished; total_seconds = wall_seconds + feature_seconds (a probe's feature extraction
    runs before its epochs and is not in wall_seconds)."""
    exp, stage = stage_dir.parent.name, stage_dir.name
    summary = read_json(stage_dir / "summary.json") or {}
    finished = bool(summary.get("finished"))
    summary = summary if finished else {}
    args = hashable_args(read_json(stage_dir / "args.json") or {})
    metrics = read_metrics(stage_dir / "metrics.csv")
    status = run_status(stage_dir, finished, stale_hours)
    seed = SEED_SUFFIX.search(exp)
    row = {"exp": exp, "group": group_name(exp), "seed": int(seed.group(1)) if seed else None,
           "stage": stage, "path": stage_dir, "status": status,
           "progress": status if finished else
           f"{status}, epoch {len(metrics)}/{args.get('total_epoch', '?')}",
           "args": args, "metrics": metrics}
    row |= {k: number(summary.get(k)) for k in SUMMARY_NUMBERS}
    row |= {k: summary.get(k) for k in SUMMARY_TEXTS}
    row |= {k: args.get(k) for k in ARG_COLUMNS}
    row["total_seconds"] = row["wall_seconds"] + np.nan_to_num(row["feature_seconds"])
    return row


def collect_runs(root, stale_hours: float = STALE_HOURS) -> pd.DataFrame:
    """The runs frame: one row per stage folder under root, sorted by group, seed and stage;
    with `paired` (see pairing) and `usable` (finished and not paired with another MAE)."""
    root = Path(root)
    exp_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(TEMP_PREFIX)
                ] if root.is_dir() else []
    rows = [load_run(exp_dir / stage, stale_hours)
            for exp_dir in sorted(exp_dirs, key=lambda p: exp_order(p.name))
            for stage in STAGES if (exp_dir / stage).is_dir()]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["paired"] = pairing(frame)
    frame["usable"] = (frame["status"] == FINISHED) & (frame["paired"] != "no")
    return frame


def pairing(frame: pd.DataFrame) -> pd.Series:
    """'yes' if a fine-tune/probe/kNN run of an experiment's MAE started from that very file
    (its pretrained_sha256 == the MAE summary's model_sha256), 'no' if not, 'legacy' when a
    hash is missing, 'n/a' for other stages and for experiments without their own MAE."""
    mae = frame[frame["stage"] == PRETRAIN].set_index("exp")["model_sha256"]
    theirs, ours = frame["exp"].map(mae), frame["pretrained_sha256"]
    applies = (frame["stage"].str.startswith("pretrain-") | (frame["stage"] == KNN)) & frame[
        "exp"].isin(mae.index)
    return pd.Series(np.select([~applies, ours.isna() | theirs.isna(), ours == theirs],
                               ["n/a", "legacy", "yes"], "no"), index=frame.index)


def group_name(exp: str) -> str:
    """Experiment name without a trailing _seed<N>."""
    return SEED_SUFFIX.sub("", exp)


def exp_order(exp: str) -> tuple:
    """Sort key: group name, then seed number."""
    match = SEED_SUFFIX.search(exp)
    return group_name(exp), int(match.group(1)) if match else -1


def group_experiments(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Group name -> its experiments (seeds), both sorted."""
    return {g: list(dict.fromkeys(exps)) for g, exps in frame.groupby("group", sort=False)["exp"]}


def latest_reconstructions(frame: pd.DataFrame) -> list[tuple[str, Path]]:
    """(experiment, images/epoch_XXXX/reconstruction.png of the highest epoch) for every
    pretraining run that saved one."""
    found = []
    for exp, path in frame.loc[frame["stage"] == PRETRAIN, ["exp", "path"]].itertuples(
            index=False):
        grids = {int(p.parent.name.removeprefix("epoch_")): p
                 for p in path.glob("images/epoch_*/reconstruction.png")
                 if p.parent.name.removeprefix("epoch_").isdigit() and p.is_file()}
        if grids:
            found.append((exp, grids[max(grids)]))
    return found


def pretrain_configs(frame: pd.DataFrame) -> pd.DataFrame:
    """Group -> its pretraining settings (the first seed with a readable args.json)."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["args"].map(bool)]
    configs = pd.DataFrame([{k: a.get(k) for k in PRETRAIN_CONFIG_KEYS} for a in runs["args"]],
                           index=runs["group"], columns=list(PRETRAIN_CONFIG_KEYS), dtype=object)
    return configs[~configs.index.duplicated()]


def differing(args: pd.DataFrame, keys: tuple) -> list[str]:
    """Keys whose values differ between the rows of args (dicts of settings)."""
    settings = pd.DataFrame(list(args), columns=list(keys), dtype=object).map(repr)
    return [k for k in keys if settings[k].nunique() > 1]
