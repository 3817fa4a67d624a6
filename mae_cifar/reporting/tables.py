"""The report's tables, each a dict of long-format cells (cells.py): MAE pretraining, one
classification table per experiment group, the decoder/mask ablations around a base group
(with the paper's Table 1), and with --ablation_base the study's baselines, validation-only
search and parts; for the v2 study (commands/study.sh) its pilot, headline (headline.py),
ablations and their endpoints. Findings come from findings.py. Imports no torch.
"""

import math
import re
from pathlib import Path

import pandas as pd

from mae_cifar.fileio import is_regular_file
from mae_cifar.reporting import readouts
from mae_cifar.reporting.cells import (
    ACC_DIGITS,
    DASH,
    MINUTE_DIGITS,
    PERCENT,
    SECONDS_PER_MINUTE,
    aggregate,
    aggregate_columns,
    cls_columns,
    member_values,
    pretrain_columns,
    settings_differ,
    table,
    text_cells,
    text_column,
)
from mae_cifar.reporting.findings import (
    ABLATION_TITLES,
    PAPER_TRENDS,
    PROBE_STAGES,
    RULE,
    ablation_sentence,
    baseline_rows,
    baselines_sentence,
    by_seed,
    search_sentence,
    value_order,
)
from mae_cifar.reporting.headline import (
    HEAD,
    STUDY_GROUPS,
    depth_groups,
    differences_table,
    head_depth_table,
    headline_differences,
    headline_frame,
    headline_table,
)
from mae_cifar.reporting.run_table import (
    CLS_STAGES,
    FINISHED,
    GENERATED,
    KNN,
    PRETRAIN,
    by_dataset,
    differing,
    finished_pretraining,
    group_experiments,
    pretrain_configs,
    shown_name,
)

SEARCH_GROUPS = r"(probe_lr|search_)"  # the v1 study's validation-only search experiments
PILOT_GROUPS = r"pilot_"  # the v2 study's pilot (study.sh PART=pilot): validation only
PILOT_STAGES = {"mae-lin": "tuned probe", KNN: "tuned kNN"}  # baselines.py on each encoder

CLS_CONFIG_KEYS = (
    "dataset", "total_epoch", "warmup_epoch", "batch_size", "base_learning_rate", "linear_probe",
    "recipe", "val_split",
)
ABLATION_DEFAULTS = {"decoder_layer": 4, "decoder_dim": 192, "mask_ratio": 0.75}
ABLATION_VALUES = {  # planned rows around ABLATION_DEFAULTS; values found in the runs are added
    "decoder_layer": (1, 2, 4, 6, 8),
    "decoder_dim": (64, 128, 192, 256, 512),
    "mask_ratio": (0.5, 0.6, 0.75, 0.85, 0.9),
}
COUPLED_KEYS = {"decoder_dim": ("decoder_head",)}  # the head count must divide the width
ABLATION_STAGES = {  # stage -> column of the ablation tables (each but the fine-tune only
    "pretrain-cls": "fine-tune: final test acc (%)",  # where an ablation's runs have it)
    "pretrain-cls-lin": "linear probe: final test acc (%)",
    "mae-lin": "tuned linear probe: test acc (%)",  # baselines.py: chosen on validation
    KNN: "kNN: test acc (%)",
}
FINE_TUNE, PROBES = "pretrain-cls", ("mae-lin", "pretrain-cls-lin")  # the tuned probe first
# The paper's Table 1 (ViT-L, ImageNet-1K; fine-tune / linear probe top-1 %), entered from
# the paper by this project (findings are set against its trend, not its values:
# findings.PAPER_TRENDS).
# No copy of the paper's text could be found to check them against here: UNVERIFIED. The mask
# ratio (Figure 5) is given as its trend only.
PAPER_TABLE1 = {
    "decoder_layer": {1: (84.8, 65.5), 2: (84.9, 70.0), 4: (84.9, 71.9), 8: (84.9, 73.5),
                      12: (84.4, 73.3)},
    "decoder_dim": {128: (84.9, 69.1), 256: (84.8, 71.3), 512: (84.9, 73.5), 768: (84.4, 73.1),
                    1024: (84.3, 73.1)},
}
PAPER_ENCODER_WIDTH = 1024  # Table 1's encoder (ViT-L): its decoder widths are absolute
PAPER_NOTE = ("paper values entered by hand from the paper's Table 1, not checked against its "
              "text here (unverified)")
