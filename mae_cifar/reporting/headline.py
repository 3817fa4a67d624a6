"""The v2 study's headline (commands/study.sh parts head, scratch and pixels): one
table of every arm at the point its validation split chose, and the paired differences the
study asks about, each with its 95% interval and verdict (stats.py). Also the differences
table the ablation endpoints use. Imports no torch.
"""

import re

import pandas as pd

from mae_cifar.reporting import readouts
from mae_cifar.reporting.cells import (
    ACC_DIGITS,
    DASH,
    PERCENT,
    SECONDS_PER_MINUTE,
    aggregate_columns,
    table,
)
from mae_cifar.reporting.findings import RULE, SeedFree, arm, best_pixels, pair_arms, pca_stages
from mae_cifar.reporting.run_table import CLS_STAGES, KNN, PRETRAIN, group_experiments
from mae_cifar.reporting.stats import ALPHA, holm

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
HEAD_DEPTH = re.compile(r"^head_depth(\d+)$")  # study.sh PART=head_depth's groups
LR_VARIANT = r"^(.+)_lr[^_]+$"  # study.sh's lr_exp groups: head_lr5e-4 of head
TUNED = " (lr chosen on validation)"  # with_tuned_lr's groups: head (lr chosen on validation)
HEADLINE_COLUMNS = [
    ("test acc at the validation choice (%)", CHOSEN, PERCENT, ACC_DIGITS, True),
    ("best val acc (%)", "best_val_acc", PERCENT, ACC_DIGITS, False),
    ("final test acc, last epoch (%)", "final_test_acc_cls", PERCENT, ACC_DIGITS, False),
    ("epochs trained", "epochs", 1.0, 0, False),
    ("epochs to the validation choice", "epochs_to_choice", 1.0, 0, False),
    ("wall time incl. features (min)", "total_seconds", 1 / SECONDS_PER_MINUTE, 1, False),
]
HOLM_COLUMN = "Holm-adjusted verdict"
P_DIGITS = 3
DIFFERENCE_COLUMNS = ("difference (points)", "95% CI (points)", "pairs (seeds)",
                      "smallest detectable, 50% power (points)",
                      "detectable at 80% power (points)", "verdict")


def with_tuned_lr(frame: pd.DataFrame) -> pd.DataFrame:
    """frame plus, for each classifier stage of a group also run at other base lrs (study.sh's
    lr_exp: head and head_lr5e-4, ...), the group '<group>' + TUNED: per seed, the usable run
    with the best validation accuracy (the group's own lr first on a tie), its exp suffixed
    likewise."""
    bases = frame["group"].str.extract(LR_VARIANT, expand=False)
    picked = []
    for base in sorted(set(bases.dropna())):
        for stage in CLS_STAGES:
            runs = frame[((frame["group"] == base) | (bases == base)) & (frame["stage"] == stage)
                         & frame["usable"].eq(True)]
            runs = runs.assign(other_lr=runs["group"] != base).sort_values(
                ["best_val_acc", "other_lr"], ascending=[False, True], kind="stable")
            best = runs.drop_duplicates("seed")
            picked.append(best.assign(group=base + TUNED, exp=best["exp"] + TUNED))
    picked = [p.drop(columns="other_lr") for p in picked if len(p)]
    return pd.concat([frame, *picked], ignore_index=True) if picked else frame


def headline_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """frame with CHOSEN (a classifier's test accuracy at its best validation epoch; a
    baselines.py run's one test evaluation, at its validation-chosen cell; the final one where
    a summary has no test_acc_at_best), final_test_acc_cls (the last epoch's: classifiers
    only) and epochs_to_choice (epochs trained up to and with the validation-chosen one: a
    count, as epochs trained, not the 0-based best_epoch)."""
    frame = with_tuned_lr(frame)
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


def mae_rows(frame: pd.DataFrame) -> list[tuple]:
    """MAE_ROWS, each probe and kNN preceded by its validation-chosen read-out where the head
    encoders were read out at a grid of them and the choice is not the default (the default,
    the cls token after the last block, stays as the second row)."""
    if not readouts.has_grid(frame, HEAD):
        return list(MAE_ROWS)
    rows = []
    for group, stage, label in MAE_ROWS:
        pick = chosen_stage(frame, stage) if readouts.parse(stage) else stage
        if pick != stage:
            rows.append((group, pick, f"{label}, chosen read-out: {readout_where(pick)}"))
            label += ", cls token, last block"
        rows.append((group, stage, label))
    return rows


