"""train_classifier.py --early_stop_patience and --lr_schedule constant: a run stops exactly
after N epochs without a val_acc improvement, says why in summary.json, resumes to the same
result, counts as finished; the constant schedule holds the peak lr after warmup.

The validation accuracy is scripted (SCRIPTED_EVAL replaces features.evaluate), so
where the run must stop is known in advance; the training itself is real.
"""
import csv
import json
import sys

import pytest
import torch
from conftest import TINY_DATA, TINY_ENCODER, run_scripts

import train_classifier
from mae_cifar.cli import run_cli
from mae_cifar.training import classifier, engine, run_folder
from mae_cifar.training.optim import constant_lr, cosine_lr

pytestmark = pytest.mark.usefixtures("one_thread")
VAL_IMAGES = 16
STEPS_PER_EPOCH = 2  # TINY_DATA: 64 - 16 validation images, in batches of 32
PATIENCE = 3
MAX_EPOCHS = 8
# epoch 1 is the best (epoch 3 only equals it): epochs 2, 3, 4 do not improve -> stop after 4
VAL_ACC = [0.2, 0.4, 0.3, 0.4, 0.35, 0.9, 0.95, 0.99]
TEST_OFFSET = 0.05  # scripted test accuracy = val_acc - TEST_OFFSET
BEST, STOPPED = 1, 4
BASE_LR = 1e-3
PEAK_LR = BASE_LR * 32 / engine.LR_REFERENCE_BATCH
SIGTERM_EXIT = 128 + 15
WALL_CLOCK = {"epoch_seconds", "images_per_s"}
STAGE = "scratch-cls"

# `python scripted.py VAL_ACC_JSON train_classifier flags...`: train_classifier.py whose
# evaluation returns the scripted accuracy of the epoch (val split: VAL_ACC[epoch]; test
# split: that minus TEST_OFFSET). Patched once per interpreter (run_scripts runs many).
SCRIPTED_EVAL = f"""
import json, sys
import train_classifier as tc
from mae_cifar.cli import run_cli
if not hasattr(tc.Stage, "unscripted_epoch_end"):
    tc.Stage.unscripted_epoch_end = tc.Stage.on_epoch_end
    def on_epoch_end(self, epoch, stats):
        tc.scripted_epoch = epoch
        return self.unscripted_epoch_end(epoch, stats)
    def evaluate(model, split, *rest):
        acc = tc.scripted_val_acc[tc.scripted_epoch]
        acc = acc if len(split) == {VAL_IMAGES} else acc - {TEST_OFFSET}
        return 1.0 - acc, acc
    tc.Stage.on_epoch_end, tc.evaluate = on_epoch_end, evaluate
tc.scripted_val_acc = json.loads(sys.argv.pop(1))
run_cli(tc.main, tc.get_args_parser())
"""


def flags(root, val_split=VAL_IMAGES):
    return [*TINY_DATA, *TINY_ENCODER, "--val_split", str(val_split), "--total_epoch",
            str(MAX_EPOCHS), "--warmup_epoch", "1", "--base_learning_rate", str(BASE_LR),
            "--lr_schedule", "constant", "--early_stop_patience", str(PATIENCE),
            "--output_root", str(root), "--exp_name", "e"]


def folder(tmp, name):
    return tmp / name / "e" / STAGE


