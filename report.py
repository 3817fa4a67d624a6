"""Tables and figures for the MAE CIFAR-10 runs, built only from the files the runs write.

Reads <outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json} and writes
results.md, results.csv (long format) and PNG figures. Missing or unfinished runs show as
"—" with their status; corrupt metrics rows are skipped. Experiments named <name>_seed<N>
are grouped and reported as mean ± sample std over the finished seeds.

    python report.py --outputs_root outputs --out outputs/report
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

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fileio import atomic_write_bytes, atomic_write_text

PRETRAIN = "mae-pretrain"
CLS_STAGES = {  # stage folder -> row label in the main table
    "scratch-cls": "scratch",
    "pretrain-cls": "fine-tuned (MAE)",
    "pretrain-cls-lin": "linear probe (MAE encoder)",
    "scratch-cls-lin": "linear probe (random encoder)",
}
STAGES = (PRETRAIN, *CLS_STAGES)
FINISHED = "finished"
DASH = "—"
SEED_SUFFIX = re.compile(r"_seed(\d+)$")

# Pretraining settings that define an experiment; seed and exp_name are what seeds may change.
PRETRAIN_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "mask_ratio",
    "decoder_layer", "decoder_dim", "decoder_head", "emb_dim", "encoder_layer", "encoder_head",
    "patch_size", "norm_pix_loss", "pos_embed", "augment",
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
    mtimes = [p.stat().st_mtime for p in stage_dir.iterdir() if p.is_file()]
    age_hours = (time.time() - max(mtimes, default=0.0)) / SECONDS_PER_HOUR
    return "running" if age_hours < stale_hours else "stopped"


def load_run(stage_dir: Path, stale_hours: float = STALE_HOURS) -> Run:
    """Read one stage folder."""
    summary = read_json(stage_dir / "summary.json")
    finished = bool(summary and summary.get("finished"))
    return Run(
        exp=stage_dir.parent.name,
        stage=stage_dir.name,
        path=stage_dir,
        args=read_json(stage_dir / "args.json") or {},
        rows=read_metrics(stage_dir / "metrics.csv"),
        summary=summary if finished else None,
        status=run_status(stage_dir, finished, stale_hours),
    )


def collect_runs(root, stale_hours: float = STALE_HOURS) -> list[Run]:
    """Every stage folder under root, sorted by experiment then stage; [] if root is absent."""
    root = Path(root)
    if not root.is_dir():
        return []
    exp_dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: exp_order(p.name))
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
        if epoch.isdigit():
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
               f"test acc at best-{split} epoch (%)", "epochs", "wall time (min)"]
    rows = [(label, [
        summary_cell(runs, members, stage, "final_test_acc", PERCENT),
        summary_cell(runs, members, stage, "best_val_acc", PERCENT, status=False),
        summary_cell(runs, members, stage, "test_acc_at_best", PERCENT, status=False),
        summary_cell(runs, members, stage, "epochs", digits=0, status=False),
        summary_cell(runs, members, stage, "wall_seconds", 1 / SECONDS_PER_MINUTE, MINUTE_DIGITS,
                     status=False),
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
    lines = [f"### {table.title}", "", "| " + " | ".join(table.columns) + " |",
             "|" + "---|" * len(table.columns)]
    lines += [f"| {label} | " + " | ".join(c.text for c in cells) + " |"
              for label, cells in table.rows]
    if not table.rows:
        lines.append("| (no runs) |" + " |" * (len(table.columns) - 1))
    return "\n".join(lines + [""] + [f"- {note}" for note in table.notes]) + "\n"


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


def render_markdown(command: str, tables: list[Table], images: list[tuple[str, str]]) -> str:
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
    body = [to_markdown(t) for t in tables]
    figures = ["## Figures", ""] + [f"![{caption}]({name})\n" for caption, name in images]
    return "\n".join(header + body + figures)


def write_report(root, out=None, ablation_base: str | None = None,
                 stale_hours: float = STALE_HOURS) -> Path:
    """Write results.md, results.csv and the PNG figures of root into out; returns results.md."""
    out = Path(out) if out is not None else Path(root) / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs = collect_runs(root, stale_hours)
    tables = build_tables(runs, ablation_base)
    figures = build_figures(runs, tables, ablation_base)
    for name, fig in figures.items():
        save_figure(fig, out / name)
    images = [(name.removesuffix(".png").replace("_", " "), name) for name in figures]
    images += copy_reconstructions(runs, out)
    atomic_write_text(out / "results.csv", to_csv(tables))
    command = f"python report.py --outputs_root {root} --out {out} --stale_hours {stale_hours}"
    command += f" --ablation_base {ablation_base}" if ablation_base else ""
    atomic_write_text(out / "results.md", render_markdown(command, tables, images))
    return out / "results.md"


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
                             "mask 0.75 that has the most one-setting variants)")
    # output
    parser.add_argument("--out", default=None,
                        help="folder for results.md, results.csv and the PNG figures "
                             "(default: <outputs_root>/report)")
    return parser


def main(args: argparse.Namespace) -> None:
    path = write_report(args.outputs_root, args.out, args.ablation_base, args.stale_hours)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
