"""The v2 study's headline and ablation-endpoint tables (reporting/headline.py,
tables.study_v2_tables): numbers worked by hand from fixture run folders."""
import json
import math

import pytest
from test_report import classifier, pretrain, set_args

from mae_cifar.reporting import cells, figures, run_table, tables

SEEDS = (1, 2, 3)


def set_summary(folder, **changes):
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, **changes}))


def study(root):
    """Fixture runs named as commands/study.sh names them. classifier() writes test_acc_at_best
    = test_acc - 0.0013 for every stage: paired differences of it equal those of test_acc."""
    for s in SEEDS:
        pretrain(root, f"head_seed{s}", seed=s)
        for stage, acc in (("mae-lin", 0.80 + 0.01 * s), ("mae-knn", 0.78),
                           ("pretrain-cls", 0.88 + 0.01 * s),
                           ("random-lin", 0.50 + 0.02 * (s == 2)), ("random-knn", 0.40)):
            classifier(root, f"head_seed{s}", stage, acc, seed=s)
        classifier(root, f"scratch_seed{s}", "scratch-cls", 0.86 + 0.02 * s, seed=s)
        classifier(root, f"pixels_seed{s}", "pixels-lin", 0.82 + 0.002 * s, seed=s)
        pca = classifier(root, f"pixels_seed{s}", "pixels-pca64-lin", 0.90, seed=s)
        set_summary(pca, best_val_acc=0.1)  # the best pixel probe is chosen on validation
    classifier(root, "pixels_seed1", "pixels-knn", 0.83, seed=1)  # deterministic: one run


def built(root, base="abl_default"):
    return {t["name"]: t for t in tables.build_tables(run_table.collect_runs(root), base)}


def test_headline_rows_are_each_arm_at_its_validation_choice(tmp_path):
    study(tmp_path)
    rows = cells.wide(built(tmp_path)["headline"])
    chosen = "test acc at the validation choice (%)"
    # mae-lin: 81, 82, 83 minus 0.13 -> 81.87 ± 1.00, 95% CI 81.87 ± 4.303 / sqrt(3)
    assert rows.loc["MAE encoder: tuned linear probe", chosen] == (
        "81.87 ± 1.00 (n=3; 95% CI [79.39, 84.35])")
    assert rows.loc["raw pixels: tuned kNN", chosen] == "82.87 (n=1)"  # not 'missing' x2
    assert rows.loc["raw pixels: tuned kNN", "epochs trained"] == "—"
    assert rows.loc["from scratch, early-stopped", "final test acc, last epoch (%)"].startswith(
        "90.00 ± 2.00 (n=3")
    assert rows.loc["raw pixels: tuned linear probe", "final test acc, last epoch (%)"] == "—"
    assert list(rows.index)[-1] == "from scratch, early-stopped"


def test_headline_differences_are_paired_by_seed_with_the_verdict(tmp_path):
    study(tmp_path)
    rows = cells.wide(built(tmp_path)["headline_differences"])
    probe = rows.loc["MAE probe minus the best pixel probe (pixels-lin, chosen on validation)"]
    # seeds: 81 - 82.2, 82 - 82.4, 83 - 82.6 = -1.2, -0.4, +0.4: mean -0.4, std 0.8
    assert probe["difference (points)"] == "-0.40"
    assert probe["95% CI (points)"] == "[-2.39, +1.59]"  # 4.303 * 0.8 / sqrt(3) = 1.99
    assert probe["pairs (seeds)"] == "3 (1, 2, 3)"
    assert probe["smallest detectable, 50% power (points)"] == "1.99"
    assert probe["detectable at 80% power (points)"] == "2.48"  # (4.303 + 1.061) * 0.8 / sqrt 3
    assert probe["verdict"] == "inconclusive at n=3"
    knn = rows.loc["MAE kNN minus the best pixel kNN (pixels-knn, chosen on validation)"]
    assert (knn["difference (points)"], knn["verdict"]) == ("-5.00", "holds")  # 78 - 83, x3
    assert knn["Holm-adjusted verdict"] == "holds (adjusted p=0.000)"  # no spread: p = 0
    # the probe's t = -0.4 / (0.8 / sqrt 3) = -0.866, p = 0.478 on 2 df; 5 tests, the largest
    # but one: times 2, then the running maximum with the larger ones before it
    assert probe["Holm-adjusted verdict"].startswith("inconclusive (adjusted p=")
    fine_tune = rows.loc["MAE fine-tune minus scratch (both early-stopped)"]
    assert fine_tune["difference (points)"] == "+0.00"  # +1, 0, -1
    assert fine_tune["verdict"] == "inconclusive at n=3"
    random = rows.loc["MAE probe minus a random encoder's probe"]
    assert random["verdict"] == "holds"


