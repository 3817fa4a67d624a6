"""train_classifier.py: the four modes run and write their files, start from the MAE encoder
exactly, the probe trains only its head (cached or not), and bad checkpoints exit 2."""
import contextlib
import csv
import io
import json
import math
from argparse import Namespace

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import TINY_DATA, TINY_ENCODER, TINY_MAE, run_scripts

import export
import train_classifier
from mae_cifar.cli import parse_args
from mae_cifar.data.datasets import load_dataset
from mae_cifar.evaluation import features
from mae_cifar.training import classifier, engine, objectives
from model import ClassifierConfig, ViT_Classifier
from utils import seed_everything

pytestmark = pytest.mark.usefixtures("one_thread")
CSV_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss",
               "test_acc", "epoch_seconds", "images_per_s"]
TIMING_COLUMNS = {"epoch_seconds", "images_per_s"}
VAL_SPLIT = "16"
MODES = {  # name -> (stage folder, model file, extra flags; "MAE" stands for the checkpoint)
    "scratch": ("scratch-cls", "vit-t-clf-from_scratch.pt", TINY_ENCODER),
    "finetune": ("pretrain-cls", "vit-t-clf-from_pretrained.pt", ["MAE"]),
    "probe": ("pretrain-cls-lin", "vit-t-clf-lin-from_pretrained.pt", ["MAE", "--linear_probe"]),
    "scratch_probe": ("scratch-cls-lin", "vit-t-clf-lin-from_scratch.pt",
                      TINY_ENCODER + ["--linear_probe", "--val_split", VAL_SPLIT]),
}


