"""The report's figures, headless (Agg): pretraining loss and kNN accuracy against optimizer
steps, each classifier's curves, and each ablation's accuracy against the ablated value; saved
as PNG atomically. Imports no torch.
"""

import io
import re
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mae_cifar.fileio import atomic_write_bytes
from mae_cifar.reporting.cells import PERCENT, eval_splits, wide
from mae_cifar.reporting.headline import FINE_TUNE_ARM, HEAD, SCRATCH_ARM
from mae_cifar.reporting.run_table import CLS_STAGES, PRETRAIN, by_dataset
from mae_cifar.reporting.tables import ABLATION_STAGES

FIG_PANEL_SIZE = (5.0, 3.6)  # inches per subplot
FIG_DPI = 120
STEPS_LABEL = "optimizer steps"  # x axis of the pretraining figures
LEGEND_FONT_SIZE = "small"


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


def plot_stopping(frame: pd.DataFrame) -> Figure:
    """Validation accuracy vs optimizer steps of the headline's early-stopped classifiers
    (scratch and the MAE fine-tune, every seed): each line ends where patience ran out, a
    star marks the epoch validation chose."""
    fig, (ax,) = new_figure()
    arm = pd.MultiIndex.from_frame(frame[["group", "stage"]])
    runs = frame[arm.isin([FINE_TUNE_ARM, SCRATCH_ARM]) & frame["steps_per_epoch"].notna()]
    for run in runs.itertuples():
        steps, acc = step_series(run, "val_acc", PERCENT)
        if steps:
            line, = ax.plot(steps, acc, label=f"{run.exp} {CLS_STAGES[run.stage]}")
            if pd.notna(run.best_epoch) and pd.notna(run.best_val_acc):
                ax.plot((run.best_epoch + 1) * run.steps_per_epoch, run.best_val_acc * PERCENT,
                        marker="*", markersize=10, color=line.get_color())
    ax.set_title("early stopping: val accuracy (star = chosen epoch)")
    finish_axes(ax, STEPS_LABEL, "val acc (%)")
    return fig


def plot_ablation(result: dict) -> Figure:
    """Fine-tune and linear-probe accuracy vs the ablated value (error bars = std over seeds;
    the tuned probe where the ablation ran it)."""
    fig, axes = new_figure(2)
    rows = wide(result).index
    for ax, stage in zip(axes, result["compared"], strict=True):
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
    """PNG file name -> figure, for every figure of the report: each dataset's own
    (run_table.by_dataset), its name ending in _<dataset> where there are several."""
    parts = by_dataset(frame)
    figures = {}
    for dataset, runs in parts.items():
        own = dataset_figures(runs, [t for t in tables if t.get("dataset") == dataset])
        suffix = f"_{file_safe(dataset)}" if len(parts) > 1 else ""
        figures |= {name.removesuffix(".png") + suffix + ".png": fig for name, fig in own.items()}
    return figures


def file_safe(name: str) -> str:
    """name with every character but letters, digits, '.', '-' and '_' as '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def dataset_figures(frame: pd.DataFrame, tables: list[dict]) -> dict[str, Figure]:
    """PNG file name -> figure, for one dataset's runs and tables."""
    figures = {"pretrain_loss.png": plot_pretrain_curves(frame)}
    pretrain_runs = frame[frame["stage"] == PRETRAIN].itertuples()
    if any(series(run.metrics, "knn_acc")[0] for run in pretrain_runs
           if pd.notna(run.steps_per_epoch)):  # the monitor ran (and its steps are known)
        figures["knn_acc.png"] = plot_knn(frame)
    if any(t["name"] == "headline" for t in tables):
        figures["pretrain_loss_headline.png"] = plot_pretrain_curves(frame[frame["group"] == HEAD])
        figures["early_stopping.png"] = plot_stopping(frame)
    for t in tables:
        if t["name"].startswith("main:"):
            group = t["name"].removeprefix("main:")
            cls = frame[(frame["group"] == group) & frame["stage"].isin(CLS_STAGES)]
            figures |= {f"classifier_{exp}.png": plot_classifier_curves(frame, exp)
                        for exp in cls["exp"].unique()}
        if t["name"].startswith("ablation:"):
            figures[f"ablation_{t['name'].removeprefix('ablation:')}.png"] = plot_ablation(t)
    return figures


def save_figure(fig: Figure, path: Path) -> None:
    """Render fig to PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIG_DPI)
    atomic_write_bytes(path, buf.getvalue())