PLATEAU_FRACTION = 4  # plateau_notes: the last quarter of a classifier's epochs
PLATEAU_MIN_EPOCHS = 8  # ... of a run with at least this many epochs
COMMIT_DIGITS = 7  # an abbreviated git commit
GENERATED_NOTE = ("`{}` is generated data: accuracies on generated images (probes, kNN, "
                  "classifiers) say nothing about accuracy on real images")


def members_of(groups: dict[str, list[str]], rows: list[tuple]) -> pd.DataFrame:
    """(row label, group or None, stage) -> one member (row, exp, stage) per experiment."""
    return pd.DataFrame([(row, exp, stage) for row, group, stage in rows
                         for exp in groups.get(group, [None])],
                        columns=["row", "exp", "stage"])


def eval_split_notes(frame: pd.DataFrame) -> list[str]:
    """Which groups measured eval loss / kNN on which split, when the splits differ."""
    runs = frame[(frame["stage"] == PRETRAIN) & frame["eval_split"].notna()]
    by_split = runs.groupby("eval_split")["group"].unique()
    if len(by_split) < 2:
        return []
    return ["eval loss and kNN measured on: " + "; ".join(
        f"{split}: {', '.join(f'`{g}`' for g in groups)}" for split, groups in by_split.items())]


def pretrain_table(frame: pd.DataFrame) -> dict:
    """One row per experiment group with a pretraining stage."""
    groups = group_experiments(frame)
    with_mae = frame.loc[frame["stage"] == PRETRAIN, "group"].unique()
    members = members_of(groups, [(f"`{g}`", g, PRETRAIN) for g in groups if g in with_mae])
    return table("pretrain", "MAE pretraining", "experiment",
                 aggregate_columns(frame, members, pretrain_columns(frame)),
                 eval_split_notes(frame))


def main_table(frame: pd.DataFrame, group: str) -> dict:
    """Scratch / fine-tuned / linear probes of one experiment group (mean ± std over seeds)."""
    groups = group_experiments(frame)
    own = frame[frame["group"] == group]
    finished = own[own["stage"].isin(CLS_STAGES) & (own["status"] == FINISHED)]
    splits = sorted({s for s in finished["selection_split"] if isinstance(s, str)})
    unsplit = finished.loc[finished["selection_split"].isna(), "exp"] + "/" + finished.loc[
        finished["selection_split"].isna(), "stage"]
    pretrained = (own["stage"] == PRETRAIN).any()
    # a group with its own pretraining lists every classifier (the missing ones too); a
    # classifier-only group (a long scratch, a long fine-tune) lists the ones it has
    stages = [s for s in CLS_STAGES if pretrained or (own["stage"] == s).any()]
    members = members_of(groups, [(CLS_STAGES[s], group, s) for s in stages])
    notes = []
    if pretrained:
        pre = aggregate_columns(frame, members_of(groups, [("", group, PRETRAIN)]),
                                pretrain_columns(frame))
        notes.append("MAE pretraining: " + ", ".join(pre["column"] + " " + pre["text"]))
    if len(splits) > 1:
        notes.append(f"runs differ in selection split ({', '.join(splits)}), see summary.json")
    if len(unsplit):
        notes.append("finished, but summary.json names no selection split (another project "
                     f"or an older version): {', '.join(unsplit)}")
    notes += plateau_notes(own)
    for stage, runs in own.groupby("stage", sort=False):
        diff = settings_differ(runs[runs["args"].map(bool) & runs["duplicate"].isna()])
        if diff:
            notes.append(f"{stage}: settings differ between seeds (not averaged): "
                         f"{', '.join(diff)}")
    cells = aggregate_columns(frame, members, cls_columns("/".join(splits) or "selection-split"))
    return table(f"main:{group}", f"Classification: `{group}`", "classifier", cells, notes)


def plateau_gain(metrics: pd.DataFrame) -> tuple[int, float] | None:
    """(epochs in the last quarter, validation accuracy gain in points over it: the last
    epoch's val_acc minus the val_acc of the epoch before that quarter), or None when there are
    fewer than PLATEAU_MIN_EPOCHS epochs with a val_acc."""
    points = metrics.reindex(columns=["epoch", "val_acc"]).dropna()
    if len(points) < PLATEAU_MIN_EPOCHS:
        return None
    last = len(points) // PLATEAU_FRACTION
    return last, (points["val_acc"].iloc[-1] - points["val_acc"].iloc[-1 - last]) * PERCENT


