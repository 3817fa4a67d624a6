"""Run folders as one tidy pandas DataFrame: one row per stage folder (experiment, seed, stage,
status, flags, metrics, summary numbers), read only from the files the runs write
(<outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json}). Imports no torch.
"""
import hashlib
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mae_cifar.fileio import TEMP_PREFIX, is_regular_file, read_metrics

PRETRAIN = "mae-pretrain"
CLS_STAGES = {  # stage folder -> row label in the classification tables
    "scratch-cls": "scratch",
    "pretrain-cls": "fine-tuned (MAE)",
    "pretrain-cls-lin": "linear probe (MAE encoder)",
    "scratch-cls-lin": "linear probe (random encoder)",
}
KNN = "mae-knn"
MAE_FEATURES = (KNN, "mae-lin")  # baselines.py on the experiment's own MAE encoder
EXTRA_STAGES = (KNN, "mae-lin", "pixels-lin", "pixels-knn", "random-lin",  # baselines.py
                "random-knn")  # (its stage_name)
STAGES = (PRETRAIN, *CLS_STAGES, *EXTRA_STAGES)
PCA_STAGE = re.compile(r"^pixels-pca(\d+)-(lin|knn)$")  # baselines.py --pca_dim N
# baselines.py's other read-outs (--pool, --block; baselines.readout_name): mae-mean-b3-lin
READOUT_STAGE = re.compile(r"^(mae|random)-(cls|mean)(?:-b(\d+))?-(lin|knn)$")
FINISHED = "finished"
SEED_SUFFIX = re.compile(r"_seed(\d+)$")
# runfolder.NON_RESULT_ARGS (a copy: runfolder imports torch; a test keeps them equal) and the
# keys that differ between seeds by design. Every other args.json key changes the numbers, so
# seeds averaged into one cell must agree on it.
NON_RESULT_ARGS = {"overwrite", "compile", "max_device_batch_size", "device", "save_freq",
                   "progress_seconds", "model", "wandb", "output_root", "data_dir", "exp_name",
                   "config", "pretrained_model_path",
                   "knn_freq", "knn_k", "knn_t", "knn_feature", "knn_train_images",
                   "knn_eval_images"}
PER_SEED_ARGS = {"seed", "pretrained_sha256"}  # a seed's own upstream MAE has its own hash
UPSTREAM_SETTINGS = "upstream pretraining settings"  # a paired run's MAE's settings_of()
# Pretraining settings that define an experiment; seed and exp_name are what seeds may change.
PRETRAIN_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "mask_ratio",
    "decoder_layer", "decoder_dim", "decoder_head", "emb_dim", "encoder_layer", "encoder_head",
    "patch_size", "norm_pix_loss", "pos_embed", "augment", "max_train_images",
)
SUMMARY_NUMBERS = ("epochs", "final_train_loss", "final_eval_loss", "knn_acc", "wall_seconds",
                   "feature_seconds", "final_test_acc", "best_val_acc", "test_acc_at_best",
                   "best_epoch")
SUMMARY_TEXTS = ("selection_split", "pretrained_sha256", "model_sha256")
DEFAULT_EVAL_SPLIT = "test"  # pretraining without --val_split (or before summaries said)
ARG_COLUMNS = ("pool", "block", "base_learning_rate", "pretrained_model_path")
LOCK_FN = ".lock"  # training/run_folder.py's lock file, there while a process writes the run
STALE_HOURS = 2.0  # a locked unfinished run with no file written for this long is "stopped"
SECONDS_PER_HOUR = 3600.0
UNRECORDED = "not recorded"  # the dataset of a run whose args.json names none
GENERATED = ("fake", "shapes")  # data/datasets.py's generated datasets (a test keeps them)
RUN_COLUMNS = ["exp", "group", "seed", "stage", "path", "status", "progress", "dataset",
               "args", "metrics", *SUMMARY_NUMBERS, *SUMMARY_TEXTS, *ARG_COLUMNS,
               "total_seconds", "eval_split", "steps_per_epoch", "steps", "settings",
               "files_sha256", "duplicate", "chosen"]


