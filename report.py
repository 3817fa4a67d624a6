"""Tables and figures for the MAE CIFAR-10 runs, built only from the files the runs write.

Reads <outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json} and writes
results.md, results.csv (long format) and PNG figures. Missing or unfinished runs show as
"—" with their status; corrupt metrics rows are skipped. Experiments named <name>_seed<N>
are grouped and reported as mean ± sample std over the finished seeds. With --ablation_base
(commands/study.sh) the study's sections come first: they are pandas DataFrames (one row per
finished run, groupby over pretraining seeds), and classifiers count for an MAE only when their
summary's pretrained_sha256 matches its model_sha256. Bad input is one `error:` line, exit 2.

    python report.py --outputs_root outputs --out outputs/report
    python report.py --outputs_root results/fashion_mnist_study/runs \
        --out results/fashion_mnist_study --ablation_base main
"""

import argparse
import csv
import io
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fileio import TEMP_PREFIX, atomic_write_bytes, atomic_write_text
from utils import UsageError, run_cli

PRETRAIN = "mae-pretrain"
CLS_STAGES = {  # stage folder -> row label in the main table
    "scratch-cls": "scratch",
    "pretrain-cls": "fine-tuned (MAE)",
    "pretrain-cls-lin": "linear probe (MAE encoder)",
    "scratch-cls-lin": "linear probe (random encoder)",
}
EXTRA_STAGES = ("mae-knn", "mae-lin", "pixels-lin", "pixels-knn")  # baselines.py
STAGES = (PRETRAIN, *CLS_STAGES, *EXTRA_STAGES)
FINISHED = "finished"
DASH = "—"
SEED_SUFFIX = re.compile(r"_seed(\d+)$")

