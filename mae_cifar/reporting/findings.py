"""The finding sentences of the report: each difference paired by seed (stats.py: its mean,
95% t-interval and verdict under RULE), for the ablations (against the paper's trends), the
baselines and the validation-only search; and the arms they pair (by_seed, arm, SeedFree).
Imports no torch.
"""

import re

import pandas as pd

from mae_cifar.reporting.cells import ACC_DIGITS, PERCENT, settings_differ
from mae_cifar.reporting.run_table import KNN, PCA_STAGE
from mae_cifar.reporting.stats import Paired, difference_text, paired

RULE = ("a difference holds when its 95% t-interval excludes 0, else it is inconclusive at "
        "that n; one pair has no interval")
ABLATION_TITLES = {
    "decoder_layer": "decoder depth (blocks)",
    "decoder_dim": "decoder width (dim)",
    "mask_ratio": "mask ratio",
}
# The paper's trends (ViT-L, ImageNet-1K: Table 1; the mask ratio from Figure 5, trend only):
# each ablation finding is set against its trend, not its values (tables.PAPER_TABLE1: values).
PAPER_TRENDS = {
    "decoder_layer": "deeper decoder -> better probe, fine-tune flat",
    "decoder_dim": "wider decoder -> better probe up to 0.5x-1x the encoder width, fine-tune flat",
    "mask_ratio": "75% best for fine-tune and probe; the probe falls off on either side "
                  "(Figure 5, trend only)",
}
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
PROBE_STAGES = ("pretrain-cls-lin", "mae-lin")  # linear probes of an MAE encoder
SEED_FREE = re.compile(r"^pixels-(pca\d+-)?knn$")  # baselines.py stages no seed changes


def value_order(value) -> tuple:
    """Sort key: numbers in order, then anything else (e.g. a missing setting) by its text."""
    is_number = isinstance(value, (int, float))
    return (not is_number, value if is_number else 0, str(value))


def by_seed(rows: pd.DataFrame) -> pd.Series | None:
    """One arm's usable values x indexed by seed (args.json's), for pairing; None when its
    seeds' settings differ (they are not one arm)."""
    rows = rows[rows["x"].notna() & rows["seed"].notna()]
    if settings_differ(rows):
        return None
    return pd.Series(rows["x"].to_numpy(), index=rows["seed"].astype(int).to_numpy(), dtype=float)


def pair_arms(a: pd.Series, b: pd.Series) -> Paired:
    """a - b paired by seed (stats.paired); a SeedFree arm's one value stands for every seed
    of the other (two SeedFree arms: one pair)."""
    if isinstance(a, SeedFree) and isinstance(b, SeedFree):
        a, b = pd.Series([float(a)]), pd.Series([float(b)])
    elif isinstance(a, SeedFree):
        a = pd.Series(float(a), index=b.index)
    elif isinstance(b, SeedFree):
        b = pd.Series(float(b), index=a.index)
    return paired(a, b)


def compare(name: str, a: pd.Series | None, b: pd.Series | None,
            digits: int = ACC_DIGITS) -> str:
    """'name +X points, 95% CI [...], n=... pairs ...: holds' (stats.difference_text) for the
    paired difference a - b by seed; says so when an arm mixes settings."""
    if a is None or b is None:
        return f"{name}: not compared (settings differ between the seeds of one arm)"
    difference = pair_arms(a, b)
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


def pca_stages(frame: pd.DataFrame, group: str) -> list[tuple[int, str, str]]:
    """(width, method, stage) of group's PCA pixel stages (baselines.py --pca_dim N:
    pixels-pca<N>-lin / -knn), by width, then stage name."""
    stages = set(frame.loc[frame["group"] == group, "stage"])
    return sorted((int(m[1]), m[2], s) for s in stages if (m := PCA_STAGE.match(s)))


def pixel_rows(frame: pd.DataFrame) -> list[tuple]:
    """(group, stage, label) of the baseline group's PCA pixel stages, by width."""
    return [("baseline", s, f"{'linear probe' if method == 'lin' else 'kNN'} on raw pixels, "
             f"PCA to {width} dims") for width, method, s in pca_stages(frame, "baseline")]


def baseline_rows(frame: pd.DataFrame, main: str) -> list[tuple]:
    """BASELINE_ROWS with the PCA pixel rows after the raw-pixel ones, and the tuned MAE probe
    (baselines.py --features mae: mae-lin) where it was run."""
    rows = [*BASELINE_ROWS[:2], *pixel_rows(frame), *BASELINE_ROWS[2:]]
    if ((frame["stage"] == "mae-lin") & (frame["group"] == main)).any():
        rows.insert(rows.index(BASELINE_ROWS[5]) + 1,
                    ("main", "mae-lin", "MAE linear probe, tuned (baselines.py)"))
    return rows


def arm(frame: pd.DataFrame, group: str, stage: str,
        key: str = "final_test_acc") -> pd.Series | None:
    """Accuracy key (%; default the final test accuracy) of a group's usable runs of stage, by
    seed (by_seed). A SEED_FREE stage's one run stands for every seed (SeedFree)."""
    rows = frame[(frame["group"] == group) & (frame["stage"] == stage)]
    values = by_seed(rows.assign(x=rows[key].where(rows["usable"].eq(True)) * PERCENT))
    return SeedFree(values.iloc[0]) if SEED_FREE.match(stage) and values is not None and len(
        values) == 1 else values


class SeedFree(float):
    """The one result of a run that no seed changes (kNN on pixels, PCA or not: no random
    step), paired with every seed of the other arm."""


def best_pixels(frame: pd.DataFrame, method: str, group: str = "baseline") -> str | None:
    """group's pixel stage of method ('lin' or 'knn') with the highest mean best validation
    accuracy (the choice never sees test), or None."""
    runs = frame[(frame["group"] == group) & frame["usable"].eq(True)
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
