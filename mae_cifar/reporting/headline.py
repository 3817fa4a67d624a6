"""The v2 study's headline (commands/study.sh parts head, scratch and pixels): one
table of every arm at the point its validation split chose, and the paired differences the
study asks about, each with its 95% interval and verdict (stats.py). Also the differences
table the ablation endpoints use. Imports no torch.
"""

import pandas as pd

from mae_cifar.reporting.cells import (
    ACC_DIGITS,
    DASH,
    PERCENT,
    SECONDS_PER_MINUTE,
    aggregate_columns,
    table,
)
from mae_cifar.reporting.findings import RULE, SeedFree, arm, best_pixels, pair_arms, pca_stages
from mae_cifar.reporting.run_table import CLS_STAGES, KNN, group_experiments

HEAD, SCRATCH, PIXELS = "head", "scratch", "pixels"  # study.sh's experiment groups
STUDY_GROUPS = (HEAD, SCRATCH, PIXELS)
CHOSEN = "chosen_test_acc"  # headline_frame's column: test accuracy where validation chose
MAE_ROWS = (
    (HEAD, "mae-lin", "MAE encoder: tuned linear probe"),
    (HEAD, KNN, "MAE encoder: tuned kNN"),
    (HEAD, "pretrain-cls", "MAE encoder: fine-tune, early-stopped"),
    (HEAD, "random-lin", "random encoder: tuned linear probe"),
    (HEAD, "random-knn", "random encoder: tuned kNN"),
)
SCRATCH_ROW = (SCRATCH, "scratch-cls", "from scratch, early-stopped")
FINE_TUNE_ARM, SCRATCH_ARM = MAE_ROWS[2][:2], SCRATCH_ROW[:2]  # the early-stopped classifiers
HEADLINE_COLUMNS = [
    ("test acc at the validation choice (%)", CHOSEN, PERCENT, ACC_DIGITS, True),
    ("best val acc (%)", "best_val_acc", PERCENT, ACC_DIGITS, False),
    ("final test acc, last epoch (%)", "final_test_acc_cls", PERCENT, ACC_DIGITS, False),
    ("epochs trained", "epochs", 1.0, 0, False),
    ("epochs to the validation choice", "epochs_to_choice", 1.0, 0, False),
    ("wall time incl. features (min)", "total_seconds", 1 / SECONDS_PER_MINUTE, 1, False),
]
DIFFERENCE_COLUMNS = ("difference (points)", "95% CI (points)", "pairs (seeds)",
                      "smallest detectable (points)", "verdict")


def headline_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """frame with CHOSEN (a classifier's test accuracy at its best validation epoch; a
    baselines.py run's one test evaluation, at its validation-chosen cell; the final one where
    a summary has no test_acc_at_best), final_test_acc_cls (the last epoch's: classifiers
    only) and epochs_to_choice (epochs trained up to and with the validation-chosen one: a
    count, as epochs trained, not the 0-based best_epoch)."""
    is_cls, trained = frame["stage"].isin(CLS_STAGES), ~frame["stage"].str.endswith("-knn")
    return frame.assign(**{
        CHOSEN: frame["test_acc_at_best"].fillna(frame["final_test_acc"]),
        "final_test_acc_cls": frame["final_test_acc"].where(is_cls),
        "epochs": frame["epochs"].where(trained),  # a kNN has no epochs
        "epochs_to_choice": (frame["best_epoch"] + 1).where(trained)})


def headline_members(frame: pd.DataFrame, rows: list[tuple]) -> pd.DataFrame:
    """(row, exp, stage) of each headline row: the group's experiments that ran the stage
    (a pixel kNN runs for one seed by design), or all of them when none has (missing)."""
    groups = group_experiments(frame)
    members = []
    for group, stage, label in rows:
        ran = frame.loc[(frame["group"] == group) & (frame["stage"] == stage), "exp"]
        members += [(label, exp, stage) for exp in (list(ran) or groups.get(group, [None]))]
    return pd.DataFrame(members, columns=["row", "exp", "stage"])


def pixel_rows(frame: pd.DataFrame) -> list[tuple]:
    """(group, stage, label) of the pixel baselines: full, then PCA by width; probes first."""
    pca = pca_stages(frame, PIXELS)
    rows = []
    for method, name in (("lin", "tuned linear probe"), ("knn", "tuned kNN")):
        rows += [(PIXELS, f"pixels-{method}", f"raw pixels: {name}")]
        rows += [(PIXELS, s, f"raw pixels, PCA to {w} dims: {name}")
                 for w, m, s in pca if m == method]
    return rows


