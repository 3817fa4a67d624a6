"""Logs the ecosystem reads: TensorBoard gets per-step loss and lr and the per-epoch columns
under grouped tags (train/…, eval/…, knn/…) on the optimizer-step axis, and the run's flags
as hyper-parameters; --wandb in offline mode writes a W&B run folder with the same scalars."""
import glob

import pytest
from conftest import TINY_DATA, TINY_MAE, run_scripts
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mae_cifar.training import engine
from mae_cifar.training.logs import scalar_tag
from mae_cifar.training.optim import cosine_lr

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS, STEPS_PER_EPOCH = 2, 2  # TINY_DATA: 64 training images in batches of 32
STEP_TAGS = ("train/step_loss", "train/step_lr")
EPOCH_TAGS = ("train/loss", "train/lr", "eval/loss", "knn/acc")
BASE_LR = 1e-3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")  # W&B's own switch: nothing leaves the machine
    mp.setenv("WANDB_SILENT", "true")
    try:
        r = run_scripts([["mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--total_epoch",
                          str(EPOCHS), "--warmup_epoch", "1", "--base_learning_rate",
                          str(BASE_LR), "--knn_freq", "1", "--output_root", root,
                          "--exp_name", "e", "--wandb"]])[0]
    finally:
        mp.undo()
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    folder = root / "e" / "mae-pretrain"
    events = EventAccumulator(str(folder / "tensorboard"))  # what tensorboard --inspect reads
    events.Reload()
    return dict(folder=folder, events=events)


def test_column_tags_are_grouped():
    assert [scalar_tag(c) for c in ("train_loss", "lr", "eval_loss", "knn_acc", "val_acc",
                                    "test_loss", "images_per_s")] == \
        ["train/loss", "train/lr", "eval/loss", "knn/acc", "eval/val_acc", "eval/test_loss",
         "train/images_per_s"]


def test_tensorboard_has_per_step_and_grouped_epoch_scalars(run):
    events = run["events"]
    tags = set(events.Tags()["scalars"])
    assert set(STEP_TAGS) | set(EPOCH_TAGS) <= tags
    assert all("/" in t for t in tags)  # no flat tags left
    last_steps = [(e + 1) * STEPS_PER_EPOCH - 1 for e in range(EPOCHS)]  # each epoch's end
    for tag in (*STEP_TAGS, *EPOCH_TAGS):
        assert [s.step for s in events.Scalars(tag)] == last_steps, tag
    peak = BASE_LR * 32 / engine.LR_REFERENCE_BATCH
    for s in events.Scalars("train/step_lr"):
        assert s.value == pytest.approx(cosine_lr(s.step, EPOCHS * STEPS_PER_EPOCH,
                                                  STEPS_PER_EPOCH, peak, 0.0))


def test_tensorboard_has_the_flags_as_hyperparameters(run):
    events_file = glob.glob(str(run["folder"] / "tensorboard" / "events.out.tfevents.*"))
    data = b"".join(open(f, "rb").read() for f in events_file)
    assert b"_hparams_/experiment" in data and b"_hparams_/session_start_info" in data
    for flag in (b"mask_ratio", b"base_learning_rate", b"total_epoch"):
        assert flag in data


def test_wandb_offline_writes_a_run_with_the_same_scalars(run):
    runs = glob.glob(str(run["folder"] / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1
    data = open(runs[0], "rb").read()
    for tag in (*STEP_TAGS, *EPOCH_TAGS, "reconstruction"):
        assert tag.encode() in data, tag
    assert b"mask_ratio" in data  # the flags as the run's config