def plateau_notes(own: pd.DataFrame) -> list[str]:
    """Per classifier stage of a group: how much validation accuracy still rose over the last
    quarter of the epochs, the range over its usable seeds with a validation split (is it
    still rising?). A run without one has no validation accuracy to show."""
    validated = own["stage"].isin(CLS_STAGES) & own["usable"].eq(True) & own[
        "selection_split"].eq("val")
    notes = []
    for stage, runs in own[validated].groupby("stage", sort=False):
        gains = [g for g in runs["metrics"].map(plateau_gain) if g is not None]
        if gains:
            lo, hi = min(g for _, g in gains), max(g for _, g in gains)
            spans = sorted({n for n, _ in gains})
            notes.append(f"{CLS_STAGES[stage]}: validation accuracy over the last "
                         f"{'/'.join(map(str, spans))} epochs (last epoch minus the epoch "
                         f"before them): {lo:+.{ACC_DIGITS}f} to {hi:+.{ACC_DIGITS}f} points "
                         f"over {len(gains)} seed(s)")
    return notes


def is_variant(configs: pd.DataFrame, base: str, key: str) -> pd.Series:
    """Groups whose pretraining differs from base's in key (and the keys coupled to it) only."""
    shown = configs.drop(columns=list(COUPLED_KEYS.get(key, ()))).map(repr)
    differs = shown.ne(shown.loc[base])
    return differs[key] & (differs.sum(axis=1) == 1)


def find_ablation_base(frame: pd.DataFrame) -> str | None:
    """Group with the default decoder/mask settings and a finished pretraining that has the
    most one-key variants."""
    configs = pretrain_configs(frame)
    defaults = pd.Series(ABLATION_DEFAULTS)
    finished = finished_pretraining(frame)
    candidates = sorted(g for g in configs.index if g in finished
                        and configs.loc[g, defaults.index].tolist() == defaults.tolist())
    return max(candidates, default=None,
               key=lambda g: sum(is_variant(configs, g, k).sum() for k in ABLATION_DEFAULTS))


def ablation_groups(configs: pd.DataFrame, key: str, base: str) -> dict:
    """Value of key -> groups: base plus the groups that differ from it only in key."""
    by_value = {configs.loc[base, key]: [base]}
    for group in configs.index[is_variant(configs, base, key)]:
        by_value.setdefault(configs.loc[group, key], []).append(group)
    return by_value


def ablation_label(value, groups: list[str], base: str, configs: pd.DataFrame, key: str) -> str:
    """Row label: the value, '(default)' and any coupled setting that differs from the base."""
    label = f"{value}" + (" (default)" if base in groups else "")
    for coupled in COUPLED_KEYS.get(key, ()):
        values = sorted({str(configs.loc[g, coupled]) for g in groups}
                        - {str(configs.loc[base, coupled])})
        label += "".join(f" ({coupled}={v})" for v in values)
    return label


def ablation_members(frame: pd.DataFrame, key: str, base: str) -> pd.DataFrame:
    """(row, value, group, exp, stage) of an ablation: one row per value of key (the planned
    ones too when base has the default settings), its groups' experiments at each stage."""
    configs, groups = pretrain_configs(frame), group_experiments(frame)
    by_value = ablation_groups(configs, key, base)
    is_default = configs.loc[base, list(ABLATION_DEFAULTS)].tolist() == list(
        ABLATION_DEFAULTS.values())
    values = sorted(set(ABLATION_VALUES[key] if is_default else ()) | set(by_value),
                    key=value_order)
    return pd.DataFrame([
        (ablation_label(v, by_value[v], base, configs, key) if v in by_value else f"{v}",
         v, g, exp, stage)
        for stage in ABLATION_STAGES for v in values for g in by_value.get(v, [None])
        for exp in groups.get(g, [None])], columns=["row", "value", "group", "exp", "stage"])


def ablation_tables(frame: pd.DataFrame, base: str | None) -> list[dict]:
    """One ablation table per key that some group varies around base; none unless base's
    pretraining finished (a stopped default would make tables of missing rows)."""
    configs = pretrain_configs(frame)
    if base not in finished_pretraining(frame) or base not in configs.index:
        return []
    return [ablation_table(frame, key, base) for key in ABLATION_DEFAULTS
            if is_variant(configs, base, key).any()]