def headline_table(frame: pd.DataFrame) -> dict:
    """Every headline arm, mean ± std (n; 95% CI) over its seeds, on the same labelled split:
    the MAE encoder's probe, kNN and fine-tune, a random encoder's, the pixel baselines and
    scratch."""
    frame = headline_frame(frame)
    members = headline_members(frame, [*MAE_ROWS, *pixel_rows(frame), SCRATCH_ROW])
    notes = [
        "every row: the same labelled training images, chosen on the same validation split, "
        "tested once on the whole test split",
        "test acc at the validation choice: a probe's lr, weight decay and epoch, a kNN's k "
        "and T (baselines.py grids), a classifier's best validation epoch (early stopping); "
        "final = a classifier's last epoch, the stopping rule's patience after that",
        "a kNN on pixels has no random step: one run"]
    return table("headline", "Headline: the MAE encoder against tuned pixel baselines and a "
                 "converged scratch model", "arm",
                 aggregate_columns(frame, members, HEADLINE_COLUMNS), notes)


def no_difference(label: str, why: str) -> list[dict]:
    """A differences-table row without a difference: why, then a dash in every column."""
    return [{"row": label, "column": column, "text": why if i == 0 else DASH, "n": 0}
            for i, column in enumerate(DIFFERENCE_COLUMNS)]


def difference_cells(label: str, a, b) -> list[dict]:
    """The long cells of one differences-table row: a - b paired by seed (findings.pair_arms),
    its interval, its pairs, the smallest difference the design detects and the verdict."""
    if a is None or b is None:
        return no_difference(label, "not compared: settings differ between the seeds of one arm")
    p = pair_arms(a, b)
    e = p.estimate
    if e.n == 0:
        finished = all(isinstance(x, SeedFree) or len(x.dropna()) for x in (a, b))
        return no_difference(label, "no seed in common" if finished else
                             f"{DASH} (an arm has no finished run)")
    one_run_each = isinstance(a, SeedFree) and isinstance(b, SeedFree)
    seeds = "one run each" if one_run_each else ", ".join(map(str, p.differences.index))
    has_interval = e.n > 1
    texts = (f"{e.mean:+.{ACC_DIGITS}f}",
             f"[{e.low:+.{ACC_DIGITS}f}, {e.high:+.{ACC_DIGITS}f}]" if has_interval else
             "none (one pair)",
             f"{e.n} ({seeds})",
             f"{p.detectable:.{ACC_DIGITS}f}" if has_interval else DASH,
             p.verdict)
    cells = [{"row": label, "column": c, "text": t, "n": 0}
             for c, t in zip(DIFFERENCE_COLUMNS, texts, strict=True)]
    cells[0] |= {"value": e.mean, "n": e.n, "std": e.std if has_interval else None,
                 "low": e.low if has_interval else None, "high": e.high if has_interval else None}
    return cells


def differences_table(name: str, title: str, rows: list[tuple], notes=()) -> dict:
    """A table of paired differences, one row per (label, arm a, arm b, extra text columns)."""
    cells = []
    for label, a, b, *extra in rows:
        cells += difference_cells(label, a, b)
        cells += [{"row": label, "column": column, "text": text, "n": 0}
                  for column, text in extra]
    return table(name, title, "difference", pd.DataFrame(cells), [
        f"paired by seed: {RULE}", *notes])


def headline_differences(frame: pd.DataFrame) -> dict:
    """MAE probe minus the best pixel probe, MAE kNN minus the best pixel kNN (each best on
    validation), fine-tune minus scratch, and the MAE probe minus a random encoder's probe,
    on CHOSEN, paired by seed."""
    frame = headline_frame(frame)
    rows = []
    for method, stage, name in (("lin", "mae-lin", "probe"), ("knn", KNN, "kNN")):
        pixels = best_pixels(frame, method, PIXELS)
        if pixels:
            rows.append((f"MAE {name} minus the best pixel {name} ({pixels}, chosen on "
                         "validation)", arm(frame, HEAD, stage, CHOSEN),
                         arm(frame, PIXELS, pixels, CHOSEN)))
    rows += [("MAE fine-tune minus scratch (both early-stopped)",
              arm(frame, *FINE_TUNE_ARM, CHOSEN), arm(frame, *SCRATCH_ARM, CHOSEN)),
             ("MAE probe minus a random encoder's probe", arm(frame, HEAD, "mae-lin", CHOSEN),
              arm(frame, HEAD, "random-lin", CHOSEN))]
    return differences_table(
        "headline_differences", "Headline differences (test acc at the validation choice)",
        rows, ["a seed's MAE arms share its pretraining; a pixel kNN's one run is paired with "
               "every seed of the other arm"])