def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None when it is missing, partial, not an object, nested
    past the parser's depth, or not a regular file (a FIFO is never opened)."""
    if not is_regular_file(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def metrics_frame(path: Path) -> pd.DataFrame:
    """The rows of metrics.csv that training would resume on (fileio.read_metrics; damaged
    rows dropped), as numbers (blank cells nan), sorted by epoch; a repeated epoch (resume)
    keeps its last row."""
    rows = [{k: float(v) if v.strip() else float("nan") for k, v in raw.items()}
            for raw in read_metrics(path, skip_damaged=True)]
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
    """value as a float, nan when it is not a number (untrusted() names non-finite ones)."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number else float("nan")


def untrusted(summary: dict) -> str | None:
    """Why a finished run's numbers cannot be trusted (SUMMARY_NUMBERS that are not finite:
    an infinite accuracy), or None."""
    bad = [k for k in SUMMARY_NUMBERS
           if isinstance(v := summary.get(k), float) and not math.isfinite(v)]
    return f"summary.json holds non-finite {', '.join(bad)}: not averaged" if bad else None


def seed_of(args: dict) -> int | None:
    """The run's seed as args.json records it (not the folder name); None when absent."""
    seed = args.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def settings_of(args: dict) -> str:
    """The settings that change a run's numbers (args.json without NON_RESULT_ARGS and
    PER_SEED_ARGS), as one comparable JSON text."""
    return json.dumps({k: v for k, v in args.items()
                       if k not in NON_RESULT_ARGS | PER_SEED_ARGS}, sort_keys=True, default=str)


def files_sha256(stage_dir: Path) -> str:
    """sha256 of the run's args.json, metrics.csv and summary.json bytes (a missing file: none),
    so that a copy of a run folder is recognised as the same run."""
    digest = hashlib.sha256()
    for name in ("args.json", "metrics.csv", "summary.json"):
        try:
            if is_regular_file(stage_dir / name):
                digest.update((stage_dir / name).read_bytes())
        except OSError:
            pass
        digest.update(b"\0")
    return digest.hexdigest()