def classifier_flags(mae_path, extra):
    extra = [a for e in extra for a in (["--pretrained_model_path", mae_path] if e == "MAE"
                                        else [e])]
    return [*TINY_DATA, "--total_epoch", "1", "--warmup_epoch", "0", "--exp_name", "e", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An MAE, the four modes, an uncached probe, and two bad checkpoints: one interpreter."""
    tmp = tmp_path_factory.mktemp("classifier")
    mae_path = str(tmp / "mae" / "e" / "mae-pretrain" / "vit-t-mae.pt")
    cmds = [["mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--total_epoch", "1", "--warmup_epoch",
             "0", "--output_root", tmp / "mae", "--exp_name", "e"]]
    for _, _, extra in MODES.values():
        cmds.append(["train_classifier.py", *classifier_flags(mae_path, extra),
                     "--output_root", tmp / "cls"])
    cmds.append(["train_classifier.py", *classifier_flags(mae_path, MODES["probe"][2]),
                 "--no_feature_cache", "--output_root", tmp / "uncached"])
    clf_path = tmp / "cls" / "e" / MODES["finetune"][0] / MODES["finetune"][1]
    for name, path in (("missing", tmp / "nothing.pt"), ("foreign", clf_path)):
        cmds.append(["train_classifier.py", *classifier_flags(str(path), ["MAE"]),
                     "--output_root", tmp / name])
    results = run_scripts(cmds)
    assert results[0].returncode == 0, results[0].stderr
    names = list(MODES) + ["uncached", "missing", "foreign"]
    return dict(tmp=tmp, mae_path=mae_path, results=dict(zip(names, results[1:])))


def folder(runs, name, root="cls"):
    return runs["tmp"] / root / "e" / MODES[name][0]


def load_model(runs, name, root="cls"):
    return torch.load(folder(runs, name, root) / MODES[name][1], weights_only=True)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mae_encoder(runs):
    state = torch.load(runs["mae_path"], weights_only=True)["model"]
    return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}


def parse(runs, *extra):
    args = train_classifier.get_args_parser().parse_args(
        classifier_flags(runs["mae_path"], extra) + ["--output_root", str(runs["tmp"] / "x")])
    classifier.resolve_recipe(args)
    return args


def initial_model(runs, *extra):
    """The model main() builds before training (it seeds with --seed first)."""
    args = parse(runs, *extra)
    seed_everything(args.seed)
    return classifier.build_model(args, num_classes=10, device="cpu")


# --------------------------------------------------------------------------- selection
SELECT_EPOCHS, SELECT_WARMUP, SELECT_VAL = 3, 2, 16
SCRIPTED_VAL_ACC = [0.25, 0.75, 0.75]  # the best is epoch 1 (the first of a tie), not the last
SELECT_BASE_LR = 4e-3
SELECT_LAYER_DECAY = 0.5  # the groups' lrs differ: the logged lr must be the schedule's


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    """A 3-epoch --val_split run in this process, recording the lr of every optimizer step
    and the images of every evaluated split; the validation split reports scripted
    accuracies (its loss and the test split's numbers are real)."""
    tmp = tmp_path_factory.mktemp("selection")
    argv = [*TINY_DATA, *TINY_ENCODER, "--total_epoch", str(SELECT_EPOCHS), "--warmup_epoch",
            str(SELECT_WARMUP), "--val_split", str(SELECT_VAL), "--base_learning_rate",
            str(SELECT_BASE_LR), "--layer_decay", str(SELECT_LAYER_DECAY), "--output_root",
            str(tmp), "--exp_name", "e"]
    lrs, evaluated, scripted = [], [], iter(SCRIPTED_VAL_ACC)
    real_evaluate, real_step = features.evaluate, engine.Trainer._optimizer_step

    def evaluate(model, split, *args):
        loss, acc = real_evaluate(model, split, *args)
        evaluated.append(split.images.clone())
        return (loss, next(scripted)) if len(split) == SELECT_VAL else (loss, acc)

    def optimizer_step(self, *args):
        lrs.append([g["lr"] / g["lr_scale"] for g in self.optimizer.param_groups])
        return real_step(self, *args)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(train_classifier, "evaluate", evaluate)
        mp.setattr(engine.Trainer, "_optimizer_step", optimizer_step)
        train_classifier.main(parse_args(train_classifier.get_args_parser(), argv))
    out = tmp / "e" / MODES["scratch"][0]
    return dict(out=out, rows=read_rows(out / "metrics.csv"), lrs=lrs, evaluated=evaluated,
                summary=json.loads((out / "summary.json").read_text()),
                stdout=printed.getvalue())


def test_selection_picks_the_epoch_of_the_best_validation_accuracy(selection):
    rows, summary = selection["rows"], selection["summary"]
    val_acc = [float(r["val_acc"]) for r in rows]
    assert val_acc == SCRIPTED_VAL_ACC  # the validation split was evaluated every epoch
    best = int(np.argmax(val_acc))  # the first epoch of the best accuracy
    assert summary["selection_split"] == "val"
    assert summary["best_epoch"] == int(rows[best]["epoch"]) == 1
    assert summary["best_val_acc"] == pytest.approx(val_acc[best])
    assert summary["test_acc_at_best"] == pytest.approx(float(rows[best]["test_acc"]))
    assert summary["final_test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))


def test_the_best_model_file_reproduces_the_test_accuracy_at_the_chosen_epoch(selection,
                                                                              tmp_path):
    """--val_split keeps the validation-chosen epoch's weights beside the last epoch's;
    summary.json names both, and export.py takes the best one like any model file."""
    summary = selection["summary"]
    assert summary["best_epoch"] == 1 and summary["epochs"] == SELECT_EPOCHS  # not the last
    best_path = selection["out"] / "vit-t-clf-from_scratch-best.pt"
    assert summary["best_model_file"] == best_path.name  # in the run folder
    assert summary["model_file"] == MODES["scratch"][1]
    best = torch.load(best_path, weights_only=True)
    assert best["epoch"] == summary["best_epoch"] + 1
    model = ViT_Classifier(ClassifierConfig(**best["config"]))
    model.load_state_dict(best["model"])
    data = load_dataset("fake", image_size=16, max_train=64, max_eval=32, val_split=SELECT_VAL)
    one_process = Namespace(world=1, rank=0, device=torch.device("cpu"))
    _, test_acc = features.evaluate(model, data.test, 64, (data.mean, data.std),
                                    contextlib.nullcontext, one_process)
    assert test_acc == summary["test_acc_at_best"] != summary["final_test_acc"]
    last = torch.load(selection["out"] / summary["model_file"], weights_only=True)["model"]
    assert not all(torch.equal(v, last[k]) for k, v in best["model"].items())
    out = tmp_path / "best-timm"
    export.main(export.get_args_parser().parse_args([str(best_path), "--out_dir", str(out)]))
    exported = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(exported(x), model.eval()(x))


def test_the_validation_images_are_held_out_of_train_and_are_not_the_test_images(selection):
    data = load_dataset("fake", image_size=16, max_train=64, max_eval=32, val_split=SELECT_VAL)
    val = [x for x in selection["evaluated"] if len(x) == SELECT_VAL]
    assert len(val) == SELECT_EPOCHS
    def as_set(images):
        return {bytes(x.numpy()) for x in images}
    val_set, test_set = as_set(val[0]), as_set(data.test.images)
    assert len(val_set) == SELECT_VAL
    assert not val_set & test_set and not val_set & as_set(data.train.images)
    assert val_set <= as_set(load_dataset("fake", image_size=16).train.images)
    for r in selection["rows"]:  # a different split: its loss is not the test loss
        assert r["val_loss"] != r["test_loss"]


def test_lr_warms_up_linearly_then_follows_the_cosine_at_every_step(selection):
    peak = SELECT_BASE_LR * 32 / 256  # base lr x batch / 256
    steps_per_epoch = 2  # 64 training images (the validation ones are taken out first) / 32
    warmup, total = SELECT_WARMUP * steps_per_epoch, SELECT_EPOCHS * steps_per_epoch
    expected = [peak * s / warmup for s in range(warmup)]  # 0, peak/4, peak/2, 3 peak/4
    expected += [peak * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
                 for s in range(warmup, total)]  # peak, peak/2
    lrs = selection["lrs"]
    assert len(lrs) == total
    for step, (got, want) in enumerate(zip(lrs, expected)):
        assert got == pytest.approx([want] * len(got), abs=1e-12), f"step {step}"
    for epoch, row in enumerate(selection["rows"]):  # the lr of the epoch's last step
        assert float(row["lr"]) == pytest.approx(expected[(epoch + 1) * steps_per_epoch - 1])


def test_each_epoch_prints_its_line_with_its_numbers(selection):
    lines = [s for s in selection["stdout"].splitlines() if s.startswith("epoch ")]
    assert [s.split(":")[0] for s in lines] == [f"epoch {row['epoch']}/{SELECT_EPOCHS}"
                                                for row in selection["rows"]]  # 0-based
    for line, acc in zip(lines, SCRIPTED_VAL_ACC):
        assert f"val_acc {acc:.4g}" in line
    assert "best accuracy on the held-out validation split: 0.7500 at epoch 1" in \
        selection["stdout"]


# --------------------------------------------------------------------------- the loss
NUM_CLASSES, SMOOTHING = 4, 0.1


def smoothed(labels):
    """Label-smoothed one-hot targets (timm's: 1 - s + s/K on the label, s/K elsewhere)."""
    return F.one_hot(labels, NUM_CLASSES) * (1 - SMOOTHING) + SMOOTHING / NUM_CLASSES


def recording_model(logits):
    seen = []

    def model(x):
        seen.append(x.clone())
        return logits
    return model, seen


def test_objective_is_the_smoothed_cross_entropy_and_counts_correct_labels():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, NUM_CLASSES, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    args = Namespace(mixup=0.0, cutmix=0.0, smoothing=SMOOTHING)
    loss, sums = objectives.Objective(args, NUM_CLASSES)(
        recording_model(logits)[0], torch.randn(6, 3, 4, 4), y)
    expected = -(smoothed(y) * F.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(loss, expected)
    assert sums["correct"] == (logits.argmax(-1) == y).sum()


def test_objective_with_mixup_trains_on_mixed_images_against_mixed_targets():
    """timm's batch mixup: image i is lam * x_i + (1 - lam) * x_(B-1-i), and so is its
    smoothed target."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, NUM_CLASSES, generator=g), torch.tensor([0, 1, 2, 3, 0, 1])
    x = torch.randn(6, 3, 4, 4, generator=g)
    model, seen = recording_model(logits)
    args = Namespace(mixup=0.8, cutmix=0.0, smoothing=SMOOTHING)
    objective = objectives.Objective(args, NUM_CLASSES)
    np.random.seed(0)  # timm draws lam with numpy
    loss, _ = objective(model, x.clone(), y)
    mixed, other = seen[0], x.flip(0)
    lam = ((mixed - other) / (x - other)).flatten()[0].item()
    assert 0.05 < lam < 0.95  # really mixed (the seed's draw)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * other)
    target = lam * smoothed(y) + (1 - lam) * smoothed(y.flip(0))
    torch.testing.assert_close(loss, -(target * F.log_softmax(logits, -1)).sum(-1).mean())


# --------------------------------------------------------------------------- CLI runs
@pytest.mark.parametrize("name", list(MODES))
def test_each_mode_writes_its_csv_model_and_summary(runs, name):
    result = runs["results"][name]
    assert result.returncode == 0, result.stderr
    out = folder(runs, name)
    rows = read_rows(out / "metrics.csv")
    assert list(rows[0]) == CSV_COLUMNS and [r["epoch"] for r in rows] == ["0"]
    assert 0 <= float(rows[0]["test_acc"]) <= 1 and float(rows[0]["train_loss"]) > 0
    ckpt = load_model(runs, name)
    assert ckpt["kind"] == "classifier"
    model = ViT_Classifier(ClassifierConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])  # strict
    assert model.config.emb_dim == 32 and model.config.encoder_layer == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] is True
    assert summary["selection_split"] == ("val" if "--val_split" in MODES[name][2] else "test")
    if summary["selection_split"] == "val":
        assert rows[0]["val_acc"] != "" and summary["best_val_acc"] == pytest.approx(
            float(rows[0]["val_acc"]))


def test_finetuning_starts_from_the_mae_encoder_exactly(runs):
    model = initial_model(runs, "MAE")
    state = model.state_dict()
    encoder = mae_encoder(runs)
    assert set(state) - set(encoder) == model.head_keys()
    for k, v in encoder.items():
        assert torch.equal(state[k], v), k
    assert all(p.requires_grad for p in model.parameters())
    trained = load_model(runs, "finetune")["model"]
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], encoder["blocks.0.attn.qkv.weight"])


def test_linear_probe_freezes_the_encoder(runs):
    model = initial_model(runs, "MAE", "--linear_probe").train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    assert model.head.training
    assert not any(m.training for n, m in model.named_modules() if n and not n.startswith("head"))


@pytest.mark.parametrize("root", ["cls", "uncached"])
def test_linear_probe_trains_only_the_head(runs, root):
    result = runs["results"]["probe" if root == "cls" else "uncached"]
    assert result.returncode == 0, result.stderr
    trained = load_model(runs, "probe", root)["model"]
    for k, v in mae_encoder(runs).items():
        assert torch.equal(trained[k], v), k
    start = initial_model(runs, "MAE", "--linear_probe").state_dict()
    head = [k for k in trained if k.startswith("head.") and trained[k].is_floating_point()]
    assert head and all(not torch.equal(trained[k], start[k]) for k in head)


def test_cached_and_uncached_probes_agree(runs):
    cached, uncached = load_model(runs, "probe")["model"], load_model(runs, "probe", "uncached")
    for k, v in cached.items():
        torch.testing.assert_close(uncached["model"][k], v, rtol=1e-4, atol=1e-5)
    rows = [read_rows(folder(runs, "probe", root) / "metrics.csv") for root in ("cls", "uncached")]
    for a, b in zip(*rows):
        for k in set(CSV_COLUMNS) - TIMING_COLUMNS:
            assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-5), k


# --------------------------------------------------------------------------- bad checkpoints
@pytest.mark.parametrize("name,message", [("missing", "not found"),
                                          ("foreign", "expected an MAE")])
def test_a_bad_pretrained_checkpoint_exits_2_and_writes_nothing(runs, name, message):
    result = runs["results"][name]
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    root = runs["tmp"] / name
    assert not root.exists() or not any(root.iterdir())