# Pretraining settings that define an experiment; seed and exp_name are what seeds may change.
PRETRAIN_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "mask_ratio",
    "decoder_layer", "decoder_dim", "decoder_head", "emb_dim", "encoder_layer", "encoder_head",
    "patch_size", "norm_pix_loss", "pos_embed", "augment", "max_train_images",
)
CLS_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "linear_probe",
    "recipe", "val_split",
)
ABLATION_DEFAULTS = {"decoder_layer": 4, "decoder_dim": 192, "mask_ratio": 0.75}
ABLATION_VALUES = {  # planned rows; values found in the runs are added
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
ABLATION_COLUMNS = {  # stage -> column header in the ablation tables
    "pretrain-cls": "fine-tune: final test acc (%)",
    "pretrain-cls-lin": "linear probe: final test acc (%)",
}

LOCK_FN = ".lock"  # engine.py's lock file, present while a process writes the run folder
STALE_HOURS = 2.0  # a locked unfinished run with no file written for this long is "stopped"
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_MINUTE = 60.0
PERCENT = 100.0
ACC_DIGITS = 2
LOSS_DIGITS = 4
MINUTE_DIGITS = 1
FIG_PANEL_SIZE = (5.0, 3.6)  # inches per subplot
FIG_DPI = 120
LEGEND_FONT_SIZE = "small"
PNG_NAMES = {"pretrain": "pretrain_loss.png", "knn": "knn_acc.png"}


# ----------------------------------------------------------------------------- reading runs


@dataclass
class Run:
    """One stage folder: <root>/<exp>/<stage>."""

    exp: str
    stage: str
    path: Path
    args: dict  # args.json, {} when missing or unreadable
    rows: list  # metrics.csv rows (column -> float, nan for empty cells), one per epoch
    summary: dict | None  # summary.json when the run finished, else None
    status: str  # "finished", "running" or "stopped"

    def progress(self) -> str:
        """Status text such as 'finished' or 'running, epoch 12/50'."""
        if self.status == FINISHED:
            return FINISHED
        return f"{self.status}, epoch {len(self.rows)}/{self.args.get('total_epoch', '?')}"


def read_json(path: Path) -> dict | None:
    """The JSON object in path, or None when it is missing, partial or not an object."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def parse_row(raw: dict) -> dict | None:
    """Numeric metrics row, or None for a truncated, overlong or non-numeric row."""
    if None in raw or None in raw.values():  # too many cells / too few cells
        return None
    try:
        row = {k: float(v) if v.strip() else float("nan") for k, v in raw.items()}
    except ValueError:
        return None
    epoch = row.get("epoch", float("nan"))
    return row if math.isfinite(epoch) and epoch.is_integer() else None


def read_metrics(path: Path) -> list[dict]:
    """Valid rows of metrics.csv sorted by epoch; a repeated epoch (resume) keeps its last row."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    by_epoch = {}
    try:
        for raw in csv.DictReader(io.StringIO(text)):
            row = parse_row(raw)
            if row is not None:
                by_epoch[int(row["epoch"])] = row
    except csv.Error:  # e.g. a damaged field over the csv size limit: keep the rows before it
        pass
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


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


def with_total_seconds(summary: dict | None) -> dict | None:
    """summary plus total_seconds = wall_seconds + feature_seconds (a probe's feature
    extraction runs before its epochs and is not in wall_seconds)."""
    if not summary or not isinstance(summary.get("wall_seconds"), (int, float)):
        return summary
    features = summary.get("feature_seconds")
    extra = features if isinstance(features, (int, float)) else 0.0
    return {**summary, "total_seconds": summary["wall_seconds"] + extra}


def load_run(stage_dir: Path, stale_hours: float = STALE_HOURS) -> Run:
    """Read one stage folder."""
    summary = with_total_seconds(read_json(stage_dir / "summary.json"))
    finished = bool(summary and summary.get("finished"))
    return Run(
        exp=stage_dir.parent.name,
        stage=stage_dir.name,
        path=stage_dir,
        args=hashable_args(read_json(stage_dir / "args.json") or {}),
        rows=read_metrics(stage_dir / "metrics.csv"),
        summary=summary if finished else None,
        status=run_status(stage_dir, finished, stale_hours),
    )


def collect_runs(root, stale_hours: float = STALE_HOURS) -> list[Run]:
    """Every stage folder under root, sorted by experiment then stage; [] if root is absent."""
    root = Path(root)
    if not root.is_dir():
        return []
    exp_dirs = sorted((p for p in root.iterdir() if p.is_dir()
                       and not p.name.startswith(TEMP_PREFIX)), key=lambda p: exp_order(p.name))
    return [
        load_run(exp_dir / stage, stale_hours)
        for exp_dir in exp_dirs
        for stage in STAGES
        if (exp_dir / stage).is_dir()
    ]


def find_run(runs: list[Run], exp: str, stage: str) -> Run | None:
    """The run of exp at stage, or None."""
    return next((r for r in runs if r.exp == exp and r.stage == stage), None)


def group_name(exp: str) -> str:
    """Experiment name without a trailing _seed<N>."""
    return SEED_SUFFIX.sub("", exp)


def exp_order(exp: str) -> tuple:
    """Sort key: group name, then seed number."""
    match = SEED_SUFFIX.search(exp)
    return group_name(exp), int(match.group(1)) if match else -1


def group_experiments(runs: list[Run]) -> dict[str, list[str]]:
    """Group name -> its experiments (seeds), both sorted."""
    groups = {}
    for exp in sorted({r.exp for r in runs}, key=exp_order):
        groups.setdefault(group_name(exp), []).append(exp)
    return groups


def latest_reconstruction(run: Run) -> Path | None:
    """images/epoch_XXXX/reconstruction.png of the highest epoch, or None."""
    grids = {}
    for path in (run.path / "images").glob("epoch_*/reconstruction.png"):
        epoch = path.parent.name.removeprefix("epoch_")
        if epoch.isdigit() and path.is_file():
            grids[int(epoch)] = path
    return grids[max(grids)] if grids else None


def latest_reconstructions(runs: list[Run]) -> list[tuple[str, Path]]:
    """(experiment, latest reconstruction grid) for every pretraining run that saved one."""
    found = [(r.exp, latest_reconstruction(r)) for r in runs if r.stage == PRETRAIN]
    return [(exp, path) for exp, path in found if path is not None]


# ----------------------------------------------------------------------------- cells & tables


@dataclass
class Cell:
    """A table cell: the text shown and the numbers behind it (in the displayed unit)."""

    text: str
    value: float | None = None  # mean over the finished seeds
    std: float | None = None  # sample std (ddof=1), only when n > 1
    n: int = 0


@dataclass
class Table:
    name: str  # id of the table in results.csv
    title: str
    columns: list[str]  # the first one heads the row labels
    rows: list[tuple[str, list[Cell]]]
    notes: list[str] = field(default_factory=list)
    keys: list = field(default_factory=list)  # the varied value of each row (ablations)


def make_cell(values: list[float], notes: list[str], digits: int, show_n: bool) -> Cell:
    """Mean ± std (n) of values, followed by the status notes of the members without one."""
    if not values:
        return Cell(f"{DASH} ({'; '.join(notes)})" if notes else DASH)
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")
    extra = ([f"n={len(values)}"] if show_n else []) + notes
    if extra:
        text += f" ({'; '.join(extra)})"
    return Cell(text, mean, std, len(values))


def member_status(runs: list[Run], exp: str, stage: str) -> str:
    """Why exp has no result at stage: its progress, its pretraining's progress, or missing."""
    run = find_run(runs, exp, stage)
    if run is not None:
        return run.progress()
    if stage == PRETRAIN:
        sources = {Path(str(r.args.get("pretrained_model_path"))).parent.parent.name
                   for r in runs if r.exp == exp and r.args.get("pretrained_model_path")}
        if sources and exp not in sources:
            return f"none by design: its classifiers use {', '.join(sorted(sources))}'s MAE"
    pretrain = find_run(runs, exp, PRETRAIN)
    if stage.startswith("pretrain-") and pretrain is not None and pretrain.status != FINISHED:
        return f"pretraining {pretrain.progress()}"
    return "missing"


def summary_cell(runs: list[Run], members: list[str], stage: str, key: str,
                 scale: float = 1.0, digits: int = ACC_DIGITS, status: bool = True) -> Cell:
    """summary.json[key] * scale of the members' runs at stage, aggregated over seeds.

    status: say why members have no value (off for all but the first cell of a row).
    """
    if not members:
        return Cell(f"{DASH} (missing)" if status else DASH)
    values, whys = [], {}
    for exp in members:
        run = find_run(runs, exp, stage)
        value = run.summary.get(key) if run is not None and run.summary else None
        if isinstance(value, (int, float)):
            values.append(value * scale)
        else:
            whys[exp] = "n/a" if run is not None and run.summary else member_status(
                runs, exp, stage)
    if values or len(set(whys.values())) > 1:  # name the members when it matters
        notes = [f"{exp}: {why}" if len(members) > 1 else why for exp, why in whys.items()]
    else:
        notes = sorted(set(whys.values()))
    return make_cell(values, notes if status else [], digits, len(members) > 1)


def differing_keys(a: dict, b: dict, keys: tuple) -> list[str]:
    """Keys among keys whose values differ between a and b."""
    return [k for k in keys if a.get(k) != b.get(k)]


def stage_args(runs: list[Run], members: list[str], stage: str) -> list[dict]:
    """The non-empty args.json of the members' runs at stage."""
    found = (find_run(runs, exp, stage) for exp in members)
    return [run.args for run in found if run is not None and run.args]


def seed_notes(runs: list[Run], members: list[str]) -> list[str]:
    """A note per stage whose settings differ between seeds of one group (other than seed)."""
    notes = []
    for stage in STAGES:
        args = stage_args(runs, members, stage)
        keys = PRETRAIN_CONFIG_KEYS if stage == PRETRAIN else CLS_CONFIG_KEYS
        diff = sorted({k for a in args[1:] for k in differing_keys(args[0], a, keys)})
        if diff:
            notes.append(f"{stage}: settings differ between seeds: {', '.join(diff)}")
    return notes


def selection_splits(runs: list[Run], members: list[str]) -> list[str]:
    """Sorted selection splits named in the members' classifier summaries."""
    return sorted({
        str(r.summary.get("selection_split"))
        for r in runs
        if r.exp in members and r.stage in CLS_STAGES and r.summary
    })


def pretrain_row(runs: list[Run], members: list[str]) -> list[Cell]:
    """Epochs, losses, kNN accuracy and wall time of a group's pretraining."""
    return [
        summary_cell(runs, members, PRETRAIN, "epochs", digits=0),
        summary_cell(runs, members, PRETRAIN, "final_train_loss", digits=LOSS_DIGITS,
                     status=False),
        summary_cell(runs, members, PRETRAIN, "final_eval_loss", digits=LOSS_DIGITS,
                     status=False),
        summary_cell(runs, members, PRETRAIN, "knn_acc", PERCENT, status=False),
        summary_cell(runs, members, PRETRAIN, "wall_seconds", 1 / SECONDS_PER_MINUTE,
                     MINUTE_DIGITS, status=False),
    ]


PRETRAIN_COLUMNS = ["epochs", "final train loss", "final eval loss", "final kNN acc (%)",
                    "wall time (min)"]


def pretrain_table(runs: list[Run]) -> Table:
    """One row per experiment group with a pretraining stage."""
    groups = group_experiments(runs)
    rows = [
        (f"`{group}`", pretrain_row(runs, members))
        for group, members in groups.items()
        if any(find_run(runs, exp, PRETRAIN) for exp in members)
    ]
    return Table("pretrain", "MAE pretraining", ["experiment", *PRETRAIN_COLUMNS], rows)


def main_table(runs: list[Run], group: str) -> Table:
    """Scratch / fine-tuned / linear probes of one experiment group (mean ± std over seeds)."""
    members = group_experiments(runs).get(group, [])
    splits = selection_splits(runs, members)
    split = "/".join(splits) if splits else "selection-split"
    columns = ["classifier", "final test acc (%)", f"best {split} acc (%)",
               f"test acc at best-{split} epoch (%)", "epochs",
               "wall time incl. feature extraction (min)"]
    rows = [(label, [
        summary_cell(runs, members, stage, "final_test_acc", PERCENT),
        summary_cell(runs, members, stage, "best_val_acc", PERCENT, status=False),
        summary_cell(runs, members, stage, "test_acc_at_best", PERCENT, status=False),
        summary_cell(runs, members, stage, "epochs", digits=0, status=False),
        summary_cell(runs, members, stage, "total_seconds", 1 / SECONDS_PER_MINUTE,
                     MINUTE_DIGITS, status=False),
    ]) for stage, label in CLS_STAGES.items()]
    pre = dict(zip(PRETRAIN_COLUMNS, pretrain_row(runs, members), strict=True))
    has_pretrain = any(find_run(runs, exp, PRETRAIN) for exp in members)
    notes = [f"MAE pretraining: {', '.join(f'{k} {c.text}' for k, c in pre.items())}"
             ] if has_pretrain else []
    if len(splits) > 1:
        notes.append(f"runs differ in selection split ({', '.join(splits)}), see summary.json")
    notes += seed_notes(runs, members)
    return Table(f"main:{group}", f"Classification: `{group}`", columns, rows, notes)


def pretrain_configs(runs: list[Run]) -> dict[str, dict]:
    """Group -> pretraining settings (first seed with a readable args.json)."""
    configs = {}
    for group, members in group_experiments(runs).items():
        args = stage_args(runs, members, PRETRAIN)
        if args:
            configs[group] = {k: args[0].get(k) for k in PRETRAIN_CONFIG_KEYS}
    return configs


def is_variant(config: dict, base: dict, key: str) -> bool:
    """config differs from base in key (and the keys coupled to it) only."""
    diff = set(differing_keys(config, base, PRETRAIN_CONFIG_KEYS)) - set(COUPLED_KEYS.get(key, ()))
    return diff == {key}


def find_ablation_base(runs: list[Run]) -> str | None:
    """Group with the default decoder/mask settings that has the most one-key variants."""
    configs = pretrain_configs(runs)
    candidates = sorted(g for g, c in configs.items()
                        if all(c.get(k) == v for k, v in ABLATION_DEFAULTS.items()))

    def n_variants(group):
        return sum(is_variant(c, configs[group], k) for c in configs.values()
                   for k in ABLATION_DEFAULTS)

    return max(candidates, key=n_variants, default=None)


def ablation_groups(runs: list[Run], key: str, base: str) -> dict:
    """Value of key -> groups: base plus the groups that differ from it only in key."""
    configs = pretrain_configs(runs)
    if base not in configs:
        return {}
    by_value = {configs[base][key]: [base]}
    for group, config in configs.items():
        if group != base and is_variant(config, configs[base], key):
            by_value.setdefault(config[key], []).append(group)
    return by_value


def ablation_label(value, groups: list[str], base: str, configs: dict, key: str) -> str:
    """Row label: the value, '(default)' and any coupled setting that differs from the base."""
    label = f"{value}" + (" (default)" if base in groups else "")
    for coupled in COUPLED_KEYS.get(key, ()):
        values = sorted({str(configs[g].get(coupled)) for g in groups} - {
            str(configs[base].get(coupled))})
        label += "".join(f" ({coupled}={v})" for v in values)
    return label


def ablation_notes(runs: list[Run], key: str, base: str | None, by_value: dict) -> list[str]:
    """Which experiment is the default and which variants' classifier settings differ."""
    configs = pretrain_configs(runs)
    if base is None:
        defaults = ", ".join(f"{k}={v}" for k, v in ABLATION_DEFAULTS.items())
        return [f"no experiment with the default pretraining settings ({defaults}) found"]
    if base not in configs:
        return [f"no readable {PRETRAIN}/args.json for the default experiment `{base}`"]
    config = configs[base]
    notes = [(f"default experiment `{base}` ({config.get('total_epoch')} pretraining epochs on "
              f"{config.get('dataset')}); each other row changes only {key}")]
    groups = group_experiments(runs)
    for stage in ABLATION_COLUMNS:
        ref = stage_args(runs, groups[base], stage)[:1]
        for group in sorted({g for gs in by_value.values() for g in gs} - {base}):
            args = stage_args(runs, groups[group], stage)[:1]
            diff = differing_keys(ref[0], args[0], CLS_CONFIG_KEYS) if ref and args else []
            if diff:
                notes.append(f"`{group}` {stage} differs from the default in {', '.join(diff)}")
    return notes


def value_order(value) -> tuple:
    """Sort key: numbers in order, then anything else (e.g. a missing setting) by its text."""
    is_number = isinstance(value, (int, float))
    return (not is_number, value if is_number else 0, str(value))


def ablation_table(runs: list[Run], key: str, base: str | None = None) -> Table:
    """MAE Table-1-style ablation of key: rows = values, columns = fine-tune / linear probe."""
    base = base or find_ablation_base(runs)
    by_value = ablation_groups(runs, key, base) if base else {}
    groups, configs = group_experiments(runs), pretrain_configs(runs)
    keys = sorted(set(ABLATION_VALUES[key]) | set(by_value), key=value_order)
    rows = []
    for value in keys:
        names = by_value.get(value, [])
        members = [exp for g in names for exp in groups[g]]
        label = ablation_label(value, names, base, configs, key) if names else f"{value}"
        cells = [Cell(", ".join(f"`{g}`" for g in names) or DASH)]
        cells += [summary_cell(runs, members, stage, "final_test_acc", PERCENT)
                  for stage in ABLATION_COLUMNS]
        rows.append((label, cells))
    columns = [ABLATION_TITLES[key], "experiment", *ABLATION_COLUMNS.values()]
    notes = ablation_notes(runs, key, base, by_value)
    return Table(f"ablation:{key}", f"Ablation: {ABLATION_TITLES[key]}", columns, rows, notes,
                 keys)


def main_groups(runs: list[Run], ablation_base: str | None = None) -> list[str]:
    """Groups that get a main table: all except the one-key variants of the ablation base."""
    base = ablation_base or find_ablation_base(runs)
    variants = {g for key in ABLATION_DEFAULTS for gs in
                (ablation_groups(runs, key, base) if base else {}).values() for g in gs}
    return [g for g in group_experiments(runs) if g == base or g not in variants]


def main_tables(runs: list[Run], ablation_base: str | None = None) -> list[Table]:
    """main_table of every group in main_groups."""
    return [main_table(runs, group) for group in main_groups(runs, ablation_base)]


def build_tables(runs: list[Run], ablation_base: str | None = None) -> list[Table]:
    """All tables of the report, in order; ablation tables only where an experiment with the
    default decoder and mask settings exists (a study without ablations gets none)."""
    base = ablation_base or find_ablation_base(runs)
    ablations = [ablation_table(runs, key, base) for key in ABLATION_DEFAULTS] if base else []
    return [pretrain_table(runs), *main_tables(runs, ablation_base), *ablations]


def to_markdown(table: Table) -> str:
    """The table as a GitHub Markdown table with its title and notes."""
    lines = [f"### {table.title}", "", "| " + " | ".join(map(escape, table.columns)) + " |",
             "|" + "---|" * len(table.columns)]
    lines += [f"| {escape(label)} | " + " | ".join(escape(c.text) for c in cells) + " |"
              for label, cells in table.rows]
    if not table.rows:
        lines.append("| (no runs) |" + " |" * (len(table.columns) - 1))
    return "\n".join(lines + [""] + [f"- {note}" for note in table.notes]) + "\n"


def escape(text: str) -> str:
    """text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_csv(tables: list[Table]) -> str:
    """Long format: table,row,column,value,std,n,text (value empty where there is no number)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["table", "row", "column", "value", "std", "n", "text"])
    for table in tables:
        for label, cells in table.rows:
            for column, cell in zip(table.columns[1:], cells, strict=True):
                writer.writerow([table.name, label, column, optional(cell.value),
                                 optional(cell.std), cell.n, cell.text])
    return buf.getvalue()


