"""report.py and its modules (cells, findings, tables, figures) on a small fixture outputs
tree written in the run-file format (CPU, seconds)."""

import ast
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

import report
from mae_cifar import cli
from mae_cifar.reporting import cells, figures, findings, run_table, tables

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRETRAIN_COLUMNS = ["epoch", "train_loss", "lr", "eval_loss", "epoch_seconds", "images_per_s",
                    "knn_acc"]
CLS_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
               "test_acc", "epoch_seconds", "images_per_s"]
PRETRAIN_ARGS = {
    "seed": 0, "dataset": "cifar10", "total_epoch": 3, "warmup_epoch": 1, "batch_size": 512,
    "base_learning_rate": 1.5e-4, "mask_ratio": 0.75, "decoder_layer": 4, "decoder_dim": 192,
    "decoder_head": 3, "emb_dim": 192, "encoder_layer": 12, "encoder_head": 3, "patch_size": 2,
    "norm_pix_loss": False, "pos_embed": "sincos", "augment": "flip_crop",
    "max_train_images": 1024,
}
CLS_ARGS = {
    "seed": 0, "dataset": "cifar10", "total_epoch": 2, "warmup_epoch": 1, "batch_size": 128,
    "base_learning_rate": 1e-3, "linear_probe": False, "pretrained_model_path": None,
    "recipe": "default", "val_split": 0.1,
}
OLD = 10 * 24 * 3600  # seconds: older than any --stale_hours default


# ----------------------------------------------------------------------------- fixture tree


def write_stage(root, exp, stage, args, rows, summary=None, locked=False, extra_lines=()):
    """One stage folder: args.json, metrics.csv (+ raw extra lines), summary.json, .lock."""
    folder = root / exp / stage
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps({**args, "exp_name": exp}))
    columns = PRETRAIN_COLUMNS if stage == run_table.PRETRAIN else CLS_COLUMNS
    with open(folder / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        f.writelines(line + "\n" for line in extra_lines)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps({"finished": True, **summary}))
    if locked:
        (folder / run_table.LOCK_FN).write_text("12345\n")
    return folder


def pretrain(root, exp, done=None, knn=None, seed=0, **overrides):
    """mae-pretrain stage; finished unless done (epochs written) < total_epoch."""
    args = {**PRETRAIN_ARGS, "seed": seed, **overrides}
    total = args["total_epoch"]
    done = total if done is None else done
    rows = [{"epoch": e, "train_loss": 0.5 - 0.1 * e, "lr": 1e-4, "eval_loss": 0.6 - 0.1 * e,
             "epoch_seconds": 60.0, "images_per_s": 1000.0,
             "knn_acc": "" if knn is None or e % 2 else knn} for e in range(done)]
    summary = None if done < total else {
        "epochs": total, "final_train_loss": rows[-1]["train_loss"],
        "final_eval_loss": rows[-1]["eval_loss"], "wall_seconds": 60.0 * total, "knn_acc": knn}
    return write_stage(root, exp, run_table.PRETRAIN, args, rows, summary, locked=done < total)


def classifier(root, exp, stage, test_acc=None, done=None, split="val", locked=True, seed=0,
               extra_lines=()):
    """Classifier stage; finished with final_test_acc=test_acc unless test_acc is None."""
    args = {**CLS_ARGS, "seed": seed, "linear_probe": stage.endswith("-lin")}
    total = args["total_epoch"]
    done = total if done is None else done
    rows = [{"epoch": e, "lr": 1e-3, "train_loss": 1.0 - 0.1 * e, "train_acc": 0.5 + 0.1 * e,
             "val_loss": 1.1 - 0.1 * e, "val_acc": 0.45 + 0.1 * e, "test_loss": 1.2,
             "test_acc": 0.4 + 0.1 * e, "epoch_seconds": 300.0, "images_per_s": 500.0}
            for e in range(done)]
    summary = None if test_acc is None else {
        "mode": "finetune", "epochs": total, "final_test_acc": test_acc,
        "best_val_acc": test_acc + 0.0078, "best_epoch": 1, "test_acc_at_best": test_acc - 0.0013,
        "selection_split": split, "wall_seconds": 600.0}
    return write_stage(root, exp, stage, args, rows, summary, locked and test_acc is None,
                       extra_lines)