def ablation_table(frame: pd.DataFrame, key: str, base: str) -> dict:
    """MAE Table-1-style ablation of key around the group base: rows = values, columns =
    fine-tune / probe (/ kNN where it was run) final test accuracy; with the paper's table,
    notes and a finding judged against the seed noise of the base."""
    members = ablation_members(frame, key, base)
    experiments = members.groupby("row", sort=False)["group"].agg(
        lambda gs: ", ".join(f"`{g}`" for g in dict.fromkeys(gs.dropna())) or DASH)
    groups, members = set(members["group"].dropna()), members.drop(columns="group")
    stages = ablation_stages(frame, groups)
    parts = [text_column(members, "experiment", experiments)]
    parts += [aggregate(frame, members[members["stage"] == stage], ABLATION_STAGES[stage],
                        "final_test_acc", PERCENT) for stage in stages]
    accs = member_values(frame, members, "final_test_acc", PERCENT)
    fine_tune, probe = stages[:2]
    numbers = {v: tuple(by_seed(rows[rows["stage"] == s]) for s in (fine_tune, probe))
               for v, rows in accs.groupby("value", sort=False)}
    base_value = pretrain_configs(frame).loc[base, key]
    result = table(f"ablation:{key}", f"Ablation: {ABLATION_TITLES[key]}", ABLATION_TITLES[key],
                   pd.concat(parts, ignore_index=True),
                   ablation_notes(frame, key, base, groups))
    result["finding"] = ablation_sentence(key, numbers, base_value)
    result["numbers"] = numbers  # value -> (fine-tune, probe) by seed: endpoints_table
    result["compared"] = (fine_tune, probe)  # their stages: figures.plot_ablation
    emb_dim = pretrain_configs(frame).loc[base, "emb_dim"]
    result["paper_at"] = {v: paper_row(key, v, emb_dim) for v in numbers}  # endpoints_table
    result["paper"] = pd.DataFrame.from_dict(
        {v: {"paper fine-tune (%)": ft, "paper linear probe (%)": lin}
         for v, (ft, lin) in PAPER_TABLE1.get(key, {}).items()}, orient="index")
    result["paper"].index.name = ABLATION_TITLES[key]
    return result


def ablation_stages(frame: pd.DataFrame, groups: set) -> list[str]:
    """The ablation's columns: the fine-tune, one probe (the tuned one where the ablation's
    groups ran it, else the classifier's probe, planned or not) and the kNN where it ran."""
    ran = set(frame.loc[frame["group"].isin(groups), "stage"])
    probe = next((s for s in PROBES if s in ran), PROBES[-1])
    return [s for s in ABLATION_STAGES if s in (FINE_TUNE, probe) or (s == KNN and s in ran)]


def ablation_notes(frame: pd.DataFrame, key: str, base: str, groups: set) -> list[str]:
    """The default experiment, how rows are compared, variants whose classifier settings
    differ."""
    config = pretrain_configs(frame).loc[base]
    notes = [f"default experiment `{base}` ({config['total_epoch']} pretraining epochs on "
             f"{config['dataset']}); each other row changes only {key}",
             "final-epoch accuracy on the whole test split; rows are compared with the default "
             f"row on the same seeds (paired; {RULE})",
             f"paper trend: {PAPER_TRENDS[key]}"]
    first = frame[frame["args"].map(bool)].drop_duplicates(["group", "stage"]).set_index(
        ["group", "stage"])["args"]
    for stage in ABLATION_STAGES:
        for group in sorted(groups - {base}):
            if (base, stage) in first.index and (group, stage) in first.index:
                diff = differing(first.loc[[(base, stage), (group, stage)]], CLS_CONFIG_KEYS)
                if diff:
                    notes.append(f"`{group}` {stage} differs from the default in "
                                 f"{', '.join(diff)}")
    return notes