def optional(value) -> str:
    """repr of a number, '' for None."""
    return "" if value is None else repr(value)


# ----------------------------------------------------------------------------- the study
# (pandas: one row per finished run; groupby gives mean ± std (n) over pretraining seeds)

KNN = "mae-knn"  # baselines.py stages
PIXEL_STAGES = {"pixels-lin": "linear probe on raw pixels", "pixels-knn": "kNN on raw pixels"}
ACC_KEYS = {"final_test_acc": "final test acc (%)", "best_val_acc": "best val acc (%)",
            "test_acc_at_best": "test acc at best-val epoch (%)"}
STUDY_KEYS = {"decoder_layer": "depth", "decoder_dim": "width", "mask_ratio": "mask"}
# The paper's Table 1 (ViT-L, ImageNet-1K; fine-tune / linear probe top-1 %), as transcribed
# in issue 13. The search tool found no copy of the paper's text to check them against:
# UNVERIFIED. The mask ratio (Figure 5) is given as its trend only.
PAPER_TABLE1 = {
    "decoder_layer": {1: (84.8, 65.5), 2: (84.9, 70.0), 4: (84.9, 71.9), 8: (84.9, 73.5),
                      12: (84.4, 73.3)},
    "decoder_dim": {128: (84.9, 69.1), 256: (84.8, 71.3), 512: (84.9, 73.5), 768: (84.4, 73.1),
                    1024: (84.3, 73.1)},
}
PAPER_TRENDS = {
    "decoder_layer": ("deeper decoder -> better probe, fine-tune flat", 1, 8),
    "decoder_dim": ("wider decoder -> better probe up to 0.5x-1x the encoder width, "
                    "fine-tune flat", None, None),
    "mask_ratio": ("75% best for fine-tune and probe; the probe falls off on either side "
                   "(Figure 5, trend only)", None, None),
}
PAPER_NOTE = ("paper values as transcribed in issue 13, not checked against the paper's text "
              "(unverified)")


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """One row per finished run: exp, group, seed, stage, the summary numbers and the
    pretraining settings of its group (from the MAE run's args.json)."""
    configs = pretrain_configs(runs)
    rows = []
    for r in runs:
        if r.summary is None:
            continue
        match = SEED_SUFFIX.search(r.exp)
        row = {"exp": r.exp, "group": group_name(r.exp), "seed": int(match.group(1)) if match
               else None, "stage": r.stage, "pool": r.args.get("pool"),
               "block": r.args.get("block"), "base_lr": r.args.get("base_learning_rate"),
               "selection_split": r.summary.get("selection_split"),
               "paired": pairing(runs, r)}
        for key in (*ACC_KEYS, "total_seconds", "epochs"):
            value = r.summary.get(key)
            row[key] = float(value) if isinstance(value, (int, float)) else float("nan")
        row.update(configs.get(group_name(r.exp), {}))
        rows.append(row)
    return pd.DataFrame(rows)