def test_a_missing_arm_is_named_not_compared(tmp_path):
    classifier(tmp_path, "pixels_seed1", "pixels-lin", 0.82, seed=1)
    rows = cells.wide(built(tmp_path)["headline_differences"])
    assert rows.loc["MAE fine-tune minus scratch (both early-stopped)",
                    "difference (points)"] == "— (an arm has no finished run)"


@pytest.mark.parametrize("probe_stage", ["mae-lin", "pretrain-cls-lin"])
def test_endpoints_table_pairs_the_ablation_s_lowest_and_highest_value(tmp_path, probe_stage):
    """Table 1's endpoints: highest minus lowest value, on the tuned probe where it ran."""
    study(tmp_path)
    for s in SEEDS:
        for exp, depth, ft, lin in (("abl_default", 4, 0.85, 0.70),
                                    ("abl_depth1", 1, 0.85, 0.60 + 0.01 * s),
                                    ("abl_depth8", 8, 0.86 + 0.01 * (s == 3), 0.75)):
            pretrain(tmp_path, f"{exp}_seed{s}", seed=s, decoder_layer=depth)
            classifier(tmp_path, f"{exp}_seed{s}", "pretrain-cls", ft, seed=s)
            classifier(tmp_path, f"{exp}_seed{s}", probe_stage, lin, seed=s)
    by_name = built(tmp_path)
    depth = cells.wide(by_name["ablation:decoder_layer"])
    assert tables.ABLATION_STAGES[probe_stage] in depth.columns
    assert tables.ABLATION_STAGES["pretrain-cls-lin" if probe_stage == "mae-lin"
                                  else "mae-lin"] not in depth.columns
    rows = cells.wide(by_name["endpoints"])
    probe = rows.loc["decoder depth (blocks) 8 minus 1: probe"]
    # 75 - (61, 62, 63) = 14, 13, 12: mean 13, std 1
    assert (probe["difference (points)"], probe["verdict"]) == ("+13.00", "holds")
    assert probe["paper's trend"].startswith("deeper decoder -> better probe")
    assert probe["paper's difference"] == "+8.0 (65.5 -> 73.5)"  # Table 1, 1 -> 8 blocks
    fine_tune = rows.loc["decoder depth (blocks) 8 minus 1: fine-tune"]
    assert fine_tune["difference (points)"] == "+1.33"  # 1, 1, 2
    assert fine_tune["paper's difference"] == "+0.1 (84.8 -> 84.9)"
    assert not any(name.startswith("main:") for name in by_name)  # the headline holds them


def test_early_stopping_figure_marks_the_chosen_epoch(tmp_path):
    study(tmp_path)
    for s in SEEDS:  # 5,000 labelled images in batches of 128: 40 optimizer steps an epoch
        for exp, stage in ((f"scratch_seed{s}", "scratch-cls"), (f"head_seed{s}", "pretrain-cls")):
            set_args(tmp_path / exp / stage, max_train_images=5000, batch_size=128)
    frame = run_table.collect_runs(tmp_path)
    (ax,) = figures.plot_stopping(frame).axes
    curves = [line for line in ax.lines if line.get_marker() != "*"]
    stars = [line for line in ax.lines if line.get_marker() == "*"]
    assert len(curves) == len(stars) == 6  # scratch and fine-tune, three seeds each
    assert curves[0].get_xdata().tolist() == [40, 80]  # the fixture's two epochs
    # head_seed1 first: best_epoch 1 (0-based) -> 80 steps; best_val_acc 0.89 + 0.0078
    assert [(s.get_xdata()[0], round(s.get_ydata()[0], 2)) for s in stars[:1]] == [(80, 89.78)]
    names = figures.build_figures(frame, tables.build_tables(frame, "abl_default"))
    assert {"early_stopping.png", "pretrain_loss_headline.png"} <= set(names)