def lr_rows(frame: pd.DataFrame, rows: list[tuple]) -> list[tuple]:
    """rows with each classifier row preceded by its lr-chosen-on-validation row where its
    group was run at several base lrs (with_tuned_lr), the fixed-lr row then naming its lr."""
    out = []
    for group, stage, label in rows:
        if stage in CLS_STAGES and (frame["group"] == group + TUNED).any():
            out.append((group + TUNED, stage, f"{label}, lr chosen on validation per seed"))
            lrs = frame.loc[(frame["group"] == group) & (frame["stage"] == stage),
                            "base_learning_rate"].dropna().unique()
            label += f", base lr {lrs[0]:g}" if len(lrs) == 1 else ""
        out.append((group, stage, label))
    return out


def readout_where(stage: str) -> str:
    """'mean patch token, block 4' of a read-out stage."""
    return readouts.parse(stage).label.split(", ", 1)[1].rsplit(":", 1)[0]


def chosen_stage(frame: pd.DataFrame, stage: str, group: str = HEAD) -> str:
    """The group's validation-chosen read-out of a default read-out stage (itself where the
    group has no read-out grid)."""
    default = readouts.parse(stage)
    if not readouts.has_grid(frame, group):
        return stage
    return readouts.chosen(frame, group, default.features, default.method) or stage


def headline_table(frame: pd.DataFrame) -> dict:
    """Every headline arm, mean ± std (n; 95% CI) over its seeds, on the same labelled split:
    the MAE encoder's probe, kNN and fine-tune, a random encoder's, the pixel baselines and
    scratch."""
    frame = headline_frame(frame)
    rows = lr_rows(frame, [*mae_rows(frame), *pixel_rows(frame), SCRATCH_ROW])
    members = headline_members(frame, rows)
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
             f"{p.detectable_80:.{ACC_DIGITS}f}" if has_interval else DASH,
             p.verdict)
    cells = [{"row": label, "column": c, "text": t, "n": 0}
             for c, t in zip(DIFFERENCE_COLUMNS, texts, strict=True)]
    cells[0] |= {"value": e.mean, "n": e.n, "std": e.std if has_interval else None,
                 "low": e.low if has_interval else None, "high": e.high if has_interval else None}
    return cells


def holm_texts(rows: list[tuple]) -> list[str]:
    """Each row's verdict after Holm's adjustment over the table's rows (one family): 'holds'
    or 'inconclusive' with the adjusted p-value; a dash where there is no test."""
    p_values = pd.Series([pair_arms(a, b).p_value if a is not None and b is not None
                          else float("nan") for _, a, b, *_ in rows], dtype=float)
    return [DASH if pd.isna(p) else
            f"{'holds' if p < ALPHA else 'inconclusive'} (adjusted p={p:.{P_DIGITS}f})"
            for p in holm(p_values)]


def differences_table(name: str, title: str, rows: list[tuple], notes=()) -> dict:
    """A table of paired differences, one row per (label, arm a, arm b, extra text columns),
    with each verdict beside its Holm-adjusted one (the table's rows are one family)."""
    cells = []
    for (label, a, b, *extra), adjusted in zip(rows, holm_texts(rows), strict=True):
        cells += difference_cells(label, a, b)
        cells += [{"row": label, "column": column, "text": text, "n": 0}
                  for column, text in [(HOLM_COLUMN, adjusted), *extra]]
    return table(name, title, "difference", pd.DataFrame(cells), [
        f"paired by seed: {RULE}",
        f"{HOLM_COLUMN}: Holm's step-down adjustment of the rows' paired t-test p-values, this "
        f"table's {len(rows)} tests as one family (holds when the adjusted p < {ALPHA:.2f})",
        *notes])


def has_tuned_lr(frame: pd.DataFrame) -> bool:
    """The fine-tune and scratch were each run at several base lrs (with_tuned_lr)."""
    groups = set(frame["group"])
    return HEAD + TUNED in groups and SCRATCH + TUNED in groups


def read_out_pair(frame: pd.DataFrame, stage: str) -> list[tuple[str, str]]:
    """(stage, label suffix): the chosen read-out, then the default where they differ."""
    pick = chosen_stage(frame, stage)
    if pick == stage:
        return [(stage, "")]
    return [(pick, f" ({readout_where(pick)}, chosen)"), (stage, " (cls token, last block)")]


def width_matched_rows(frame: pd.DataFrame, probe: str) -> list[tuple]:
    """The fine-tune minus the best pixel probe, and the MAE probe minus the pixel probe PCA'd
    to the encoder's width (the same feature dimension), where those ran."""
    rows = []
    pixels = best_pixels(frame, "lin", PIXELS)
    fine_tune = HEAD + TUNED if has_tuned_lr(frame) else HEAD
    if pixels:
        rows.append((f"MAE fine-tune minus the best pixel probe ({pixels})",
                     arm(frame, fine_tune, FINE_TUNE_ARM[1], CHOSEN),
                     arm(frame, PIXELS, pixels, CHOSEN)))
    pretrains = frame.loc[(frame["group"] == HEAD) & (frame["stage"] == PRETRAIN), "args"]
    widths = {a.get("emb_dim") for a in pretrains if a}
    for width, method, stage in pca_stages(frame, PIXELS):
        if method == "lin" and width in widths:
            rows.append((f"MAE probe minus the pixel probe PCA'd to {width} dims (the "
                         "encoder's width)", arm(frame, HEAD, probe, CHOSEN),
                         arm(frame, PIXELS, stage, CHOSEN)))
    return rows


