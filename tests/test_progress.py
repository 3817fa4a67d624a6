"""What a run says while it runs: progress lines that reach a log file, and the total wall
time at the end (mae_cifar/training/progress.py)."""
import csv
import re

import pytest
from conftest import TINY_DATA, TINY_MAE, run_script

import mae_pretrain
from mae_cifar.training.progress import Progress, duration

pytestmark = pytest.mark.usefixtures("one_thread")

PROGRESS_LINE = re.compile(r"^epoch (\d+)/2 step (\d+)/(\d+): \d+ img/s, loss \d+\.\d{4}, "
                           r"lr \S+, elapsed \S+, ETA epoch \S+, run \S+ \(training only\)$")
EPOCH_LINE = re.compile(r"^epoch (\d+)/2: train_loss ")


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """(the stdout lines, the run folder) of a two-epoch pretraining with a progress line at
    every log interval; stdout is a file here (no terminal, so no tqdm bar)."""
    root = tmp_path_factory.mktemp("progress")
    proc = run_script("mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--max_train_images", "256",
                      "--total_epoch", "2", "--progress_seconds", "0", "--output_root", root,
                      "--exp_name", "p")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), root / "p" / "mae-pretrain"


def test_progress_lines_reach_a_log_file_and_the_run_ends_with_its_wall_time(two_epochs):
    lines, _ = two_epochs
    progress = [m.groups() for m in map(PROGRESS_LINE.match, lines) if m]
    # 8 steps of 32 images per epoch, one line at the end of each epoch's log interval
    assert progress == [("0", "8", "8"), ("1", "8", "8")]
    assert re.fullmatch(r"total wall time: \d+s", lines[-1])


def test_console_files_and_folders_number_epochs_alike(two_epochs):
    """The epoch lines, the progress lines, metrics.csv and the images/epoch_XXXX folders
    count epochs from 0 (the console said 1/2 and 2/2 for the files' 0 and 1)."""
    lines, run = two_epochs
    said = [m[1] for m in map(EPOCH_LINE.match, lines) if m]
    progress = [m[1] for m in map(PROGRESS_LINE.match, lines) if m]
    with open(run / "metrics.csv", newline="") as f:
        written = [row["epoch"] for row in csv.DictReader(f)]
    assert said == progress == written == ["0", "1"]
    assert [p.name for p in (run / "images").iterdir()] == ["epoch_0001"]  # the last


def test_progress_line_estimates_from_the_steps_trained():
    p = Progress(total_epochs=3, steps_per_epoch=10, batch_size=64, enabled=False)
    p.steps_trained(10, 20.0)  # epoch 0: 2 s a step
    line = p.line(epoch=1, step=5, loss=0.5, lr=1e-3, epoch_seconds=5.0, epoch_steps=5)
    # this epoch: 1 s a step, 5 left; the run: 25 s over 15 steps, 15 steps left
    assert line.startswith("epoch 1/3 step 5/10: 64 img/s, loss 0.5000, lr 0.001, elapsed ")
    assert line.endswith("ETA epoch 5s, run 25s (training only)")


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (42, "42s"), (185, "3m05s"),
                                           (7620, "2h07m")])
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_a_schedule_that_cannot_behave_is_warned_before_the_run(tmp_path):
    """64 images in one batch: one optimizer step per epoch, so a one-epoch warmup is one
    step at lr 0, then the peak (the first-hour failure: eval loss 3.6 -> 34.6)."""
    proc = run_script("mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--batch_size", "64",
                      "--total_epoch", "2", "--warmup_epoch", "1", "--output_root", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: 1 optimizer step(s) per epoch (64 images, --batch_size 64)" in proc.stdout
    assert "warning: the warmup is 1 optimizer step(s)" in proc.stdout


def test_a_long_run_on_the_cpu_is_told_how_to_shrink():
    p = Progress(total_epochs=100, steps_per_epoch=10, batch_size=64, enabled=False,
                 slow_after_s=3600)
    # 999 steps of 10 s left
    assert "about 2h46m more; --model vit_micro_patch4" in p.slow_warning(0, 1, 10.0, 1)
    assert p.slow_warning(0, 1, 0.1, 1) is None  # 999 steps of 0.1 s left


def test_an_exploding_eval_loss_is_reported():
    rows = [{"epoch": "0", "eval_loss": "3.6"}, {"epoch": "1", "eval_loss": "0.9"}]
    line = mae_pretrain.divergence_warning(2, 34.6, rows)
    assert line.startswith("warning: eval_loss 34.6 at epoch 2 is 38.4x its best (0.9 at "
                           "epoch 1)")
    assert mae_pretrain.divergence_warning(2, 4.0, rows) is None  # 4.4x: noise, not divergence
    assert mae_pretrain.divergence_warning(0, 34.6, []) is None