def baselines_table(frame: pd.DataFrame, main: str) -> dict:
    """The study's baselines: every row on the same labelled subset, validation and test split;
    with the headline differences (baselines_sentence)."""
    groups = group_experiments(frame)
    rows = [(label, main if group == "main" else group, stage)
            for group, stage, label in baseline_rows(frame, main)]
    members = members_of(groups, rows)
    names = text_column(members, "experiment",
                        {label: f"`{group}` {stage}" for label, group, stage in rows})
    result = table("baselines", "Baselines", "model",
                   aggregate_columns(frame, members, cls_columns("val"), names),
                   ["every row uses the same labelled training images, validation split and "
                    f"whole test split; differences are paired by seed ({RULE})",
                    "a kNN on pixels (PCA or not) has no random step: its one run is paired "
                    "with every seed of the other arm"])
    result["finding"] = baselines_sentence(frame, main)
    return result


def search_table(frame: pd.DataFrame, main: str) -> dict:
    """The validation-only search: every probe/kNN run of probe_lr* and search_* experiments
    and of the main arm's seed they vary, by best validation accuracy (test accuracy not
    shown: it plays no part in the choice), with the raw-pixel baselines as reference rows."""
    searched = frame["group"].str.match(SEARCH_GROUPS)
    seeds = frame.loc[searched, "seed"].dropna()
    reference = (frame["group"] == main) & (frame["seed"] == seeds.iloc[0]) if len(seeds) \
        else pd.Series(False, index=frame.index)
    finished = frame["status"] == FINISHED
    runs = frame[(searched | reference) & finished & frame["stage"].isin((*PROBE_STAGES, KNN))]
    pixels = frame[frame["stage"].str.startswith("pixels-") & finished]
    runs = pd.concat([runs, pixels]).sort_values("best_val_acc", ascending=False,
                                                 kind="stable") if searched.any() \
        else runs.iloc[:0]
    is_pixels = runs["stage"].str.startswith("pixels-")
    shown = pd.DataFrame({
        "row": "`" + runs["exp"] + "` " + runs["stage"],
        "pool": runs["pool"].fillna("cls").where(~is_pixels, DASH),
        "block": runs["block"].fillna(-1).astype(int).astype(str).where(~is_pixels, DASH),
        "probe base lr": runs["base_learning_rate"].where(~runs["stage"].str.endswith("knn"),
                                                          DASH),
        "best val acc (%)": (runs["best_val_acc"] * PERCENT).map(lambda v: f"{v:.{ACC_DIGITS}f}"),
        "selection split": runs["selection_split"].fillna(DASH)})
    cells = text_cells(shown, ["best val acc (%)"])
    note = ("sorted by best validation accuracy; test accuracies are in the run files and are "
            "not used to choose; the raw-pixel rows are the baselines to beat")
    result = table("search", "Validation-only search (probe lr, pooling, block, pretraining "
                   "variants)", "run", cells, [note])
    if len(runs):
        result["finding"] = search_sentence(frame, runs)
    return result


def pilot_table(frame: pd.DataFrame) -> dict:
    """The pilot: one row per variant (one seed each) with its pretraining and the best
    validation accuracy of its tuned probe and kNN and the grid cell each chose. Test
    accuracies are in the run files and play no part in the choice, so none is shown."""
    finished = frame[frame["group"].str.match(PILOT_GROUPS) & (frame["status"] == FINISHED)]
    rows = []
    for group, runs in finished.groupby("group", sort=True):
        by_stage = runs.set_index("stage")
        row = {"row": f"`{group}`"}
        if PRETRAIN in by_stage.index:
            mae = by_stage.loc[PRETRAIN]
            row |= {"optimizer steps": f"{mae['steps']:.0f}",
                    "pretraining (min)":
                        f"{mae['wall_seconds'] / SECONDS_PER_MINUTE:.{MINUTE_DIGITS}f}"}
        for stage, label in PILOT_STAGES.items():
            if stage in by_stage.index:
                run = by_stage.loc[stage]
                acc = run["best_val_acc"] * PERCENT
                row[f"{label}: best val acc (%)"] = f"{acc:.{ACC_DIGITS}f}"
                row[f"{label}: chosen"] = run["chosen"] or DASH
        rows.append(row)
    shown = pd.DataFrame(rows).fillna(DASH)
    cells = text_cells(shown, [c for c in shown.columns if c.endswith("best val acc (%)")])
    result = table("pilot", "Pilot: the main arm's pretraining, chosen on validation (one seed)",
                   "variant", cells, ["validation split only; the main arm takes the variant "
                                      "with the highest tuned-probe validation accuracy "
                                      "(frozen in study.sh's MAIN_* settings)"])
    if rows:
        result["finding"] = pilot_sentence(shown)
    return result


