"""The read-outs of the headline encoders (commands/study.sh's READOUT_POOLS x READOUT_BLOCKS:
baselines.py --pool / --block): one table of every read-out's validation and test accuracy,
and the read-out the validation split chooses for each encoder and method. One choice for all
seeds: the read-out with the highest mean best validation accuracy over the seeds (the default
read-out, the cls token after the last block, first on a tie), so that the headline tests one
fixed read-out rather than a per-seed pick that would carry its own selection noise. Imports
no torch.
"""
from dataclasses import dataclass

import pandas as pd

from mae_cifar.reporting.cells import ACC_DIGITS, PERCENT, aggregate_columns, table
from mae_cifar.reporting.run_table import READOUT_STAGE

METHOD_NAMES = {"lin": "tuned linear probe", "knn": "tuned kNN"}
ENCODER_NAMES = {"mae": "MAE encoder", "random": "random encoder"}
LAST_BLOCK = -1  # baselines.py's --block of the last block, with the final norm
COLUMNS = [
    ("best val acc (%)", "best_val_acc", PERCENT, ACC_DIGITS, False),
    ("test acc at the validation choice (%)", "chosen_test_acc", PERCENT, ACC_DIGITS, True),
]


@dataclass(frozen=True)
class Readout:
    """One baselines.py stage of an encoder: features (mae, random), pool, block, method."""
    stage: str
    features: str
    pool: str
    block: int
    method: str

    @property
    def label(self) -> str:
        where = "last block" if self.block == LAST_BLOCK else f"block {self.block}"
        token = "cls token" if self.pool == "cls" else "mean patch token"
        return f"{ENCODER_NAMES[self.features]}, {token}, {where}: {METHOD_NAMES[self.method]}"


def parse(stage: str) -> Readout | None:
    """The Readout of a stage folder name (mae-lin is the cls token after the last block),
    or None for a stage that is not an encoder's read-out."""
    if stage in ("mae-lin", "mae-knn", "random-lin", "random-knn"):
        features, method = stage.split("-")
        return Readout(stage, features, "cls", LAST_BLOCK, method)
    match = READOUT_STAGE.match(stage)
    if match is None:
        return None
    features, pool, block, method = match.groups()
    return Readout(stage, features, pool, LAST_BLOCK if block is None else int(block), method)


def readouts_of(frame: pd.DataFrame, group: str) -> list[Readout]:
    """The group's read-outs, in stage order (the frame's), defaults first."""
    stages = frame.loc[frame["group"] == group, "stage"].unique()
    found = [r for s in stages if (r := parse(s)) is not None]
    return sorted(found, key=lambda r: (r.features, list(METHOD_NAMES).index(r.method),
                                        r.stage != f"{r.features}-{r.method}", r.pool, r.block))


def has_grid(frame: pd.DataFrame, group: str) -> bool:
    """Whether the group's encoders were read out at more than the default read-out."""
    return any(r.stage not in ("mae-lin", "mae-knn", "random-lin", "random-knn")
               for r in readouts_of(frame, group))


def validation_means(frame: pd.DataFrame, group: str, features: str,
                     method: str) -> pd.Series:
    """stage -> mean best validation accuracy over the group's seeds, in readouts_of order."""
    stages = [r.stage for r in readouts_of(frame, group)
              if (r.features, r.method) == (features, method)]
    rows = frame[(frame["group"] == group) & frame["stage"].isin(stages)
                 & frame["usable"].eq(True)]
    return rows.groupby("stage")["best_val_acc"].mean().reindex(stages).dropna()


def chosen(frame: pd.DataFrame, group: str, features: str, method: str) -> str | None:
    """The read-out stage with the highest mean validation accuracy (the first in
    readouts_of order, the default first, on a tie); None where none ran."""
    means = validation_means(frame, group, features, method)
    return None if means.empty else str(means.idxmax())


def margin_text(frame: pd.DataFrame, group: str, features: str, method: str) -> str:
    """'<label> chosen: +0.42 points of mean validation accuracy over the runner-up
    (<label>), +1.10 over the default read-out'."""
    means = validation_means(frame, group, features, method).sort_values(
        ascending=False, kind="stable")
    best = means.index[0]
    text = f"{parse(best).label}: chosen on validation"
    if len(means) > 1:
        text += (f", {PERCENT * (means.iloc[0] - means.iloc[1]):+.{ACC_DIGITS}f} points of "
                 f"mean validation accuracy over the runner-up ({parse(means.index[1]).label})")
    default = f"{features}-{method}"
    if best != default and default in means:
        text += (f", {PERCENT * (means.iloc[0] - means[default]):+.{ACC_DIGITS}f} over the "
                 "default read-out (cls token, last block)")
    return text


def readout_table(frame: pd.DataFrame, group: str) -> dict:
    """Every read-out of the group's encoders: best validation accuracy and the test accuracy
    at the validation choice, mean over seeds; the notes name each encoder's and method's
    chosen read-out and its validation margin. frame: headline.headline_frame's."""
    found = readouts_of(frame, group)
    members = frame[(frame["group"] == group) & frame["stage"].isin([r.stage for r in found])]
    labels = {r.stage: r.label for r in found}
    members = pd.DataFrame({"row": members["stage"].map(labels), "exp": members["exp"],
                            "stage": members["stage"]})
    order = {r.label: i for i, r in enumerate(found)}
    members = members.sort_values("row", key=lambda s: s.map(order), kind="stable")
    pairs = list(dict.fromkeys((r.features, r.method) for r in found))
    notes = ["one read-out per encoder and method, for all seeds: the highest mean best "
             "validation accuracy over the seeds (the default, the cls token after the last "
             "block with the final norm, first on a tie); the test split played no part",
             *(margin_text(frame, group, f, m) for f, m in pairs)]
    return table("readouts", f"Read-outs of the `{group}` encoders (chosen on validation)",
                 "read-out", aggregate_columns(frame, members, COLUMNS), notes)