def test_paper_row_maps_decoder_width_by_its_ratio_to_the_encoder_width():
    """Table 1's widths are ViT-L's (1024 wide): ViT-T's 96 (0.5x) is the paper's 512."""
    assert tables.paper_row("decoder_dim", 96, 192) == tables.PAPER_TABLE1["decoder_dim"][512]
    assert tables.paper_row("decoder_dim", 768, 192) is None  # 4x: wider than Table 1 goes
    assert tables.paper_row("decoder_layer", 8, 192) == tables.PAPER_TABLE1["decoder_layer"][8]
    assert tables.paper_row("mask_ratio", 0.9, 192) is None  # Figure 5, not Table 1
    assert tables.paper_difference(None, (84.9, 73.5), 1) == "not in Table 1"


def readout_study(root):
    """study() with the head encoders also read out as the mean patch token of block 4: its
    validation accuracy beats the default's on average (0.86, 0.86, 0.82 against
    0.8078 + 0.01 s), not on every seed; its test accuracy is 0.85."""
    study(root)
    for s in SEEDS:
        for features in ("mae", "random"):
            run = classifier(root, f"head_seed{s}", f"{features}-mean-b4-lin", 0.85, seed=s)
            set_summary(run, best_val_acc=0.86 - 0.04 * (s == 3) - 0.5 * (features == "random"))


def test_the_read_out_chosen_on_validation_heads_the_headline(tmp_path):
    readout_study(tmp_path)
    t = built(tmp_path)
    rows = cells.wide(t["headline"])
    chosen = "MAE encoder: tuned linear probe, chosen read-out: mean patch token, block 4"
    default = "MAE encoder: tuned linear probe, cls token, last block"
    assert list(rows.index[:2]) == [chosen, default]
    assert rows.loc[chosen, "test acc at the validation choice (%)"].startswith("84.87 ± 0.00")
    diffs = cells.wide(t["headline_differences"])
    probe = "MAE probe (mean patch token, block 4, chosen) minus the best pixel probe"
    assert diffs.loc[f"{probe} (pixels-lin, chosen on validation)",
                     "difference (points)"] == "+2.60"  # 85 - (82.2, 82.4, 82.6)
    random = diffs.loc["MAE probe minus a random encoder's probe"]  # random: its default
    assert random["difference (points)"] == "+34.33"  # 84.87 - (49.87, 51.87, 49.87)
    notes = t["readouts"]["notes"]
    # mean val: (0.86, 0.86, 0.82) -> 0.8467 against 0.8078 + 0.01 s -> 0.8278: +1.89
    assert ("MAE encoder, mean patch token, block 4: tuned linear probe: chosen on validation, "
            "+1.89 points of mean validation accuracy over the runner-up (MAE encoder, cls token, "
            "last block: tuned linear probe), +1.89 over the default read-out (cls token, last "
            "block)") in notes
    assert "MAE encoder, cls token, last block: tuned kNN: chosen on validation" in notes
    assert list(cells.wide(t["readouts"]).index[:3]) == [  # defaults first, the probe first
        "MAE encoder, cls token, last block: tuned linear probe",
        "MAE encoder, mean patch token, block 4: tuned linear probe",
        "MAE encoder, cls token, last block: tuned kNN"]


def test_a_read_out_is_chosen_on_its_own_group_s_usable_runs(tmp_path):
    """Another group's runs of the same read-out, or a run the report cannot use, never sway
    the head encoders' choice."""
    readout_study(tmp_path)
    for s in SEEDS:
        other = classifier(tmp_path, f"head_depth8_seed{s}", "mae-cls-b3-lin", 0.5, seed=s)
        set_summary(other, best_val_acc=0.999)
    stopped = classifier(tmp_path, "head_seed1", "mae-cls-b4-lin", 0.5, seed=1)
    set_summary(stopped, best_val_acc=0.999, finished=False)
    notes = built(tmp_path)["readouts"]["notes"]
    assert any(n.startswith("MAE encoder, mean patch token, block 4: tuned linear probe: chosen")
               for n in notes), notes


def test_without_a_read_out_grid_the_headline_is_the_default_read_out(tmp_path):
    study(tmp_path)
    t = built(tmp_path)
    assert "readouts" not in t
    assert list(cells.wide(t["headline"]).index[:1]) == ["MAE encoder: tuned linear probe"]