def pilot_sentence(shown: pd.DataFrame) -> str:
    """Which variant the pilot's rule picks, and how far the others are below it (one seed:
    no interval)."""
    column = f"{PILOT_STAGES['mae-lin']}: best val acc (%)"
    if column not in shown:
        return "Pilot: no tuned probe has finished yet."
    accs = pd.to_numeric(shown.set_index("row")[column], errors="coerce").dropna()
    accs = accs.sort_values(ascending=False, kind="stable")
    if accs.empty:
        return "Pilot: no tuned probe has finished yet."
    best = accs.index[0]
    others = "; ".join(f"{row} {acc - accs.iloc[0]:+.{ACC_DIGITS}f}" for row, acc in
                       accs.iloc[1:].items())
    return (f"Pilot pick (highest tuned-probe validation accuracy): {best}, "
            f"{accs.iloc[0]:.{ACC_DIGITS}f}%; the others, in points: {others or 'none'} "
            "(n=1 each: no interval)")


ENV_PART = re.compile(r"^# Environment of one invocation of part `([^`]+)`", re.M)
ENV_FINISHED = re.compile(r"^- finished: ([^;]+);.*?: ([0-9.]+) min", re.M)
ENV_COMMIT = re.compile(r"^- git commit: ([0-9a-f]+)", re.M)


def number_text(text: str) -> str | None:
    """text if it is a finite number (an environment file's "1.2.3" is not), else None."""
    try:
        return text if math.isfinite(float(text)) else None
    except ValueError:
        return None


def parts_table(env_dir: Path) -> dict:
    """One row per environment/<part>_<time>.md the study's runs wrote: part, when it
    finished, its wall time and commit; the total wall time under them."""
    rows = []
    paths = Path(env_dir).glob("*.md")  # <part>_<UTC time>.md: in the order they finished
    for path in sorted(paths, key=lambda p: (p.stem.rpartition("_")[2], p.name)):
        # a FIFO is never opened (it would wait for a writer)
        text = path.read_text(encoding="utf-8", errors="replace") if is_regular_file(path) \
            else ""
        part, finished, commit = (ENV_PART.search(text), ENV_FINISHED.search(text),
                                  ENV_COMMIT.search(text))
        minutes = number_text(finished[2]) if finished else None
        rows.append({"row": f"`{shown_name(path.name)}`", "part": part[1] if part else DASH,
                     "finished": finished[1] if finished else DASH,
                     "wall time (min)": minutes or DASH,
                     "git commit": commit[1][:COMMIT_DIGITS] if commit else DASH})
    total = sum(float(r["wall time (min)"]) for r in rows if r["wall time (min)"] != DASH)
    rows.append({"row": "total", "part": "", "finished": "",
                 "wall time (min)": f"{total:.{MINUTE_DIGITS}f}", "git commit": ""})
    cells = text_cells(pd.DataFrame(rows), ["wall time (min)"])
    return table("parts", "Study parts (environment files written by the runs)", "file",
                 cells, [f"each part's command, machine and versions: {Path(env_dir).name}/"
                         "<file>"])


def main_groups(frame: pd.DataFrame, base: str | None) -> list[str]:
    """Groups that get a classification table: those with a finished pretraining or a
    classifier run (a pretraining stopped or running alone would make a table of missing
    rows: the pretraining table shows it), but for the one-key variants of base (the
    ablation tables show them)."""
    configs = pretrain_configs(frame)
    variants = set() if base not in configs.index else {
        g for key in ABLATION_DEFAULTS for gs in ablation_groups(configs, key, base).values()
        for g in gs} - {base}
    classified = set(frame.loc[frame["stage"].isin(CLS_STAGES), "group"])
    trained = classified | finished_pretraining(frame)
    return [g for g in group_experiments(frame) if g in trained - variants]


def paper_row(key: str, value, emb_dim: int) -> tuple | None:
    """Table 1's (fine-tune, probe) for our value of key: the decoder depth as it is, the
    decoder width at the same ratio to the encoder's width; None where Table 1 has no row."""
    if key == "decoder_dim":
        value = value * PAPER_ENCODER_WIDTH / emb_dim
    return PAPER_TABLE1.get(key, {}).get(value)


