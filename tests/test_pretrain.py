"""mae_pretrain.py as a user runs it: outputs, resume after SIGTERM, reruns, and learning."""
import csv
import json
import os
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_DATA, TINY_MAE, run_scripts
from PIL import Image

import mae_pretrain
import train_classifier
from mae_cifar.data.datasets import FAKE_SIZES, SPLIT_SEED, Split, carve, image_record, load_dataset
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.training import engine, run_folder
from model import MAE_ViT, MAEConfig, sincos_pos_embed

pytestmark = pytest.mark.usefixtures("one_thread")
STAGE = "mae-pretrain"
MODEL_FN = "vit-t-mae.pt"
BASE_COLUMNS = ["epoch", "train_loss", "lr", "eval_loss", "epoch_seconds", "images_per_s"]
TIMING_COLUMNS = {"epoch_seconds", "images_per_s"}
SIGTERM_EXIT = 128 + 15
STEPS_PER_EPOCH = 2  # TINY_DATA: 64 images in batches of 32


def pretrain_cmd(root, *extra):
    return ["mae_pretrain.py", *TINY_DATA, *TINY_MAE, "--total_epoch", "2", "--warmup_epoch", "1",
            "--visualize_freq", "1", "--output_root", root, "--exp_name", "e", *extra]


def read_rows(folder):
    with open(folder / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """In one interpreter: run A uninterrupted; B and C are stopped by SIGTERM (B at the end of
    epoch 0, C in the middle of epoch 1) and rerun with the same command; then A is rerun
    unchanged and with a changed flag."""
    tmp = tmp_path_factory.mktemp("pretrain")
    roots = {name: str(tmp / name) for name in "ABC"}
    results = run_scripts([
        pretrain_cmd(roots["A"]),
        {"argv": pretrain_cmd(roots["B"]), "sigterm_after": STEPS_PER_EPOCH},
        {"argv": pretrain_cmd(roots["C"]), "sigterm_after": STEPS_PER_EPOCH + 1},
        pretrain_cmd(roots["B"]),
        pretrain_cmd(roots["C"]),
        pretrain_cmd(roots["A"]),
        pretrain_cmd(roots["A"], "--mask_ratio", "0.5"),
    ])
    folders = {name: tmp / name / "e" / STAGE for name in "ABC"}
    return dict(folders=folders, first=results[0], stopped=dict(zip("BC", results[1:3])),
                resumed=dict(zip("BC", results[3:5])), rerun=results[5], changed=results[6])


def test_a_run_writes_every_output(runs):
    result = runs["first"]
    assert result.returncode == 0, result.stderr
    folder = runs["folders"]["A"]
    for name in (MODEL_FN, "checkpoint.pt", "metrics.csv", "args.json", "summary.json"):
        assert (folder / name).is_file(), name
    rows = read_rows(folder)
    assert list(rows[0]) == mae_pretrain.CSV_FIELDS
    assert set(BASE_COLUMNS) <= set(rows[0])
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(float(r["train_loss"]) > 0 and float(r["eval_loss"]) > 0 for r in rows)
    args = json.loads((folder / "args.json").read_text())
    assert args["total_epoch"] == 2 and args["emb_dim"] == 32 and args["dataset"] == "fake"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] is True and summary["epochs"] == 2
    assert summary["final_eval_loss"] == pytest.approx(float(rows[-1]["eval_loss"]))
    for epoch in (0, 1):
        png = folder / "images" / f"epoch_{epoch:04d}" / "reconstruction.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
    events = list((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    assert not list(folder.rglob(".tmp-*")) and not (folder / ".lock").exists()


def scalar_events(folder):
    """[(tag, step)] of every scalar in the run's TensorBoard event files, and their count."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    files = sorted((folder / "tensorboard").glob("events.out.tfevents.*"))
    events = [(v.tag, e.step) for f in files for e in EventFileLoader(str(f)).Load()
              for v in e.summary.value]
    return events, len(files)


@pytest.mark.parametrize("name", ["B", "C"])
def test_a_resumed_run_holds_each_epoch_once_in_tensorboard(runs, name):
    """After a stop and a rerun, TensorBoard held both attempts' event files (each epoch
    twice); the earlier attempt's events before the resume point now move into the rerun's."""
    events, files = scalar_events(runs["folders"][name])
    assert files == 1
    assert sorted(events) == sorted(set(events))
    assert {step for tag, step in events if tag == "train/loss"} == \
        {STEPS_PER_EPOCH - 1, 2 * STEPS_PER_EPOCH - 1}  # each epoch's last step, once


def test_the_model_file_loads_safely_and_rebuilds_the_model(runs):
    ckpt = torch.load(runs["folders"]["A"] / MODEL_FN, weights_only=True)
    assert ckpt["kind"] == "mae" and ckpt["epoch"] == 2
    model = MAE_ViT.from_config(MAEConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])  # strict
    assert model.config.emb_dim == 32 and model.config.encoder_layer == 2


@pytest.mark.parametrize("name,resume_point", [("B", "epoch 1, step 0"),
                                               ("C", "epoch 1, step 1")])
def test_resume_after_sigterm_reproduces_the_uninterrupted_run(runs, name, resume_point):
    stopped = runs["stopped"][name]
    assert stopped.returncode == SIGTERM_EXIT, stopped.stderr
    assert "SIGTERM" in stopped.stderr and "resume" in stopped.stderr
    assert "epoch 0/2:" in stopped.stdout and "epoch 1/2:" not in stopped.stdout
    resumed = runs["resumed"][name]
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {runs['folders'][name] / 'checkpoint.pt'}: {resume_point}" \
        in resumed.stdout
    folder, reference = runs["folders"][name], runs["folders"]["A"]
    got = torch.load(folder / MODEL_FN, weights_only=True)["model"]
    want = torch.load(reference / MODEL_FN, weights_only=True)["model"]
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    strip = [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in read_rows(folder)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_COLUMNS}
                     for r in read_rows(reference)]


def test_rerunning_a_finished_run_changes_nothing(runs):
    assert runs["rerun"].returncode == 0, runs["rerun"].stderr
    assert "nothing to do" in runs["rerun"].stdout
    newest = max(p.stat().st_mtime_ns for p in runs["folders"]["A"].rglob("*"))
    assert newest <= runs["first"].end_ns  # no file or folder written since run A ended


def test_a_changed_flag_is_refused_by_name(runs):
    changed = runs["changed"]
    assert changed.returncode == 2
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--mask_ratio" in lines[0]
    assert "nothing to do" not in changed.stdout


def test_a_flag_that_does_not_change_results_may_differ_on_rerun(runs):
    folder = runs["folders"]["A"]
    cmd = pretrain_cmd(str(folder.parents[1]))[1:] + ["--save_freq", "2"]
    args = mae_pretrain.get_args_parser().parse_args(cmd)
    mae_pretrain.validate(args)  # as main() does before the run folder reads args.json
    assert run_folder.RunFolder(str(folder), args).status() == "finished"


def train_tiny_mae(dataset, image_size, patch_size, epochs, lr):
    """A width-32 MAE trained on 256 images of `dataset` -> (model, eval images, fixed mask
    noise): the eval loss of its masked patches before and after is what tests compare."""
    torch.manual_seed(0)
    data = load_dataset(dataset, image_size=image_size, max_train=256, max_eval=32)
    model = MAE_ViT(image_size=image_size, patch_size=patch_size, emb_dim=32, encoder_layer=2,
                    encoder_head=2, decoder_dim=32, decoder_layer=1)
    loader = DeviceLoader(data.train, 32, data.mean, data.std, seed=0)
    x_eval = DeviceLoader(data.test, 32, data.mean, data.std, shuffle=False).batch(
        torch.arange(32))[0]
    noise = torch.rand(32, model.encoder.patch_embed.num_patches,
                       generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95))
    model.train()
    for epoch in range(epochs):  # 8 steps each
        for x, _ in loader.epoch(epoch):
            loss = model(x)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model, x_eval, noise


def test_mae_loss_falls_on_the_fake_data():
    model, x, noise = train_tiny_mae("fake", 16, 2, epochs=0, lr=2e-3)
    with torch.no_grad():
        before = model(x, noise=noise)[0].item()
    model, x, noise = train_tiny_mae("fake", 16, 2, epochs=3, lr=2e-3)  # 24 steps
    with torch.no_grad():
        assert model(x, noise=noise)[0].item() < 0.6 * before


def test_the_quick_start_images_are_learnt_well_below_predicting_the_mean():
    """The quick start's generated shapes have structure to fill in: after 120 steps the
    masked patches' loss is far below that of predicting the dataset mean for every pixel
    (what a model that learnt nothing converges to: flat grey reconstructions)."""
    model, x, noise = train_tiny_mae("shapes", 32, 4, epochs=15, lr=2e-3)
    with torch.no_grad():
        loss, _, mask = model(x, noise=noise)
        target = model.patchify(x)  # normalised pixels: the mean predicts 0 everywhere
        mean_loss = ((target ** 2).mean(-1) * mask).sum() / mask.sum()
    assert loss.item() < 0.75 * mean_loss.item()  # here 0.59; the old grating images: 1.00


# --------------------------------------------------------------------------- paper recipe
def test_paper_recipe_position_embeddings_stay_fixed_and_are_in_no_optimizer_group(
        tmp_path, monkeypatch):
    """The stage's own Trainer (captured from main) optimises every trainable tensor but the
    sin-cos position embeddings, which end bit-identical after its optimizer steps."""
    trainers = []

    class Recorded(engine.Trainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            trainers.append(self)

    monkeypatch.setattr(engine, "Trainer", Recorded)
    cmd = pretrain_cmd(str(tmp_path), "--recipe", "paper", "--visualize_freq", "0")
    mae_pretrain.main(mae_pretrain.get_args_parser().parse_args(cmd[1:]))
    (trainer,) = trainers
    model = trainer.module
    grouped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    fixed = {"encoder.pos_embed": model.encoder.pos_embed,
             "decoder_pos_embed": model.decoder_pos_embed}
    assert all(id(p) not in grouped for p in fixed.values())
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    steps = {int(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {2 * STEPS_PER_EPOCH}  # every optimised tensor took every step
    grid = model.encoder.patch_embed.grid_size[0]
    saved = torch.load(tmp_path / "e" / STAGE / MODEL_FN, weights_only=True)["model"]
    for name, p in fixed.items():
        assert not p.requires_grad
        assert torch.equal(p[0], sincos_pos_embed(p.shape[-1], grid)), name
        assert torch.equal(saved[name], p), name


# --------------------------------------------------------------------------- disjoint splits
def load_as_stage(script, flags):
    """The dataset the stage script loads with these flags (engine.load_stage_data)."""
    args = script.get_args_parser().parse_args(flags)
    cpu = SimpleNamespace(device=torch.device("cpu"), is_main=False)
    never_run = run_folder.RunFolder(os.devnull, args)  # no run: nothing to compare with
    return engine.load_stage_data(args, cpu, never_run, args.val_split)


def test_without_val_split_pretraining_is_as_before_and_evaluates_on_test(runs):
    images = json.loads((runs["folders"]["A"] / "summary.json").read_text())["images"]
    assert images["val_split"] == 0 and images["eval_split"] == "test" and "val" not in images
    first = Split(torch.zeros(64), torch.zeros(64), torch.arange(64))  # the first 64 images
    assert images["pretrain"] == image_record(first, "train")
    assert images["eval"]["source"] == "test" and images["eval"]["count"] == 32


def test_val_split_keeps_validation_and_test_images_out_of_pretraining(tmp_path):
    """Pretraining's images, the classifier's validation images (same --val_split) and the
    test images are disjoint, by position and by content; pretraining evaluates on the
    validation images, and a classifier's smaller training set is its first images."""
    val = 16
    cmd = pretrain_cmd(str(tmp_path), "--val_split", str(val), "--knn_freq", "1")
    (result,) = run_scripts([cmd])
    assert result.returncode == 0, result.stderr
    assert f"evaluating on {val} val images" in result.stdout
    images = json.loads((tmp_path / "e" / STAGE / "summary.json").read_text())["images"]
    pre = load_as_stage(mae_pretrain, cmd[1:])
    cls = load_as_stage(train_classifier, [*TINY_DATA, "--val_split", str(val),
                                           "--max_train_images", "32"])
    assert images["split_seed"] == SPLIT_SEED and images["val_split"] == val
    assert images["pretrain"] == images["knn_memory"] == image_record(pre.train, "train")
    assert images["eval_split"] == "val"
    assert images["eval"] == images["knn_queries"] == images["val"] == \
        image_record(cls.val, "train")
    held_out = carve(FAKE_SIZES["train"], val)[1]
    assert len(pre.train) == 64 and torch.equal(cls.val.index, held_out)
    assert not set(pre.train.index.tolist()) & set(held_out.tolist())
    assert torch.equal(cls.train.index, pre.train.index[:32])
    content = {name: {bytes(x.numpy()) for x in split.images}
               for name, split in (("pretrain", pre.train), ("val", cls.val),
                                   ("test", pre.test))}
    assert [len(c) for c in content.values()] == [64, val, 32]  # no duplicate images
    assert not content["pretrain"] & content["val"]
    assert not content["pretrain"] & content["test"] and not content["val"] & content["test"]