def pairing(runs: list[Run], run: Run) -> str:
    """'yes' if a fine-tune/probe of this experiment's MAE started from that very file (the
    summaries' pretrained_sha256 == model_sha256), 'no' if not, 'legacy' without hashes."""
    if not run.stage.startswith("pretrain-") and run.stage != KNN:
        return "n/a"
    mae = find_run(runs, run.exp, PRETRAIN)
    if mae is None:  # e.g. a search row probing another experiment's MAE
        return "n/a"
    ours = run.summary.get("pretrained_sha256") if run.summary else None
    theirs = mae.summary.get("model_sha256") if mae is not None and mae.summary else None
    if ours is None or theirs is None:
        return "legacy"
    return "yes" if ours == theirs else "no"


def mean_std_n(values: pd.Series, digits: int = ACC_DIGITS) -> str:
    """'mean ± std (n)' of the non-NaN values (std over seeds, ddof=1), or DASH."""
    values = values.dropna()
    if values.empty:
        return DASH
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f} (n={len(values)})"


def frame_markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table of frame (index as the first column); `|` escaped."""
    header = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(map(escape, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(escape(v) for v in (index, *row)) + " |"
              for index, row in zip(frame.index, frame.itertuples(index=False), strict=True)]
    return "\n".join(lines) + "\n"


def usable(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs a table may use: everything but classifiers paired with another MAE file."""
    return frame[frame["paired"] != "no"] if "paired" in frame else frame