def build_outputs(root):
    """Write the fixture tree; returns the reconstruction grid the report must copy."""
    main = "main_exp_150_50"
    folder = pretrain(root, main, knn=0.45)
    for epoch in (0, 2):
        image = folder / "images" / f"epoch_{epoch:04d}" / "reconstruction.png"
        image.parent.mkdir(parents=True)
        matplotlib.image.imsave(image, np.full((4, 4, 3), epoch / 2))
    classifier(root, main, "scratch-cls", 0.7512)
    classifier(root, main, "pretrain-cls", 0.9123,
               extra_lines=["garbage,row", "1,not-a-number" + ",0" * 8, "2,0.001"])
    classifier(root, main, "pretrain-cls-lin", 0.5534)
    classifier(root, main, "scratch-cls-lin", 0.3345, extra_lines=["\0" * 16])
    # decoder depth ablation: 2 finished, 1 fine-tuning, 6 pretraining, 8 missing
    pretrain(root, "ablation_depth_d2", decoder_layer=2)
    classifier(root, "ablation_depth_d2", "pretrain-cls", 0.8765)
    classifier(root, "ablation_depth_d2", "pretrain-cls-lin", 0.4321)
    pretrain(root, "ablation_depth_d1", decoder_layer=1)
    classifier(root, "ablation_depth_d1", "pretrain-cls", done=1)
    pretrain(root, "ablation_depth_d6", done=1, decoder_layer=6)
    # depth 2 but other pretraining epochs: not part of the depth ablation
    pretrain(root, "ablation_depth_d2_short", decoder_layer=2, total_epoch=1)
    classifier(root, "ablation_depth_d2_short", "pretrain-cls", 0.1111)
    # width 64 needs fewer heads
    pretrain(root, "ablation_width_w64", decoder_dim=64, decoder_head=2)
    classifier(root, "ablation_width_w64", "pretrain-cls", 0.8)
    classifier(root, "ablation_width_w64", "pretrain-cls-lin", 0.4)
    # mask 0.9: fine-tuning crashed (no lock)
    pretrain(root, "ablation_mask_m0.9", mask_ratio=0.9)
    classifier(root, "ablation_mask_m0.9", "pretrain-cls", done=1, locked=False)
    # two seeds of one study, selected on test
    for seed, scratch_acc in ((1, 0.5), (2, 0.54)):
        exp = f"cpu_study_seed{seed}"
        pretrain(root, exp, seed=seed, total_epoch=2)
        classifier(root, exp, "scratch-cls", scratch_acc, split="test", seed=seed)
    classifier(root, "cpu_study_seed1", "pretrain-cls", 0.61, split="test", seed=1)
    classifier(root, "cpu_study_seed2", "pretrain-cls", done=1, seed=2)
    # unreadable files
    broken = root / "broken_exp" / run_table.PRETRAIN
    broken.mkdir(parents=True)
    (broken / "args.json").write_text("{not json")
    (broken / "metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    (broken / "summary.json").write_text("[1, 2]")
    return folder / "images" / "epoch_0002" / "reconstruction.png"


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    recon = build_outputs(root)
    return root, recon


@pytest.fixture(scope="module")
def runs(tree):
    return run_table.collect_runs(tree[0])


@pytest.fixture(scope="module")
def written(tree):
    out = tree[0].parent / "report_out"
    return report.write_report(tree[0], out)


def cells_by_row(table):
    """Row label -> the texts of its cells, as results.md shows them."""
    return {label: list(texts) for label, texts in cells.wide(table).iterrows()}


def run_of(runs, exp, stage):
    return runs.set_index(["exp", "stage"]).loc[(exp, stage)]


# ----------------------------------------------------------------------------- tables


def test_metrics_with_a_bom_read_as_training_reads_them(tmp_path):
    """Excel saves CSVs with a UTF-8 BOM; fileio.read_metrics (resume) accepts it, so the
    report must not drop every row of such a file."""
    path = tmp_path / "metrics.csv"
    path.write_text("\ufeffepoch,train_loss\n0,0.5\n1,0.25\n", encoding="utf-8")
    frame = run_table.metrics_frame(path)
    assert frame["epoch"].tolist() == [0, 1] and frame["train_loss"].tolist() == [0.5, 0.25]


def test_corrupt_metrics_rows_are_skipped(runs):
    run = run_of(runs, "main_exp_150_50", "pretrain-cls")
    assert run["metrics"]["epoch"].tolist() == [0, 1]
    zero_filled = run_of(runs, "main_exp_150_50", "scratch-cls-lin")
    assert zero_filled["metrics"]["epoch"].tolist() == [0, 1]
    broken = run_of(runs, "broken_exp", run_table.PRETRAIN)
    assert (broken["args"], len(broken["metrics"]), broken["status"]) == ({}, 0, "stopped")
    assert broken[list(run_table.SUMMARY_NUMBERS)].isna().all()  # summary.json is not an object


def test_main_table(runs):
    table = tables.main_table(runs, "main_exp_150_50")
    assert list(cells.wide(table).columns[:3]) == [
        "final test acc (%)", "best val acc (%)", "test acc at best-val epoch (%)"]
    rows = cells_by_row(table)
    assert rows["fine-tuned (MAE)"] == ["91.23", "92.01", "91.10", "2", "10.0"]
    assert rows["scratch"][0] == "75.12"
    assert rows["linear probe (MAE encoder)"][0] == "55.34"
    assert rows["linear probe (random encoder)"][0] == "33.45"
    assert "final kNN acc on test (%) 45.00" in table["notes"][0]
    assert "optimizer steps 6," in table["notes"][0]  # 3 epochs x ceil(1024 / 512)


def test_seed_group_mean_std(runs):
    table = tables.main_table(runs, "cpu_study")
    assert "best test acc (%, selected on test)" in cells.wide(table).columns
    rows = cells_by_row(table)
    # 95% CI: 52 ± t(0.975, df=1) 12.706 * 2.828 / sqrt(2) = 52 ± 25.41
    assert rows["scratch"][0] == "52.00 ± 2.83 (n=2; 95% CI [26.59, 77.41])"
    assert rows["fine-tuned (MAE)"][0] == "61.00 (n=1; cpu_study_seed2: running, epoch 1/2)"
    assert rows["fine-tuned (MAE)"][1:] == ["61.78 (n=1)", "60.87 (n=1)", "2 (n=1)", "10.0 (n=1)"]
    assert rows["linear probe (MAE encoder)"] == ["— (missing)", "—", "—", "—", "—"]


def test_classifier_only_group_lists_the_classifiers_it_has(tmp_path):
    classifier(tmp_path, "scratch_long_seed1", "scratch-cls", 0.7, seed=1)
    classifier(tmp_path, "scratch_long_seed2", "scratch-cls", seed=2)  # running
    rows = cells_by_row(tables.main_table(run_table.collect_runs(tmp_path), "scratch_long"))
    assert list(rows) == ["scratch"]  # no "fine-tuned (MAE): missing" for a scratch-only group
    assert rows["scratch"][0].startswith("70.00 (n=1; scratch_long_seed2: ")


def test_depth_ablation(runs):
    assert tables.find_ablation_base(runs) == "main_exp_150_50"
    rows = cells_by_row(tables.ablation_table(runs, "decoder_layer", "main_exp_150_50"))
    assert list(rows) == ["1", "2", "4 (default)", "6", "8"]
    assert rows["2"] == ["`ablation_depth_d2`", "87.65", "43.21"]
    assert rows["4 (default)"][1:] == ["91.23", "55.34"]
    assert rows["1"][1:] == ["— (running, epoch 1/2)", "— (missing)"]
    assert rows["6"][1] == "— (pretraining running, epoch 1/3)"
    assert rows["8"] == ["—", "— (missing)", "— (missing)"]


def test_width_and_mask_ablations(runs):
    width = cells_by_row(tables.ablation_table(runs, "decoder_dim", "main_exp_150_50"))
    assert width["64 (decoder_head=2)"][1:] == ["80.00", "40.00"]
    assert width["192 (default)"][1] == "91.23"
    mask = cells_by_row(tables.ablation_table(runs, "mask_ratio", "main_exp_150_50"))
    assert mask["0.9"][1] == "— (stopped, epoch 1/2)"
    assert mask["0.75 (default)"][1] == "91.23"


def test_explicit_ablation_base(runs):
    rows = cells_by_row(tables.ablation_table(runs, "decoder_layer", base="cpu_study"))
    assert rows["4 (default)"][:2] == ["`cpu_study`",
                                       "61.00 (n=1; cpu_study_seed2: running, epoch 1/2)"]
    assert rows["2"] == ["—", "— (missing)", "— (missing)"]


def test_main_tables_leave_out_ablation_variants(runs):
    names = [t["name"] for t in tables.build_tables(runs) if t["name"].startswith("main:")]
    # broken_exp's pretraining never finished: the pretraining table shows it, alone
    assert names == ["main:ablation_depth_d2_short", "main:cpu_study", "main:main_exp_150_50"]


def test_stale_locked_run_is_stopped(tmp_path):
    folder = classifier(tmp_path, "exp", "scratch-cls", done=1)
    assert run_table.load_run(folder)["progress"] == "running, epoch 1/2"
    for path in folder.iterdir():
        os.utime(path, (path.stat().st_atime, path.stat().st_mtime - OLD))
    assert run_table.load_run(folder)["progress"] == "stopped, epoch 1/2"


# ----------------------------------------------------------------------------- files


def test_results_md_and_csv_hold_the_same_numbers(written):
    text = written.read_text()
    assert "| 2 | `ablation_depth_d2` | 87.65 | 43.21 |" in text  # no kNN runs: no kNN column
    assert "| 8 | — | — (missing) | — (missing) |" in text
    with open(written.parent / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cell = next(r for r in rows if r["table"] == "ablation:decoder_layer" and r["row"] == "2"
                and r["column"] == tables.ABLATION_STAGES["pretrain-cls"])
    assert float(cell["value"]) == pytest.approx(87.65) and cell["text"] == "87.65"
    seeds = next(r for r in rows if r["table"] == "main:cpu_study" and r["row"] == "scratch"
                 and r["column"] == "final test acc (%)")
    assert (float(seeds["std"]), seeds["n"]) == (pytest.approx(2.828, abs=1e-3), "2")
    for row in (r for r in rows if r["value"]):  # every number shown is the csv value, rounded
        shown = row["text"].split()[0]
        digits = len(shown.partition(".")[2])
        assert f"{float(row['value']):.{digits}f}" == shown


def test_figures_are_png_and_reconstruction_is_copied(tree, written):
    out = written.parent
    pngs = sorted(out.glob("*.png"))
    # two datasets (broken_exp's is not recorded): each figure is one dataset's, so named
    assert {"pretrain_loss_cifar10.png", "knn_acc_cifar10.png",
            "ablation_decoder_layer_cifar10.png", "classifier_main_exp_150_50_cifar10.png",
            "pretrain_loss_not_recorded.png"} <= {p.name for p in pngs}
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert (out / "reconstruction_main_exp_150_50.png").read_bytes() == tree[1].read_bytes()
    assert "reconstruction_main_exp_150_50.png" in written.read_text()
    assert not list(out.glob(".*.tmp"))


def test_empty_root_and_cli_default_out(tmp_path):
    with pytest.raises(cli.UsageError, match="not a folder"):  # a mistyped root
        report.write_report(tmp_path / "absent", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    empty = report.write_report(tmp_path / "empty", tmp_path / "out").read_text()
    assert "(no runs)" in empty and "Ablation" not in empty  # no default run, no ablation
    assert not (tmp_path / "out" / "knn_acc.png").exists()  # no kNN monitor, no empty figure
    args = report.get_args_parser().parse_args(["--outputs_root", str(tmp_path / "empty")])
    report.main(args)
    assert (tmp_path / "empty" / "report" / "results.md").is_file()


# ----------------------------------------------------------------------------- notebook


def test_notebook_runs_headless_on_fixture(tree, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(REPO / "metrics.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    monkeypatch.setenv("OUTPUTS_ROOT", str(tree[0]))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    # cifar10's loss and kNN figures, then the loss figure of the run without a dataset
    assert sum("image/png" in o.get("data", {}) for o in code[1].outputs) == 3
    shown = json.dumps([c.outputs for c in code])
    assert "87.65" in shown and "### Dataset `cifar10`" in shown
    assert "### Dataset `not recorded`" in shown


REPORT_LAYERS = ("mae_cifar.cli", "mae_cifar.fileio", *(f"mae_cifar.reporting.{m}" for m in (
    "stats", "run_table", "cells", "findings", "headline", "tables", "figures")),
    "report")  # each module of the report imports only modules before it


def test_report_imports_no_torch():
    """The report's modules and the notebook's imports stay light: no torch."""
    code = (f"import sys, {', '.join(REPORT_LAYERS)}; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_report_modules_import_only_lower_layers():
    """No cycle and no upward arrow among the report's modules (REPORT_LAYERS)."""
    for i, name in enumerate(REPORT_LAYERS):
        tree = ast.parse((REPO / f"{name.replace('.', '/')}.py").read_text())
        imported = {f"{n.module}.{a.name}" for n in ast.walk(tree)
                    if isinstance(n, ast.ImportFrom) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                     for a in n.names}
        assert not imported & set(REPORT_LAYERS[i:]), f"{name}.py imports a layer above it"


# ----------------------------------------------------------------------------- stats


def test_t_interval_against_hand_computed_values():
    from mae_cifar.reporting import stats
    assert stats.t_quantile(3) == pytest.approx(4.303, abs=1e-3)  # t(0.975, df=2)
    assert stats.t_quantile(2) == pytest.approx(12.706, abs=1e-3)
    e = stats.estimate([60.0, 62.0, 64.0])  # mean 62, std 2, sem 2 / sqrt(3)
    assert (e.mean, e.std, e.n) == (62.0, 2.0, 3)
    half = 4.303 * 2 / 3 ** 0.5  # 4.968
    assert (e.low, e.high) == (pytest.approx(62 - half, abs=1e-3),
                               pytest.approx(62 + half, abs=1e-3))
    one = stats.estimate([5.0, float("nan")])
    assert one.n == 1 and np.isnan(one.std) and np.isnan(one.low)


def test_paired_difference_by_seed_and_the_decision_rule():
    import pandas as pd

    from mae_cifar.reporting import stats
    a = pd.Series({1: 70.0, 2: 72.0, 3: 74.0, 4: 99.0})  # seed 4 has no partner
    b = pd.Series({3: 71.0, 1: 68.0, 2: 69.5})
    p = stats.paired(a, b)  # differences 2, 2.5, 3: mean 2.5, std 0.5
    assert p.differences.to_dict() == {1: 2.0, 2: 2.5, 3: 3.0}
    assert (p.n, p.estimate.mean, p.estimate.std) == (3, 2.5, 0.5)
    assert p.detectable == pytest.approx(4.303 * 0.5 / 3 ** 0.5, abs=1e-3)  # 1.242
    assert p.holds and p.verdict == "holds"  # [1.26, 3.74] excludes 0
    assert stats.difference_text(p, 2) == (
        "+2.50 points, 95% CI [1.26, 3.74], n=3 pairs (seeds 1, 2, 3), smallest detectable "
        "difference 1.24: holds")
    wide = stats.paired(pd.Series({1: 70.0, 2: 60.0}), pd.Series({1: 65.0, 2: 62.0}))
    assert not wide.holds and wide.verdict == "inconclusive at n=2"  # 1.5 ± 12.7 * 4.95
    assert "95% CI [-43.0, 46.0]" in stats.difference_text(wide, 1)  # 1.5 ± 44.5
    one = stats.paired(pd.Series({1: 70.0}), pd.Series({1: 65.0, 2: 62.0}))
    assert stats.difference_text(one, 2) == (
        "+5.00 points, n=1 pair (seed 1), no interval: inconclusive at n=1")
    assert stats.difference_text(stats.paired(pd.Series({1: 1.0}), pd.Series({2: 1.0})), 2) == (
        "no seed in common")


def test_zero_spread_intervals_and_the_decision_rule_at_its_edges():
    """Equal values: the interval is the point (scipy gives nan for a zero scale). The rule
    holds only when the interval excludes 0: not when it ends at 0 or crosses it, however
    close its far end is to 0."""
    import pandas as pd

    from mae_cifar.reporting import stats
    assert stats.estimate([5.0, 5.0, 5.0]) == stats.Estimate(5.0, 0.0, 3, 5.0, 5.0)
    seeds = [1, 2, 3]

    def differences(*d):
        return stats.paired(pd.Series(d, index=seeds), pd.Series(0.0, index=seeds))

    assert not differences(0.0, 0.0, 0.0).holds  # the interval [0, 0] does not exclude 0
    assert differences(0.5, 0.5, 0.5).holds and differences(-0.5, -0.5, -0.5).holds
    crossing = differences(-1.5, -1.0, -0.5)  # -1 ± 1.24: [-2.24, 0.24]
    assert crossing.estimate.low < 0 < crossing.estimate.high < 1 and not crossing.holds


def test_pairs_skip_the_seeds_an_arm_has_no_value_for():
    import pandas as pd

    from mae_cifar.reporting import stats
    a = pd.Series({1: 70.0, 2: float("nan"), 3: 74.0})  # seed 2's run has no result
    p = stats.paired(a, pd.Series({1: 68.0, 2: 69.5, 3: 71.0}))
    assert p.differences.to_dict() == {1: 2.0, 3: 3.0}
    assert "n=2 pairs (seeds 1, 3)" in stats.difference_text(p, 2)


def test_one_value_has_no_interval_text():
    from mae_cifar.reporting import stats
    assert stats.interval_text(stats.estimate([5.0]), 2) == ""
    assert stats.interval_text(stats.estimate([4.0, 6.0]), 1) == "95% CI [-7.7, 17.7]"


def test_no_hand_rolled_noise_rule_is_left():
    from mae_cifar.reporting import stats
    source = "".join((REPO / f"{name.replace('.', '/')}.py").read_text() for name in REPORT_LAYERS)
    assert "NOISE_STDS" not in source and "difference_std" not in source
    assert not hasattr(stats, "sample_std")


# ----------------------------------------------------------------------------- hostile trees


def test_non_result_args_copy_matches_runfolder():
    from mae_cifar.training import run_folder  # imports torch: the report keeps a torch-free copy
    assert run_table.NON_RESULT_ARGS == run_folder.NON_RESULT_ARGS


def set_args(folder, **changes):
    path = folder / "args.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("key, values", [("augment", ("flip", "none")),
                                         ("max_train_images", (5000, 500)),
                                         ("pool", ("cls", "mean")), ("mixup", (0.0, 0.8)),
                                         ("image_size", (None, 16)),
                                         ("data_sha256", ("a" * 64, "b" * 64))])
def test_seeds_whose_settings_differ_are_not_averaged(tmp_path, key, values):
    for seed, (acc, value) in enumerate(zip((0.9, 0.125), values, strict=True), start=1):
        set_args(classifier(tmp_path, f"arm_seed{seed}", "scratch-cls", acc, seed=seed),
                 **{key: value})
    frame = run_table.collect_runs(tmp_path)
    text = cells_by_row(tables.main_table(frame, "arm"))["scratch"][0]
    assert "51.25" not in text and "(n=2" not in text
    assert text == (f"not averaged: settings differ between seeds ({key}): 90.00 (`arm_seed1`), "
                    "12.50 (`arm_seed2`)")
    assert findings.arm(frame, "arm", "scratch-cls") is None  # and no paired finding from them
    assert f"scratch-cls: settings differ between seeds (not averaged): {key}" in (
        tables.main_table(frame, "arm")["notes"])


def test_non_result_flags_may_differ_between_seeds(tmp_path):
    for seed, device in ((1, "cpu"), (2, "cuda")):
        set_args(classifier(tmp_path, f"arm_seed{seed}", "scratch-cls", 0.5, seed=seed),
                 device=device, pretrained_model_path=f"outputs/m{seed}.pt")
    text = cells_by_row(tables.main_table(run_table.collect_runs(tmp_path), "arm"))["scratch"][0]
    assert text.startswith("50.00 ± 0.00 (n=2")


def test_seed_comes_from_args_json_and_a_copy_counts_once(tmp_path):
    first = classifier(tmp_path, "main_seed1", "scratch-cls", 0.5, seed=1)
    copy = tmp_path / "main_seed01" / "scratch-cls"
    copy.parent.mkdir()
    import shutil
    shutil.copytree(first, copy)
    set_args(classifier(tmp_path, "main_seed2", "scratch-cls", 0.7, seed=1), exp_name="x")
    classifier(tmp_path, "main_seed3", "scratch-cls", 0.6, seed=3)
    frame = run_table.collect_runs(tmp_path)
    assert sorted(frame["seed"]) == [1, 1, 1, 3]  # args.json's seeds, not the folder names
    dup = frame.set_index("exp")["duplicate"]
    assert dup["main_seed1"] == "the same run files as `main_seed01`: counted once"
    assert dup["main_seed2"] == "seed 1 again, other results than `main_seed01`: left out"
    text = cells_by_row(tables.main_table(frame, "main"))["scratch"][0]
    assert text.startswith("55.00 ± 7.07 (n=2;")  # seeds 1 and 3 only
    assert "main_seed1: the same run files as `main_seed01`: counted once" in text
    assert "main_seed2: seed 1 again" in text


def test_a_symlink_and_its_target_count_once(tmp_path):
    classifier(tmp_path, "main_seed1", "scratch-cls", 0.5, seed=1)
    classifier(tmp_path, "main_seed2", "scratch-cls", 0.6, seed=2)
    (tmp_path / "a_link_seed1").symlink_to(tmp_path / "main_seed1")  # sorts first
    (tmp_path / "main_seed9").symlink_to(tmp_path / "main_seed2")
    frame = run_table.collect_runs(tmp_path)
    assert sorted(frame["exp"]) == ["main_seed1", "main_seed2"]  # the real folders stand
    assert cells_by_row(tables.main_table(frame, "main"))["scratch"][0].startswith(
        "55.00 ± 7.07 (n=2;")


@pytest.mark.parametrize("summary", [{"finished": True}, {"finished": True,
                                                           "selection_split": None},
                                     {"finished": True, "selection_split": 3,
                                      "final_test_acc": "x"}])
def test_finished_summary_without_a_selection_split(tmp_path, summary):
    folder = classifier(tmp_path, "old_seed1", "pixels-lin", 0.5, seed=1)
    (folder / "summary.json").write_text(json.dumps(summary))
    classifier(tmp_path, "search_x_seed1", "pretrain-cls-lin", 0.6, seed=1)
    for exp in ("old_seed1", "main_seed1"):
        classifier(tmp_path, exp, "scratch-cls", 0.5, seed=1)
    (folder := tmp_path / "old_seed1" / "scratch-cls" / "summary.json").write_text(
        json.dumps(summary))
    text = report.write_report(tmp_path, tmp_path / "out", ablation_base="main").read_text()
    assert "`old_seed1` pixels-lin" in text
    table = tables.main_table(run_table.collect_runs(tmp_path), "old")
    assert cells_by_row(table)["scratch"][0].startswith("— (")  # finished, without the number
    assert "names no selection split" in " ".join(table["notes"])


def test_pca_stages_and_the_eval_split_are_reported(tmp_path):
    for stage, acc in (("pixels-lin", 0.80), ("pixels-pca64-lin", 0.82), ("pixels-knn", 0.81),
                       ("pixels-pca64-knn", 0.79)):
        classifier(tmp_path, "baseline_seed1", stage, acc, seed=1)
    folder = pretrain(tmp_path, "main_seed1", seed=1, knn=0.5)
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "images": {
        "eval_split": "val", "pretrain": {"source": "train", "count": 3000}}}))
    classifier(tmp_path, "main_seed1", "pretrain-cls-lin", 0.85, seed=1)
    frame = run_table.collect_runs(tmp_path)
    assert run_of(frame, "main_seed1", run_table.PRETRAIN)["steps"] == 3 * 6  # ceil(3000 / 512)
    by_name = {t["name"]: t for t in tables.build_tables(frame, ablation_base="main")}
    rows = cells_by_row(by_name["baselines"])
    assert rows["linear probe on raw pixels, PCA to 64 dims"][1] == "82.00 (n=1)"
    assert rows["kNN on raw pixels, PCA to 64 dims"][1] == "79.00 (n=1)"
    assert "final kNN acc on val (%)" in cells.wide(by_name["pretrain"]).columns
    finding = by_name["baselines"]["finding"]  # the best pixel probe on validation: PCA 64
    assert ("MAE pretrain-cls-lin minus the best pixel lin on validation (pixels-pca64-lin) "
            "+3.00 points, n=1 pair (seed 1), no interval: inconclusive at n=1") in finding


def test_loss_targets_never_share_an_axis(tmp_path):
    pretrain(tmp_path, "a", norm_pix_loss=True)
    pretrain(tmp_path, "b")
    fig = figures.plot_pretrain_curves(run_table.collect_runs(tmp_path))
    titles = {ax.get_title(): [line.get_label() for line in ax.lines] for ax in fig.axes}
    assert titles["normalised pixels target: train loss"] == ["a"]
    assert titles["pixels target: train loss"] == ["b"]
    assert all(ax.get_xlabel() == "optimizer steps" for ax in fig.axes)
    assert fig.axes[0].lines[0].get_xdata().tolist() == [2, 4, 6]  # (epoch + 1) x 2 steps


def test_pilot_table_shows_validation_only_and_names_the_rule_s_pick(tmp_path):
    """study.sh PART=pilot: one row per variant with its tuned probe and kNN on validation,
    the grid cell each chose (and an end of the grid it hit), no test accuracy, and the pick."""
    for exp, probe_acc, knn_acc in (("pilot_base_seed1", 0.77, 0.72),
                                    ("pilot_nonormpix_seed1", 0.80, 0.70)):
        pretrain(tmp_path, exp, seed=1)
        for stage, acc, chosen, edges in (("mae-lin", probe_acc, {"lr": 0.1, "epoch": 3},
                                           ["probe_lrs"]), ("mae-knn", knn_acc, {"k": 10}, [])):
            folder = classifier(tmp_path, exp, stage, test_acc=0.5, seed=1)
            summary = json.loads((folder / "summary.json").read_text())
            summary |= {"best_val_acc": acc, "chosen": chosen, "chosen_on_grid_edge": edges}
            (folder / "summary.json").write_text(json.dumps(summary))
    frame = run_table.collect_runs(tmp_path)
    (pilot,) = [t for t in tables.build_tables(frame, ablation_base="abl_default")
                if t["name"] == "pilot"]
    rows = cells.wide(pilot)
    assert rows.loc["`pilot_nonormpix`", "tuned probe: best val acc (%)"] == "80.00"
    assert rows.loc["`pilot_base`", "tuned kNN: best val acc (%)"] == "72.00"
    assert rows.loc["`pilot_base`", "tuned probe: chosen"] == "lr 0.1 (at the end of --probe_lrs)"
    assert rows.loc["`pilot_base`", "tuned kNN: chosen"] == "k 10"
    assert not any("test" in column for column in rows.columns)
    assert ("Pilot pick (highest tuned-probe validation accuracy): `pilot_nonormpix`, 80.00%; "
            "the others, in points: `pilot_base` -3.00") in pilot["finding"]
    # pilot variants get no per-experiment classification table of stages they never run
    assert not [t for t in tables.build_tables(frame, ablation_base="abl_default")
                if t["name"].startswith("main:pilot")]


# ----------------------------------------------------------------------------- issue 35
def test_untrusted_summaries_are_never_averaged(tmp_path):
    """A summary whose "finished" is the string "false" is not finished; an infinite
    accuracy is shown as untrusted, not averaged (the headline printed +inf [nan, nan])."""
    classifier(tmp_path, "arm_seed1", "scratch-cls", 0.5, seed=1)
    two = classifier(tmp_path, "arm_seed2", "scratch-cls", 0.7, seed=2)
    three = classifier(tmp_path, "arm_seed3", "scratch-cls", 0.6, seed=3)
    summary = json.loads((two / "summary.json").read_text())
    (two / "summary.json").write_text(json.dumps({**summary, "finished": "false"}))
    summary = json.loads((three / "summary.json").read_text())
    (three / "summary.json").write_text(json.dumps({**summary, "final_test_acc": float("inf")}))
    frame = run_table.collect_runs(tmp_path)
    assert frame.set_index("exp")["status"]["arm_seed2"] != run_table.FINISHED
    text = cells_by_row(tables.main_table(frame, "arm"))["scratch"][0]
    assert text.startswith("50.00 (n=1") and "inf" not in text.replace("non-finite", "")
    assert "arm_seed3: summary.json holds non-finite final_test_acc" in text


def test_a_copy_without_a_seed_counts_once(tmp_path):
    import shutil
    first = classifier(tmp_path, "main_seed1", "scratch-cls", 0.5, seed=None)
    shutil.copytree(first, tmp_path / "main_seed2" / "scratch-cls")
    frame = run_table.collect_runs(tmp_path)
    assert frame.set_index("exp")["duplicate"]["main_seed2"] == (
        "the same run files as `main_seed1`: counted once")
    assert "(n=2" not in cells_by_row(tables.main_table(frame, "main"))["scratch"][0]


def test_seeds_whose_mae_settings_differ_are_not_averaged(tmp_path):
    """Downstream seeds whose flags agree, but whose own MAEs were pretrained differently."""
    for seed, mask in ((1, 0.75), (2, 0.5)):
        mae = pretrain(tmp_path, f"arm_seed{seed}", seed=seed, mask_ratio=mask)
        summary = json.loads((mae / "summary.json").read_text())
        (mae / "summary.json").write_text(json.dumps({**summary, "model_sha256": f"m{seed}"}))
        clf = classifier(tmp_path, f"arm_seed{seed}", "pretrain-cls", 0.5 + seed / 10,
                         seed=seed)
        summary = json.loads((clf / "summary.json").read_text())
        (clf / "summary.json").write_text(json.dumps({**summary,
                                                      "pretrained_sha256": f"m{seed}"}))
    frame = run_table.collect_runs(tmp_path)
    text = cells_by_row(tables.main_table(frame, "arm"))["fine-tuned (MAE)"][0]
    assert text.startswith("not averaged: settings differ between seeds (upstream pretraining "
                           "settings)")


def test_damaged_inputs_give_a_report_or_one_error(tmp_path):
    """FIFOs named like run or environment files are never opened (they hung the report);
    JSON nested past the parser's depth, a non-UTF-8 experiment name and a malformed number
    in an environment file no longer raise; an --ablation_base naming no group is refused."""
    root, env = tmp_path / "runs", tmp_path / "env"
    fifo = classifier(root, "fifo_seed1", "scratch-cls", 0.5, seed=1)
    for name in ("summary.json", "metrics.csv"):
        (fifo / name).unlink()
        os.mkfifo(fifo / name)
    deep = classifier(root, "deep_seed1", "scratch-cls", 0.5, seed=1)
    (deep / "summary.json").write_text("[" * 100000 + "]" * 100000)
    classifier(root, os.fsdecode(b"bad\xff_seed1"), "scratch-cls", 0.5, seed=1)
    env.mkdir()
    os.mkfifo(env / "head_20250101T000000Z.md")
    (env / "tail_20250102T000000Z.md").write_text(
        "# Environment of one invocation of part `tail`\n- finished: x; wall: 1.2.3 min\n")
    path = report.write_report(root, tmp_path / "out", environment=env)
    text = path.read_text()
    assert "bad\\xff_seed1" in text and "1.2.3" not in text
    with pytest.raises(cli.UsageError, match="--ablation_base nope names no experiment group"):
        report.write_report(root, tmp_path / "out2", ablation_base="nope")
    assert not (tmp_path / "out2").exists()


# ----------------------------------------------------------------------------- datasets
def mixed_tree(root):
    """A mixed outputs folder: a quick run on generated data with a 99.8% probe, a
    Fashion-MNIST run and a stopped Fashion-MNIST run with the default ablation settings."""
    pretrain(root, "fake_quick", dataset="fake", decoder_layer=2)
    set_args(classifier(root, "fake_quick", "pretrain-cls-lin", 0.998), dataset="fake")
    pretrain(root, "fmnist", dataset="fashion_mnist", decoder_dim=128)
    set_args(classifier(root, "fmnist", "pretrain-cls", 0.9), dataset="fashion_mnist")
    os.remove(pretrain(root, "stopped", done=1, dataset="fashion_mnist") / run_table.LOCK_FN)


def test_datasets_are_never_mixed_and_a_stopped_run_is_no_ablation_default(tmp_path):
    """Each dataset has its own tables, loss plot and results.csv rows, and results.md names
    them; a stopped run with the default settings makes no ablation tables of missing rows."""
    mixed_tree(tmp_path / "runs")
    frame = run_table.collect_runs(tmp_path / "runs")
    built = tables.build_tables(frame)
    assert [(t["dataset"], t["name"]) for t in built] == [
        ("fake", "pretrain"), ("fake", "main:fake_quick"), ("fashion_mnist", "pretrain"),
        ("fashion_mnist", "main:fmnist")]  # "stopped" is in the pretraining table only
    assert tables.find_ablation_base(frame) is None  # "stopped" has the default settings
    assert all(set(t["cells"]["dataset"]) == {t["dataset"]} for t in built)
    pretrained = {t["dataset"]: list(cells.wide(t).index) for t in built
                  if t["name"] == "pretrain"}
    assert pretrained == {"fake": ["`fake_quick`"], "fashion_mnist": ["`fmnist`", "`stopped`"]}
    figs = figures.build_figures(frame, built)
    assert [line.get_label() for line in figs["pretrain_loss_fake.png"].axes[0].lines] == [
        "fake_quick"]
    assert [line.get_label() for line in figs["pretrain_loss_fashion_mnist.png"].axes[
        0].lines] == ["fmnist", "stopped"]
    text = report.write_report(tmp_path / "runs", tmp_path / "out").read_text()
    assert "Datasets: `fake`, `fashion_mnist` (args.json's `dataset`)" in text
    assert text.index("## Dataset `fake`") < text.index("## Dataset `fashion_mnist`")
    assert "Ablation" not in text
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    probe = next(r for r in rows if r["row"] == "linear probe (MAE encoder)"
                 and r["column"] == "final test acc (%)")
    assert (probe["dataset"], probe["text"]) == ("fake", "99.80")
    assert {r["dataset"] for r in rows} == {"fake", "fashion_mnist"}


def test_generated_data_accuracies_carry_a_caveat(tmp_path):
    mixed_tree(tmp_path)
    for t in tables.build_tables(run_table.collect_runs(tmp_path)):
        caveat = [n for n in t["notes"] if "say nothing about accuracy on real images" in n]
        assert len(caveat) == (t["dataset"] == "fake"), (t["name"], t["notes"])


def test_a_finished_default_without_variants_makes_no_ablation_tables(tmp_path):
    pretrain(tmp_path, "alone")
    classifier(tmp_path, "alone", "pretrain-cls", 0.8)
    frame = run_table.collect_runs(tmp_path)
    assert tables.find_ablation_base(frame) == "alone"
    assert not [t for t in tables.build_tables(frame) if t["name"].startswith("ablation:")]


def test_one_dataset_is_named_in_the_report(tmp_path):
    pretrain(tmp_path, "a", dataset="shapes")
    text = report.write_report(tmp_path, tmp_path / "out").read_text()
    assert "Dataset: `shapes` (args.json's `dataset` of every run)." in text
    assert "## Dataset" not in text and (tmp_path / "out" / "pretrain_loss.png").is_file()


def test_generated_datasets_are_the_data_module_s():
    from mae_cifar.data import datasets  # imports torch: the report keeps a torch-free list
    assert set(run_table.GENERATED) <= set(datasets.DATASETS)
    assert all(datasets.load_dataset(name, None, None).source.startswith("generated")
               for name in run_table.GENERATED)


# ----------------------------------------------------------------------------- selection
@pytest.mark.parametrize("split", ["val", "test"])
def test_the_selection_text_matches_the_run_s_split(tmp_path, split):
    """A run without a validation split chose its best epoch on test: its columns say so,
    results.md does not claim that selection never sees the test split, and there is no
    'validation accuracy over the last N epochs' (its val columns repeat the test ones)."""
    folder = classifier(tmp_path, "quick", "scratch-cls", 0.5, done=tables.PLATEAU_MIN_EPOCHS,
                        split=split)
    set_args(folder, val_split=16 if split == "val" else 0)
    table = tables.main_table(run_table.collect_runs(tmp_path), "quick")
    text = report.write_report(tmp_path, tmp_path / "out").read_text()
    validated = split == "val"
    assert ("best val acc (%)" if validated else "best test acc (%, selected on test)") in (
        cells.wide(table).columns)
    assert ("selection never sees the test split" in text) == validated
    assert ("their columns say 'selected on test'" in text) != validated
    plateau = [n for n in table["notes"] if "validation accuracy over the last" in n]
    assert len(plateau) == validated, table["notes"]