def test_holm_and_the_paired_p_value_by_hand():
    import pandas as pd
    from scipy import stats as scipy_stats

    from mae_cifar.reporting import stats
    p = pd.Series([0.01, 0.04, 0.03, float("nan"), 0.2], index=list("abcde"))
    # sorted 0.01, 0.03, 0.04, 0.2 (m = 4) times 4, 3, 2, 1 = 0.04, 0.09, 0.08 -> 0.09, 0.2
    assert stats.holm(p).round(6).to_dict() == pytest.approx(
        {"a": 0.04, "b": 0.09, "c": 0.09, "d": float("nan"), "e": 0.2}, nan_ok=True)
    a, b = pd.Series([1.0, 2.0, 3.5, 4.0, 6.0]), pd.Series([0.5, 1.0, 3.0, 3.0, 5.5])
    pair = stats.paired(a, b)
    assert pair.p_value == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert pair.detectable_80 > pair.detectable
    assert stats.paired(a, a).p_value == 1.0
    assert math.isnan(stats.paired(a[:1], b[:1]).p_value)  # one pair: no test
    two = stats.paired(a[:2], b[:2])  # differences 0.5, 1.0: t = 3 on 1 df
    assert two.p_value == pytest.approx(scipy_stats.ttest_rel(a[:2], b[:2]).pvalue)
    # (t_0.975 + t_0.8 on 1 df) * std / sqrt(2) = (12.706 + 1.376) * 0.3536 / 1.414
    assert stats.detectable_at_power(0.3536, 2) == pytest.approx(3.52, abs=0.01)
    assert math.isnan(stats.detectable_at_power(1.0, 1))


def test_fine_tune_and_scratch_each_at_the_lr_validation_chooses_per_seed(tmp_path):
    """study() plus a second lr of each classifier (study.sh's lr_exp names): it wins on
    validation for seeds 1 and 2 only, so each seed keeps its own pick."""
    study(tmp_path)
    for s in SEEDS:
        for exp, stage, acc in ((f"head_lr2e-3_seed{s}", "pretrain-cls", 0.95),
                                (f"scratch_lr2e-3_seed{s}", "scratch-cls", 0.93)):
            run = classifier(tmp_path, exp, stage, acc, seed=s)
            set_summary(run, best_val_acc=0.99 if s < 3 else 0.01)
    t = built(tmp_path)
    rows = cells.wide(t["headline"])
    column = "test acc at the validation choice (%)"
    # fine-tune: 94.87, 94.87, then seed 3's own lr: 88 + 3 - 0.13 = 90.87
    assert rows.loc["MAE encoder: fine-tune, early-stopped, lr chosen on validation per seed",
                    column].startswith("93.54 ± 2.31")
    assert "MAE encoder: fine-tune, early-stopped, base lr 0.001" in rows.index  # kept beside
    diffs = cells.wide(t["headline_differences"])
    tuned = diffs.loc["MAE fine-tune minus scratch (both early-stopped, each at its lr chosen "
                      "on validation)"]
    # scratch: 92.87, 92.87, then seed 3's own lr: 86 + 6 - 0.13 = 91.87; differences 2, 2, -1
    assert tuned["difference (points)"] == "+1.00"


def test_decoder_depth_at_the_headline_budget_pairs_each_arm_by_seed(tmp_path):
    """Depth arms head_depth1 / head_depth8 beside the headline arm (pretrain()'s own
    decoder_layer): 8 minus 1 and each against the headline arm, probe and fine-tune."""
    study(tmp_path)
    for s in SEEDS:
        for depth, probe, fine_tune in ((1, 0.70, 0.88), (8, 0.75 + 0.01 * s, 0.89)):
            exp = f"head_depth{depth}_seed{s}"
            pretrain(tmp_path, exp, seed=s, decoder_layer=depth)
            classifier(tmp_path, exp, "mae-lin", probe, seed=s)
            classifier(tmp_path, exp, "pretrain-cls", fine_tune, seed=s)
    rows = cells.wide(built(tmp_path)["head_depth"])
    probe = rows.loc["decoder depth 8 minus 1: probe (each arm's read-out chosen on validation)"]
    assert (probe["difference (points)"], probe["pairs (seeds)"]) == ("+7.00", "3 (1, 2, 3)")
    assert rows.loc["decoder depth 8 minus 1: fine-tune", "difference (points)"] == "+1.00"
    assert len(rows) == 6  # 8 - 1, and 1 and 8 against the headline arm's depth