def paper_difference(lo: tuple | None, hi: tuple | None, metric: int) -> str:
    """Table 1's hi minus lo on metric (0 fine-tune, 1 probe), with both values."""
    if lo is None or hi is None:
        return "not in Table 1"
    return f"{hi[metric] - lo[metric]:+.1f} ({lo[metric]:.1f} -> {hi[metric]:.1f})"


def endpoints_table(ablations: list[dict]) -> dict:
    """Each ablation's endpoints (its lowest and highest value), highest minus lowest on the
    probe and the fine-tune, paired by seed, beside the paper's difference and trend."""
    rows = []
    for result in ablations:
        key = result["name"].removeprefix("ablation:")
        values = sorted(result["numbers"], key=value_order)
        if len(values) < 2:
            continue
        lo, hi = values[0], values[-1]
        label = f"{ABLATION_TITLES[key]} {hi} minus {lo}"
        for metric, name in ((1, "probe"), (0, "fine-tune")):
            paper = paper_difference(result["paper_at"][lo], result["paper_at"][hi], metric)
            rows.append((f"{label}: {name}", result["numbers"][hi][metric],
                         result["numbers"][lo][metric], ("paper's difference", paper),
                         ("paper's trend", PAPER_TRENDS[key])))
    return differences_table(
        "endpoints", "Ablation endpoints (final test acc; the probe: the tuned one where it ran)",
        rows, ["paper's difference: Table 1 (ViT-L, ImageNet-1K) at the same decoder depth, or "
               f"at the same decoder width relative to the encoder's ({PAPER_ENCODER_WIDTH} "
               f"wide there); {PAPER_NOTE}"])


def is_study_v2(frame: pd.DataFrame) -> bool:
    """The runs are commands/study.sh's (its pilot, headline, scratch or pixel groups)."""
    return bool(frame["group"].str.match(PILOT_GROUPS).any()
                or frame["group"].isin(STUDY_GROUPS).any())


def study_v2_tables(frame: pd.DataFrame, base: str) -> list[dict]:
    """The v2 study's report: pilot, headline and its differences, pretraining, the
    ablations around base with their endpoints."""
    tables = [pilot_table(frame)] if frame["group"].str.match(PILOT_GROUPS).any() else []
    if frame["group"].isin(STUDY_GROUPS).any():
        tables += [headline_table(frame), headline_differences(frame)]
        if readouts.has_grid(frame, HEAD):
            tables.append(readouts.readout_table(headline_frame(frame), HEAD))
        if len(depth_groups(frame)) > 1:
            tables.append(head_depth_table(frame))
    tables.append(pretrain_table(frame))
    ablations = ablation_tables(frame, base)
    return tables + ([*ablations, endpoints_table(ablations)] if ablations else [])


def dataset_tables(frame: pd.DataFrame, ablation_base: str | None = None) -> list[dict]:
    """Every table of one dataset's runs, in order. Ablations need a base group whose
    pretraining finished (given, or the one with the default settings and most variants);
    the study's baselines and search only come with --ablation_base (the v2 study's tables:
    study_v2_tables)."""
    if ablation_base and is_study_v2(frame):
        return study_v2_tables(frame, ablation_base)
    base = ablation_base or find_ablation_base(frame)
    ablations = ablation_tables(frame, base)
    groups = main_groups(frame, base if ablations else None)
    if ablation_base:  # the study: its search experiments have their own table
        groups = [g for g in groups if not re.match(SEARCH_GROUPS, g)]
    tables = [pretrain_table(frame), *(main_table(frame, g) for g in groups), *ablations]
    if ablation_base in set(frame["group"]):
        tables = [baselines_table(frame, ablation_base), *tables]
        search = search_table(frame, ablation_base)
        tables += [search] if len(search["cells"]) else []
    return tables


def build_tables(frame: pd.DataFrame, ablation_base: str | None = None) -> list[dict]:
    """Every table of the report: one set per dataset (run_table.by_dataset), each table
    naming its dataset under "dataset" and in a dataset column of its cells; a generated
    dataset's tables say what its accuracies cannot tell."""
    tables = []
    for dataset, runs in by_dataset(frame).items():
        own = dataset_tables(runs, ablation_base)
        for t in own:
            t["dataset"], t["cells"] = dataset, t["cells"].assign(dataset=dataset)
            t["notes"] += [GENERATED_NOTE.format(dataset)] if dataset in GENERATED else []
        tables += own
    return tables