def read_rows(path):
    with open(path / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def summary(path):
    return json.loads((path / run_folder.SUMMARY_FN).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: uninterrupted. B: SIGTERM in the middle of epoch 2, then the same command. A again
    (finished). C: as A; then its final files are deleted, as when a run is killed after its
    last checkpoint, and the same command finishes it without training on."""
    tmp = tmp_path_factory.mktemp("early_stop")
    script = tmp / "scripted.py"
    script.write_text(SCRIPTED_EVAL)

    def cmd(name):
        return [script, json.dumps(VAL_ACC), *flags(tmp / name)]

    names = ["A", "B_stopped", "B", "A_rerun", "C_first"]
    results = run_scripts([cmd("A"), {"argv": cmd("B"), "sigterm_after": 2 * STEPS_PER_EPOCH + 1},
                           cmd("B"), cmd("A"), cmd("C")])
    c = folder(tmp, "C")
    (c / run_folder.SUMMARY_FN).unlink()
    (c / classifier.MODES[(False, False)][1]).unlink()
    results += run_scripts([cmd("C")])
    return dict(tmp=tmp, results=dict(zip(names + ["C"], results)))


def without_wall_clock(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_the_run_stops_exactly_after_patience_epochs_without_improvement(runs):
    result = runs["results"]["A"]
    assert result.returncode == 0, result.stderr
    rows = read_rows(folder(runs["tmp"], "A"))
    assert [int(r["epoch"]) for r in rows] == list(range(STOPPED + 1))
    assert [float(r["val_acc"]) for r in rows] == VAL_ACC[:STOPPED + 1]
    assert f"epoch {STOPPED + 1}/{MAX_EPOCHS}:" not in result.stdout
    # the console counts epochs as summary.json and metrics.csv do: from 0
    assert (f"stopped after epoch {STOPPED}/{MAX_EPOCHS} (patience: no val_acc improvement "
            f"for {PATIENCE} epochs after epoch {BEST})") in result.stdout


def test_summary_records_the_stop_and_its_reason(runs):
    s = summary(folder(runs["tmp"], "A"))
    assert s["finished"] is True and s["selection_split"] == "val"
    assert s["stopped_epoch"] == STOPPED and s["epochs"] == STOPPED + 1
    assert s["stop_reason"] == (f"patience: no val_acc improvement for {PATIENCE} epochs "
                                f"after epoch {BEST}")
    assert s["best_epoch"] == BEST and s["best_val_acc"] == VAL_ACC[BEST]
    assert s["test_acc_at_best"] == pytest.approx(VAL_ACC[BEST] - TEST_OFFSET)
    assert s["final_test_acc"] == pytest.approx(VAL_ACC[STOPPED] - TEST_OFFSET)


def test_constant_schedule_holds_the_peak_lr_after_warmup(runs):
    # the CSV's lr is the last step's of each epoch: mid-warmup in epoch 0, then the peak
    rows = read_rows(folder(runs["tmp"], "A"))
    want = [PEAK_LR * (STEPS_PER_EPOCH - 1) / STEPS_PER_EPOCH] + [PEAK_LR] * STOPPED
    assert [float(r["lr"]) for r in rows] == pytest.approx(want, rel=1e-5)


def test_constant_lr_per_step():
    warmup, peak = 4, 0.5
    assert [constant_lr(s, warmup, peak) for s in range(10)] == \
        [0.0, 0.125, 0.25, 0.375] + [peak] * 6
    assert constant_lr(0, 0, peak) == peak  # no warmup: the peak from the first step
    # where cosine decays, constant does not
    assert cosine_lr(8, 10, warmup, peak) < constant_lr(8, warmup, peak)


def test_resume_across_the_stop_gives_the_uninterrupted_run(runs):
    stopped = runs["results"]["B_stopped"]
    assert stopped.returncode == SIGTERM_EXIT, stopped.stderr
    resumed = runs["results"]["B"]
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "epoch 2, step 1" in resumed.stdout
    a, b = folder(runs["tmp"], "A"), folder(runs["tmp"], "B")
    assert without_wall_clock(read_rows(b)) == without_wall_clock(read_rows(a))
    for key in ("stopped_epoch", "stop_reason", "best_epoch", "test_acc_at_best", "epochs"):
        assert summary(b)[key] == summary(a)[key], key
    model_fn = classifier.MODES[(False, False)][1]
    got = torch.load(b / model_fn, weights_only=True)["model"]
    want = torch.load(a / model_fn, weights_only=True)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_stopped_run_is_finished(runs):
    rerun = runs["results"]["A_rerun"]
    assert rerun.returncode == 0, rerun.stderr
    assert "is finished; nothing to do" in rerun.stdout
    assert not [line for line in rerun.stdout.splitlines() if line.startswith("epoch ")]
    args = train_classifier.get_args_parser().parse_args(flags(runs["tmp"] / "A"))
    classifier.resolve_recipe(args)
    args.pretrained_sha256 = None
    assert run_folder.RunFolder(str(folder(runs["tmp"], "A")), args).status() == "finished"


def test_a_run_killed_after_its_stop_finishes_without_training_on(runs):
    result = runs["results"]["C"]
    assert result.returncode == 0, result.stderr
    assert f"epoch {STOPPED + 1}, step 0" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    c, a = folder(runs["tmp"], "C"), folder(runs["tmp"], "A")
    assert without_wall_clock(read_rows(c)) == without_wall_clock(read_rows(a))
    assert summary(c)["stop_reason"] == summary(a)["stop_reason"]
    assert summary(c)["stopped_epoch"] == STOPPED


def test_patience_without_val_split_is_refused_before_the_run_folder(tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr(sys, "argv", ["train_classifier.py", *flags(tmp_path / "out", 0)])
    with pytest.raises(SystemExit) as e:
        run_cli(train_classifier.main, train_classifier.get_args_parser())
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --early_stop_patience")
    assert "--val_split" in lines[0]
    assert not (tmp_path / "out").exists()