def headline_differences(frame: pd.DataFrame) -> dict:
    """MAE probe minus the best pixel probe, MAE kNN minus the best pixel kNN (each best on
    validation), fine-tune minus scratch, and the MAE probe minus a random encoder's probe,
    on CHOSEN, paired by seed."""
    frame = headline_frame(frame)
    rows = []
    for method, stage, name in (("lin", "mae-lin", "probe"), ("knn", KNN, "kNN")):
        pixels = best_pixels(frame, method, PIXELS)
        for mae, which in read_out_pair(frame, stage):
            if pixels:
                rows.append((f"MAE {name}{which} minus the best pixel {name} ({pixels}, "
                             "chosen on validation)", arm(frame, HEAD, mae, CHOSEN),
                             arm(frame, PIXELS, pixels, CHOSEN)))
    probe, random = chosen_stage(frame, "mae-lin"), chosen_stage(frame, "random-lin")
    if has_tuned_lr(frame):
        rows.append(("MAE fine-tune minus scratch (both early-stopped, each at its lr chosen "
                     "on validation)", arm(frame, HEAD + TUNED, FINE_TUNE_ARM[1], CHOSEN),
                     arm(frame, SCRATCH + TUNED, SCRATCH_ARM[1], CHOSEN)))
    rows += [("MAE fine-tune minus scratch (both early-stopped"
              f"{', at one base lr' if has_tuned_lr(frame) else ''})",
              arm(frame, *FINE_TUNE_ARM, CHOSEN), arm(frame, *SCRATCH_ARM, CHOSEN)),
             ("MAE probe minus a random encoder's probe",
              arm(frame, HEAD, probe, CHOSEN), arm(frame, HEAD, random, CHOSEN))]
    rows += width_matched_rows(frame, probe)
    return differences_table(
        "headline_differences", "Headline differences (test acc at the validation choice)",
        rows, ["a seed's MAE arms share its pretraining; a pixel kNN's one run is paired with "
               "every seed of the other arm",
               *(["an encoder's probe and kNN: at the read-out chosen on validation (the "
                  "read-outs table) unless the row names one"]
                 if readouts.has_grid(frame, HEAD) else [])])


def fine_tune_group(frame: pd.DataFrame, group: str) -> str:
    """The group, or its lr-chosen-on-validation twin where it was run at several lrs."""
    return group + TUNED if (frame["group"] == group + TUNED).any() else group


def depth_groups(frame: pd.DataFrame) -> dict[int, str]:
    """Decoder depth -> group of the headline-budget depth arms (head_depth<d>) and of the
    headline arm itself (its pretraining's decoder_layer)."""
    groups = {int(m[1]): g for g in frame["group"].unique() if (m := HEAD_DEPTH.match(g))}
    heads = frame.loc[(frame["group"] == HEAD) & (frame["stage"] == PRETRAIN), "args"]
    depths = {a.get("decoder_layer") for a in heads if a}
    if groups and len(depths) == 1:
        groups[depths.pop()] = HEAD
    return dict(sorted(groups.items()))


def head_depth_table(frame: pd.DataFrame) -> dict:
    """Table 1's depth question at the headline budget: the deepest minus the shallowest
    decoder, and each depth arm against the headline arm, on the validation-chosen probe and
    the fine-tune, paired by seed."""
    frame = headline_frame(frame)
    groups = depth_groups(frame)
    own = [d for d, g in groups.items() if g == HEAD]
    pairs = [(max(groups), min(groups)), *((max(d, *own), min(d, *own)) for d in groups
                                           if own and groups[d] != HEAD)]
    rows = []
    for hi, lo in dict.fromkeys(pairs):
        a, b = groups[hi], groups[lo]
        rows += [(f"decoder depth {hi} minus {lo}: probe (each arm's read-out chosen on "
                  "validation)", arm(frame, a, chosen_stage(frame, "mae-lin", a), CHOSEN),
                  arm(frame, b, chosen_stage(frame, "mae-lin", b), CHOSEN)),
                 (f"decoder depth {hi} minus {lo}: fine-tune",
                  arm(frame, fine_tune_group(frame, a), FINE_TUNE_ARM[1], CHOSEN),
                  arm(frame, fine_tune_group(frame, b), FINE_TUNE_ARM[1], CHOSEN))]
    return differences_table(
        "head_depth", "Decoder depth at the headline budget (test acc at the validation "
        "choice)", rows, ["every arm: the headline arm's pretraining but the decoder depth"])