def stage_values(frame: pd.DataFrame, groups: list[str], stage: str,
                 key: str = "final_test_acc", scale: float = PERCENT) -> pd.Series:
    """key * scale of the finished runs of groups at stage (one value per seed)."""
    if frame.empty:
        return pd.Series(dtype=float)
    rows = usable(frame)
    rows = rows[rows["group"].isin(groups) & (rows["stage"] == stage)]
    return rows[key] * scale


def study_ablation(frame: pd.DataFrame, runs: list[Run], key: str, base: str) -> dict:
    """Table 1 layout for one ablation: a DataFrame (rows = setting), the numbers behind it,
    the generated sentence and notes."""
    by_value = ablation_groups(runs, key, base) if base else {}
    numbers, cells = {}, {}
    for value in sorted(by_value, key=value_order):
        ft = stage_values(frame, by_value[value], "pretrain-cls")
        lin = stage_values(frame, by_value[value], "pretrain-cls-lin")
        numbers[value] = (ft, lin)
        paper = PAPER_TABLE1.get(key, {}).get(value)
        label = f"{value}" + (" (main arm)" if base in by_value[value] else "")
        cells[label] = {"fine-tune (%)": mean_std_n(ft), "linear probe (%)": mean_std_n(lin),
                        "kNN (%)": mean_std_n(stage_values(frame, by_value[value], KNN))}
    table = pd.DataFrame.from_dict(cells, orient="index")
    table.index.name = ABLATION_TITLES[key]
    paper = pd.DataFrame.from_dict(
        {v: {"paper fine-tune (%)": ft, "paper linear probe (%)": lin}
         for v, (ft, lin) in PAPER_TABLE1.get(key, {}).items()}, orient="index")
    paper.index.name = ABLATION_TITLES[key]
    base_ft, base_lin = numbers.get(configs_value(runs, base, key), ([], []))
    noise = f"{pd.Series(base_lin).std():.{ACC_DIGITS}f}" if len(base_lin) > 1 else "n/a"
    notes = [f"final-epoch accuracy on the whole test split; mean ± std (n) over pretraining "
             f"seeds; a row with n=1 has one seed: compare it with the main arm's spread "
             f"(probe std {noise} points) as the noise floor",
             f"paper trend: {PAPER_TRENDS[key][0]}"]
    return {"table": table, "paper": paper, "numbers": numbers,
            "sentence": ablation_sentence(key, numbers, base_lin), "notes": notes}


