"""Tables and figures for the MAE runs, built only from the files the runs write.

Reads <outputs_root>/<exp_name>/<stage>/{args.json, metrics.csv, summary.json} into one pandas
DataFrame (one row per run folder; reporting/run_table.py) and writes results.md, results.csv (long
format: one row per table cell, with its dataset) and PNG figures. Runs of different datasets
(args.json's dataset) are never in one table or plot: each dataset has its own tables and
figures (named _<dataset> where there are several). Experiments named <name>_seed<N> form a
group, reported as mean ± sample std (n) over its finished seeds (groupby; reporting/cells.py on
reporting/stats.py). A run without a result shows as "—" with its status; corrupt metrics rows are
skipped. A fine-tune, probe or kNN run counts for its experiment's MAE only when its summary's
pretrained_sha256 matches the MAE's model_sha256. With --ablation_base (commands/study.sh) the
study's baselines and validation-only search tables are added (reporting/tables.py; their
findings: reporting/findings.py; figures: reporting/figures.py); for commands/study.sh's v2
study, its pilot, headline (reporting/headline.py), ablation and endpoint tables instead. Bad
input is one `error:` line, exit 2.

    python report.py --outputs_root outputs --out outputs/report
    python report.py --outputs_root results/superseded/fashion_mnist_study_v1/runs \
        --out results/superseded/fashion_mnist_study_v1 --ablation_base main \
        --environment results/superseded/fashion_mnist_study_v1/environment
"""

import argparse
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from mae_cifar.cli import UsageError, positive_float, run_cli
from mae_cifar.fileio import TEMP_PREFIX, atomic_write_bytes, atomic_write_text
from mae_cifar.reporting.cells import CSV_COLUMNS, DASH, TEST_SPLIT, wide
from mae_cifar.reporting.figures import build_figures, figure_notes, save_figure
from mae_cifar.reporting.findings import RULE
from mae_cifar.reporting.run_table import (
    FINISHED,
    STALE_HOURS,
    by_dataset,
    collect_runs,
    latest_reconstructions,
)
from mae_cifar.reporting.tables import PAPER_NOTE, build_tables, parts_table

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
    """Long format: dataset,table,row,column,value,std,n,low,high,text (value empty where
    there is no number; dataset empty for the study's parts table)."""
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


def datasets_line(frame: pd.DataFrame) -> str:
    """Which dataset(s) the report covers (args.json's `dataset`), and that several are never
    mixed."""
    names = list(by_dataset(frame)) if len(frame) else []
    shown = ", ".join(f"`{escape(name)}`" for name in names)
    if len(names) < 2:
        return f"Dataset: {shown or 'none (no runs)'} (args.json's `dataset` of every run)."
    return (f"Datasets: {shown} (args.json's `dataset`). Each has its own section, tables and "
            "figures: no table, mean or plot mixes runs of two datasets.")


def selection_text(frame: pd.DataFrame) -> str:
    """What the model-selection split sees: never the test split, unless a finished run had
    no validation split (then its columns say so)."""
    if not (frame["status"].eq(FINISHED) & frame["selection_split"].eq(TEST_SPLIT)).any():
        return "selection never sees the test split"
    return (f"runs without a validation split chose their best epoch on the {TEST_SPLIT} "
            f"split, and their columns say 'selected on {TEST_SPLIT}': such a best is "
            "optimistic, not a held-out result")


def sections(tables: list[dict]) -> list[str]:
    """Each table as Markdown, under a heading per dataset where there are several (the
    study's parts table, of no one dataset, last under its own)."""
    datasets = {t["dataset"] for t in tables if "dataset" in t}
    parts, heading = [], None
    for t in tables:
        dataset = t.get("dataset")
        if len(datasets) > 1 and dataset != heading:
            heading = dataset
            parts.append(f"## Dataset `{escape(dataset)}`\n" if dataset is not None
                         else "## Every dataset\n")
        parts.append(markdown(t))
    return parts


def render_markdown(command: str, frame: pd.DataFrame, tables: list[dict],
                    images: list[tuple[str, str]]) -> str:
    """results.md: the command that made it, the dataset(s), the tables, then the figures."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    notes = pairing_notes(frame) + figure_notes(frame)
    header = [
        "# Results", "",
        (f"Generated by `{command}` on {stamp} "
         "from the run files (args.json, metrics.csv, summary.json); do not edit by hand."), "",
        datasets_line(frame), "",
        ("Final = last epoch; best = highest accuracy over epochs on the model-selection split "
         f"named in the header (summary.json selection_split; {selection_text(frame)}). "
         "Seeds of one experiment (`<name>_seed<N>`; the seed is args.json's) are "
         "shown as mean ± sample std (n = finished seeds; 95% t-interval, df = n - 1, where "
         "n >= 2 and the std is not 0); seeds whose settings differ are not averaged. "
         "Differences are paired by "
         f"seed: {RULE}. "
         f"{DASH} (status) marks a run without a result."), "",
    ]
    body = sections(tables) + (notes + [""] if notes else [])
    figures = ["## Figures", ""] + [f"![{caption}]({name})\n" for caption, name in images]
    return "\n".join(header + body + figures)


# ----------------------------------------------------------------------------- writing


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
    groups = sorted(set(frame["group"]))
    if ablation_base is not None and ablation_base not in groups:
        raise UsageError(f"--ablation_base {ablation_base} names no experiment group under "
                         f"{root} (groups: {', '.join(groups) or 'none'}); give one of them")
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
        atomic_write_text(out / "results.md", render_markdown(command, frame, tables, images))
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
                             "(default, per dataset: the experiment with decoder depth 4, "
                             "width 192, mask 0.75 and a finished pretraining that has the "
                             "most one-setting variants); given, it also adds the study's "
                             "baselines and validation-only search")
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