def steps_per_epoch(args: dict, summary: dict) -> float:
    """Optimizer steps per epoch: ceil(training images / batch_size) (floor with drop_last).
    The images are summary.json's images.pretrain.count, else args.json's max_train_images;
    nan when neither is known."""
    images = summary.get("images")
    count = images.get("pretrain", {}).get("count") if isinstance(images, dict) and isinstance(
        images.get("pretrain"), dict) else None
    count = number(count if count is not None else args.get("max_train_images"))
    batch = number(args.get("batch_size"))
    if math.isnan(count) or math.isnan(batch) or batch <= 0:
        return math.nan
    return float(count // batch if args.get("drop_last") is True else math.ceil(count / batch))


def eval_split_of(summary: dict) -> str | None:
    """The split pretraining's eval loss and kNN monitor were measured on (summary.json
    images.eval_split; 'test' before summaries recorded it); None for unfinished runs."""
    if not summary:
        return None
    images = summary.get("images")
    split = images.get("eval_split") if isinstance(images, dict) else None
    return split if isinstance(split, str) else DEFAULT_EVAL_SPLIT


def text_or_none(value) -> str | None:
    """A summary text field, None when it is missing or not a string (another project's file)."""
    return value if isinstance(value, str) else None


def dataset_of(args: dict) -> str:
    """The dataset a run trained on (args.json's `dataset`; a lone surrogate as its escape),
    or UNRECORDED."""
    dataset = args.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        return UNRECORDED
    return dataset.encode("utf-8", "backslashreplace").decode("utf-8")


def chosen_text(chosen, edges) -> str | None:
    """A baselines.py summary's chosen grid cell ({'lr': 0.1, 'weight_decay': 1e-05,
    'epoch': 46}) as 'lr 0.1, weight_decay 1e-05' (its best epoch left out), with the flags
    whose grid it chose an end of (chosen_on_grid_edge) named; None without a cell."""
    if not isinstance(chosen, dict):
        return None
    text = ", ".join(f"{k} {v}" for k, v in chosen.items() if k != "epoch")
    if isinstance(edges, list) and edges:
        text += f" (at the end of --{', --'.join(map(str, edges))})"
    return text or None


def load_run(stage_dir: Path, stale_hours: float = STALE_HOURS) -> dict:
    """One stage folder as a row of the runs frame. Summary fields are filled only when the
    run finished; total_seconds = wall_seconds + feature_seconds (a probe's feature extraction
    runs before its epochs and is not in wall_seconds). The seed is args.json's."""
    exp, stage = shown_name(stage_dir.parent.name), stage_dir.name
    summary = read_json(stage_dir / "summary.json") or {}
    finished = summary.get("finished") is True  # not the string "false"
    summary = summary if finished else {}
    raw_args = read_json(stage_dir / "args.json") or {}
    args = hashable_args(raw_args)
    metrics = metrics_frame(stage_dir / "metrics.csv")
    status = run_status(stage_dir, finished, stale_hours)
    row = {"exp": exp, "group": group_name(exp), "seed": seed_of(args),
           "stage": stage, "path": stage_dir, "status": status,
           "progress": status if finished else
           f"{status}, epoch {len(metrics)}/{args.get('total_epoch', '?')}",
           "dataset": dataset_of(args), "args": args, "metrics": metrics}
    row |= {k: number(summary.get(k)) for k in SUMMARY_NUMBERS}
    row |= {k: text_or_none(summary.get(k)) for k in SUMMARY_TEXTS}
    row |= {k: args.get(k) for k in ARG_COLUMNS}
    row["total_seconds"] = row["wall_seconds"] + np.nan_to_num(row["feature_seconds"])
    row |= {"eval_split": eval_split_of(summary), "files_sha256": files_sha256(stage_dir),
            "steps_per_epoch": steps_per_epoch(raw_args, summary),
            "settings": settings_of(args) if args else None, "duplicate": untrusted(summary),
            "chosen": chosen_text(summary.get("chosen"), summary.get("chosen_on_grid_edge"))}
    row["steps"] = row["epochs"] * row["steps_per_epoch"]
    return row


def shown_name(name: str) -> str:
    """A folder name as text a report can print: bytes that are not UTF-8 (os.fsdecode's
    surrogates) as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_stage(name: str) -> bool:
    """A stage folder name the report reads (STAGES, or a baselines.py PCA or read-out
    stage)."""
    return name in STAGES or any(p.match(name) for p in (PCA_STAGE, READOUT_STAGE))


def stage_order(name: str) -> tuple:
    """Sort key: STAGES in their order, then the PCA stages by width, then the read-outs."""
    if name in STAGES:
        return (STAGES.index(name), 0, "")
    if match := PCA_STAGE.match(name):
        return (len(STAGES), int(match[1]), match[2])
    return (len(STAGES) + 1, 0, name)


def collect_runs(root, stale_hours: float = STALE_HOURS) -> pd.DataFrame:
    """The runs frame: one row per stage folder under root (a symlink and its target once),
    sorted by group, seed and stage; with `paired` (see pairing), `duplicate` (see
    mark_duplicates) and `usable` (finished, not paired with another MAE, no duplicate)."""
    root = Path(root)
    exp_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(TEMP_PREFIX)
                ] if root.is_dir() else []
    candidates = [exp_dir / stage for exp_dir in sorted(exp_dirs, key=lambda p: exp_order(p.name))
                  for stage in sorted((p.name for p in exp_dir.iterdir()
                                       if p.is_dir() and is_stage(p.name)), key=stage_order)]
    kept = {}  # real path -> the folder that stands for it: a symlinked experiment last
    for stage_dir in sorted(candidates, key=lambda d: d.parent.is_symlink() or d.is_symlink()):
        kept.setdefault(stage_dir.resolve(), stage_dir)
    stage_dirs = [d for d in candidates if kept[d.resolve()] == d]
    frame = pd.DataFrame([load_run(d, stale_hours) for d in stage_dirs], columns=RUN_COLUMNS)
    frame["paired"] = pairing(frame)
    frame["args"] = with_upstream_settings(frame)
    frame["duplicate"] = mark_duplicates(frame)
    frame["usable"] = ((frame["status"] == FINISHED) & (frame["paired"] != "no")
                       & frame["duplicate"].isna())
    return frame


def by_dataset(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Dataset -> its runs, datasets by name: no table, mean or figure mixes two datasets. A
    frame without runs is one empty part (UNRECORDED)."""
    parts = dict(tuple(frame.groupby("dataset", sort=True)))
    return parts or {UNRECORDED: frame}


def finished_pretraining(frame: pd.DataFrame) -> set[str]:
    """Groups with a usable pretraining run that trained every epoch its args.json planned
    (a run stopped or still running never stands for its group's settings)."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["usable"].eq(True)]
    planned = runs["args"].map(lambda args: number(args.get("total_epoch")))
    return set(runs.loc[~(runs["epochs"] < planned), "group"])


def mark_duplicates(frame: pd.DataFrame) -> pd.Series:
    """Why a run is left out (the first in sort order counts): its numbers are untrusted
    (untrusted()), it has the same files as an earlier run of its group and stage (a copy,
    with or without a seed: counted once), or other results under the same seed (flagged;
    not averaged as a second seed). None otherwise."""
    why = frame["duplicate"].copy()
    for _, runs in frame.groupby(["group", "stage", "files_sha256"], sort=False):
        first = runs.iloc[0]
        for index in runs.index[1:]:
            why[index] = f"the same run files as `{first['exp']}`: counted once"
    seeded = frame[frame["seed"].notna() & why.isna()]
    for _, runs in seeded.groupby(["group", "stage", "seed"], sort=False):
        first = runs.iloc[0]
        for index, run in runs.iloc[1:].iterrows():
            why[index] = (f"seed {int(run['seed'])} again, other results than `{first['exp']}`: "
                          "left out")
    return why


def pairing(frame: pd.DataFrame) -> pd.Series:
    """'yes' if a fine-tune/probe/kNN run of an experiment's MAE started from that very file
    (its pretrained_sha256 == the MAE summary's model_sha256), 'no' if not, 'legacy' when a
    hash is missing, 'n/a' for other stages and for experiments without their own MAE."""
    mae = frame[frame["stage"] == PRETRAIN].set_index("exp")["model_sha256"]
    theirs, ours = frame["exp"].map(mae), frame["pretrained_sha256"]
    applies = (frame["stage"].str.startswith("pretrain-") | frame["stage"].isin(MAE_FEATURES)
               ) & frame["exp"].isin(mae.index)
    return pd.Series(np.select([~applies, ours.isna() | theirs.isna(), ours == theirs],
                               ["n/a", "legacy", "yes"], "no"), index=frame.index)


def with_upstream_settings(frame: pd.DataFrame) -> pd.Series:
    """The args of each run, those of a run paired with its experiment's MAE with the MAE's
    settings under UPSTREAM_SETTINGS: seeds whose MAEs were pretrained differently are not
    seeds of one setting, though their own flags agree."""
    mae = frame[frame["stage"] == PRETRAIN].set_index("exp")["settings"]
    return pd.Series([{**args, UPSTREAM_SETTINGS: mae[exp]} if paired == "yes" else args
                      for args, exp, paired in zip(frame["args"], frame["exp"],
                                                   frame["paired"], strict=True)],
                     index=frame.index, dtype=object)


def group_name(exp: str) -> str:
    """Experiment name without a trailing _seed<N>."""
    return SEED_SUFFIX.sub("", exp)


def exp_order(exp: str) -> tuple:
    """Sort key: group name, then the folder name's seed number, then the name."""
    match = SEED_SUFFIX.search(exp)
    return group_name(exp), int(match.group(1)) if match else -1, exp


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