def configs_value(runs: list[Run], group: str | None, key: str):
    """The pretraining setting key of group, or None."""
    return pretrain_configs(runs).get(group, {}).get(key) if group else None


def ablation_sentence(key: str, numbers: dict, noise_runs) -> str:
    """'lowest -> highest value: probe +X ± Y points, fine-tune +Z; ...' judged against the
    main arm's seed spread: inside the noise when |difference| <= 2 std of the difference."""
    values = [v for v, (ft, lin) in numbers.items() if len(lin.dropna()) and len(ft.dropna())]
    if len(values) < 2:
        return f"{ABLATION_TITLES[key]}: fewer than two finished rows; no finding yet."
    lo, hi = values[0], values[-1]
    noise = pd.Series(noise_runs, dtype=float).std() if len(noise_runs) > 1 else float("nan")
    parts = []
    for name, index in (("probe", 1), ("fine-tune", 0)):
        diff = numbers[hi][index].mean() - numbers[lo][index].mean()
        # std of a difference of two means of (n_hi, n_lo) seeds with the main arm's spread
        spread = noise * (1 / len(numbers[hi][index]) + 1 / len(numbers[lo][index])) ** 0.5
        verdict = "no spread to judge against (one seed)" if spread != spread else (
            "inside the noise" if abs(diff) <= 2 * spread else
            ("higher" if diff > 0 else "lower"))
        parts.append(f"{name} {diff:+.{ACC_DIGITS}f} ± {spread:.{ACC_DIGITS}f} points "
                     f"({verdict})")
    return (f"{ABLATION_TITLES[key]} {lo} -> {hi}: " + "; ".join(parts)
            + f". Paper: {PAPER_TRENDS[key][0]}.")


BASELINE_ROWS = (  # (group suffix, stage, row label)
    ("baseline", "pixels-lin", "linear probe on raw pixels"),
    ("baseline", "pixels-knn", "kNN on raw pixels"),
    ("main", "scratch-cls-lin", "linear probe of a random encoder"),
    ("main", "scratch-cls", "scratch, same epochs as fine-tuning"),
    ("scratch_long", "scratch-cls", "scratch, long budget"),
    ("main", "pretrain-cls-lin", "MAE linear probe"),
    ("main", "pretrain-cls", "MAE fine-tune"),
    ("main", KNN, "MAE kNN"),
)


def baselines_frame(frame: pd.DataFrame, main: str = "main") -> pd.DataFrame:
    """The baselines table: every row on the same labelled subset, validation and test split."""
    rows = {}
    for group, stage, label in BASELINE_ROWS:
        group = main if group == "main" else group
        minutes = stage_values(frame, [group], stage, "total_seconds", 1 / SECONDS_PER_MINUTE)
        rows[label] = {
            "experiment": f"`{group}` {stage}",
            **{title: mean_std_n(stage_values(frame, [group], stage, k))
               for k, title in ACC_KEYS.items()},
            "epochs": mean_std_n(stage_values(frame, [group], stage, "epochs", 1.0), 0),
            "wall time incl. features (min)": mean_std_n(minutes, MINUTE_DIGITS)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table


def search_frame(frame: pd.DataFrame, reference: str = "") -> pd.DataFrame:
    """The validation-only search: every probe/kNN run of probe_lr* and search_* experiments
    and of the reference experiment (the main arm's seed they vary), by best validation
    accuracy (test accuracy not shown: it plays no part in the choice)."""
    if frame.empty:
        return pd.DataFrame()
    searched = frame["group"].str.match(r"(probe_lr|search_)")
    if not searched.any():
        return pd.DataFrame()
    rows = frame[(searched | (frame["exp"] == reference)) & frame["stage"].isin(
        ("pretrain-cls-lin", "mae-lin", KNN))]
    if rows.empty:
        return pd.DataFrame()
    table = pd.DataFrame({
        "experiment": "`" + rows["exp"] + "`", "stage": rows["stage"],
        "pool": rows["pool"].fillna("cls"), "block": rows["block"].fillna(-1).astype(int),
        "probe base lr": rows["base_lr"].where(rows["stage"] != KNN, DASH),
        "best val acc (%)": (rows["best_val_acc"] * PERCENT)
        .map(lambda v: f"{v:.{ACC_DIGITS}f}"),
        "selection split": rows["selection_split"]})
    table = table.iloc[(-rows["best_val_acc"]).argsort(kind="stable").to_numpy()]
    return table.set_index("experiment")


# ----------------------------------------------------------------------------- figures


def new_figure(ncols: int = 1) -> tuple[Figure, list]:
    """A headless (Agg) figure with ncols side-by-side axes."""
    width, height = FIG_PANEL_SIZE
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def finish_axes(ax, xlabel: str, ylabel: str) -> None:
    """Labels, and a legend or a 'no data yet' note."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlabel == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.lines or ax.containers:
        ax.legend(fontsize=LEGEND_FONT_SIZE)
    else:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)


def series(run: Run, column: str) -> tuple[list, list]:
    """(epochs, values) of a metrics column, without the empty (nan) cells."""
    points = [(r["epoch"], r[column]) for r in run.rows
              if not math.isnan(r.get(column, float("nan")))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_pretrain_curves(runs: list[Run]) -> Figure:
    """Train and eval reconstruction loss vs epoch, one line per experiment."""
    fig, axes = new_figure(2)
    for run in (r for r in runs if r.stage == PRETRAIN):
        for ax, column in zip(axes, ("train_loss", "eval_loss"), strict=True):
            ax.plot(*series(run, column), label=run.exp)
    for ax, name in zip(axes, ("train loss", "eval loss"), strict=True):
        ax.set_title(f"MAE pretraining: {name}")
        finish_axes(ax, "epoch", name)
    return fig


def plot_knn(runs: list[Run]) -> Figure:
    """kNN accuracy of the encoder vs epoch for the pretraining runs that logged it."""
    fig, (ax,) = new_figure()
    for run in (r for r in runs if r.stage == PRETRAIN):
        epochs, acc = series(run, "knn_acc")
        if epochs:
            ax.plot(epochs, [a * PERCENT for a in acc], marker="o", label=run.exp)
    ax.set_title("kNN accuracy during pretraining")
    finish_axes(ax, "epoch", "kNN acc (%)")
    return fig


def plot_classifier_curves(runs: list[Run], exp: str) -> Figure:
    """Loss (train dashed, val solid) and accuracy (train dashed, test solid) per classifier."""
    fig, (loss_ax, acc_ax) = new_figure(2)
    for stage, label in CLS_STAGES.items():
        run = find_run(runs, exp, stage)
        if run is None:
            continue
        line, = loss_ax.plot(*series(run, "val_loss"), label=f"{label} val")
        loss_ax.plot(*series(run, "train_loss"), linestyle="--", color=line.get_color())
        epochs, test = series(run, "test_acc")
        acc_ax.plot(epochs, [a * PERCENT for a in test], label=f"{label} test",
                    color=line.get_color())
        epochs, train = series(run, "train_acc")
        acc_ax.plot(epochs, [a * PERCENT for a in train], linestyle="--", color=line.get_color())
    loss_ax.set_title(f"{exp}: loss (dashed = train)")
    acc_ax.set_title(f"{exp}: accuracy (dashed = train)")
    finish_axes(loss_ax, "epoch", "loss")
    finish_axes(acc_ax, "epoch", "accuracy (%)")
    return fig


def plot_ablation(table: Table) -> Figure:
    """Fine-tune and linear-probe accuracy vs the ablated value (error bars = std over seeds)."""
    fig, axes = new_figure(len(ABLATION_COLUMNS))
    for ax, column in zip(axes, ABLATION_COLUMNS.values(), strict=True):
        index = table.columns.index(column) - 1
        points = [(i, cells[index]) for i, (_, cells) in enumerate(table.rows)
                  if cells[index].value is not None]
        if points:
            ax.errorbar([p[0] for p in points], [p[1].value for p in points],
                        yerr=[p[1].std or 0.0 for p in points], marker="o", capsize=3,
                        label=column.split(":")[0])
        ax.set_xticks(range(len(table.keys)), [str(k) for k in table.keys])
        ax.set_title(f"{table.title}: {column.split(':')[0]}")
        finish_axes(ax, table.columns[0], "final test acc (%)")
    return fig


def build_figures(runs: list[Run], tables: list[Table],
                  ablation_base: str | None = None) -> dict[str, Figure]:
    """PNG file name -> figure, for every figure of the report."""
    figures = {PNG_NAMES["pretrain"]: plot_pretrain_curves(runs), PNG_NAMES["knn"]: plot_knn(runs)}
    groups = group_experiments(runs)
    for group in main_groups(runs, ablation_base):
        for exp in groups[group]:
            if any(find_run(runs, exp, stage) for stage in CLS_STAGES):
                figures[f"classifier_{exp}.png"] = plot_classifier_curves(runs, exp)
    for table in tables:
        if table.name.startswith("ablation:"):
            figures[f"ablation_{table.name.split(':')[1]}.png"] = plot_ablation(table)
    return figures


# ----------------------------------------------------------------------------- writing


def save_figure(fig: Figure, path: Path) -> None:
    """Render fig to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    atomic_write_bytes(path, buf.getvalue())


def copy_reconstructions(runs: list[Run], out: Path) -> list[tuple[str, str]]:
    """Copy each experiment's latest reconstruction grid to out; returns (caption, file name)."""
    copied = []
    for exp, path in latest_reconstructions(runs):
        name = f"reconstruction_{exp}.png"
        atomic_write_bytes(out / name, path.read_bytes())
        copied.append((f"`{exp}`, {path.parent.name}", name))
    return copied


def study_markdown(runs: list[Run], base: str | None) -> tuple[str, dict[str, Figure]]:
    """The study's sections (baselines, one Table-1-style table per ablation with the paper
    alongside, the validation-only search) and their figures, around the main arm `base`
    (--ablation_base, as commands/study.sh passes it); '' without one."""
    frame = runs_frame(runs)
    if frame.empty or base is None or base not in set(frame["group"]):
        return "", {}
    parts = ["## The study", "",
             "Every row uses the same labelled training images, validation split and whole test "
             "split. Final = last epoch; best = best epoch on the validation split (selection "
             "never sees the test split).", "", "### Baselines", "",
             frame_markdown(baselines_frame(frame, base))]
    figures = {}
    for key in ABLATION_DEFAULTS:
        ablation = study_ablation(frame, runs, key, base)
        if ablation["table"].empty:
            continue
        parts += [f"### Ablation: {ABLATION_TITLES[key]}", "", frame_markdown(ablation["table"])]
        if not ablation["paper"].empty:
            parts += ["The paper's Table 1 (ViT-L, ImageNet-1K):", "",
                      frame_markdown(ablation["paper"]), f"- {PAPER_NOTE}"]
        parts += [f"- {note}" for note in ablation["notes"]]
        parts += ["", f"**Finding:** {ablation['sentence']}", ""]
        name = f"study_{STUDY_KEYS[key]}.png"
        figures[name] = plot_study_ablation(ablation["numbers"], ABLATION_TITLES[key])
        parts += [f"![{ABLATION_TITLES[key]}]({name})", ""]
    seeds = frame.loc[frame["group"].str.match(r"(probe_lr|search_)"), "seed"].dropna()
    search = search_frame(frame, f"{base}_seed{int(seeds.iloc[0])}" if len(seeds) else "")
    if not search.empty:
        parts += ["### Validation-only search (probe lr, pooling, block, pretraining variants)",
                  "", frame_markdown(search),
                  "- sorted by best validation accuracy; test accuracies are in the run files "
                  "and are not used to choose", ""]
    legacy = frame[frame["paired"] == "legacy"]["exp"].nunique()
    if legacy:
        parts.append(f"- {legacy} experiment(s) have runs without pretrained_sha256 / "
                     "model_sha256 (written before hashes were recorded): shown, but not "
                     "checked to come from their experiment's MAE file")
    if (frame["paired"] == "no").any():
        parts.append("- runs whose pretrained_sha256 differs from their MAE's model_sha256 are "
                     "left out of the study tables: " + ", ".join(sorted(
                         frame.loc[frame["paired"] == "no", "exp"] + "/"
                         + frame.loc[frame["paired"] == "no", "stage"])))
    return "\n".join(parts) + "\n", figures


def plot_study_ablation(numbers: dict, title: str) -> Figure:
    """Fine-tune and probe accuracy (mean, error bar = std over seeds) vs the setting."""
    fig, axes = new_figure(2)
    labels = [str(v) for v in numbers]
    for ax, (index, name) in zip(axes, ((0, "fine-tune"), (1, "linear probe")), strict=True):
        means = [numbers[v][index].mean() for v in numbers]
        stds = [numbers[v][index].std() if len(numbers[v][index]) > 1 else 0.0
                for v in numbers]
        if any(m == m for m in means):
            ax.errorbar(range(len(labels)), means, yerr=stds, marker="o", capsize=3, label=name)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(f"{title}: {name}")
        finish_axes(ax, title, "final test acc (%)")
    return fig


def render_markdown(command: str, tables: list[Table], images: list[tuple[str, str]],
                    study: str = "") -> str:
    """results.md: the command that made it, the tables, then the figures."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Results", "",
        (f"Generated by `{command}` on {stamp} "
         "from the run files (args.json, metrics.csv, summary.json); do not edit by hand."), "",
        ("Final = last epoch; best = highest accuracy over epochs on the model-selection split "
         "named in the header (summary.json selection_split). Seeds of one experiment "
         "(`<name>_seed<N>`) are shown as mean ± sample std (n = finished seeds). "
         f"{DASH} (status) marks a run without a result."), "",
    ]
    body = [study] if study else []
    body += [to_markdown(t) for t in tables]
    figures = ["## Figures", ""] + [f"![{caption}]({name})\n" for caption, name in images]
    return "\n".join(header + body + figures)


def write_report(root, out=None, ablation_base: str | None = None,
                 stale_hours: float = STALE_HOURS) -> Path:
    """Write results.md, results.csv and the PNG figures of root into out; returns results.md.
    A root that is not a folder, or an unwritable out, is a UsageError (nothing is created)."""
    if not Path(root).is_dir():
        raise UsageError(f"--outputs_root {root} is not a folder of run folders")
    out = Path(out) if out is not None else Path(root) / "report"
    runs = collect_runs(root, stale_hours)
    tables = build_tables(runs, ablation_base)
    figures = build_figures(runs, tables, ablation_base)
    study, study_figures = study_markdown(runs, ablation_base)
    command = f"python report.py --outputs_root {root} --out {out} --stale_hours {stale_hours}"
    command += f" --ablation_base {ablation_base}" if ablation_base else ""
    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_temp_files_here(out)
        for name, fig in {**figures, **study_figures}.items():
            save_figure(fig, out / name)
        images = [(name.removesuffix(".png").replace("_", " "), name) for name in figures]
        images += copy_reconstructions(runs, out)
        atomic_write_text(out / "results.csv", to_csv(tables))
        atomic_write_text(out / "results.md", render_markdown(command, tables, images, study))
    except OSError as e:
        raise UsageError(f"cannot write the report to {out}: "
                         f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"
                         ) from None
    return out / "results.md"


def remove_temp_files_here(out: Path) -> None:
    """Delete .tmp-* files a killed report left in out (not in subfolders: run folders)."""
    for path in out.glob(TEMP_PREFIX + "*"):
        if path.is_file():
            path.unlink()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    # input
    parser.add_argument("--outputs_root", default="outputs",
                        help="folder holding <exp_name>/<stage>/ run folders")
    parser.add_argument("--stale_hours", type=float, default=STALE_HOURS,
                        help="an unfinished run is 'running' while its .lock file exists and a "
                             "file in it was written within this many hours, else 'stopped'")
    parser.add_argument("--ablation_base", default=None,
                        help="experiment used as the default row of the ablation tables "
                             "(default: the experiment with decoder depth 4, width 192, "
                             "mask 0.75 that has the most one-setting variants); given, it "
                             "also adds the study's sections (baselines, Table-1-style "
                             "ablations beside the paper, validation-only search)")
    # output
    parser.add_argument("--out", default=None,
                        help="folder for results.md, results.csv and the PNG figures "
                             "(default: <outputs_root>/report)")
    return parser


def main(args: argparse.Namespace) -> None:
    path = write_report(args.outputs_root, args.out, args.ablation_base, args.stale_hours)
    print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main, get_args_parser())
