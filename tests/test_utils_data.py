"""utils.py and mae_cifar (checkpoints, schedule, optimizer groups, CSV resume, loader,
datasets)."""
import argparse
import csv
import gzip
import hashlib
import math
import random
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mae_cifar.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.data.augment import (
    AUGMENTS,
    CROP_PAD,
    RRC_RATIO,
    RRC_SCALE,
    augment_batch,
    random_resized_crop,
)
from mae_cifar.data.datasets import Split, carve, image_record, load_dataset
from mae_cifar.data.loader import DeviceLoader
from mae_cifar.fileio import CSVLogger, file_sha256
from mae_cifar.training.optim import cosine_lr, param_groups, set_lr
from model import ClassifierConfig, MAE_ViT, ViT_Classifier

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_VIT = dict(emb_dim=32, encoder_layer=2, encoder_head=2)
IDX_IMAGES_MAGIC = 0x00000803  # uint8 data, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # uint8 data, 1 dimension


# --------------------------------------------------------------------------- checkpoints
def tiny_checkpoint():
    torch.manual_seed(0)
    model = MAE_ViT(**TINY_VIT, decoder_dim=32, decoder_layer=1)
    return {"format": CHECKPOINT_FORMAT, "kind": "mae", "config": {"emb_dim": 32},
            "model": model.state_dict(), "epoch": 3, "rng": [1, (2, 3.5)], "name": "x"}


def assert_same(a, b):
    if torch.is_tensor(a):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_checkpoint_round_trip_loads_with_weights_only(tmp_path):
    path = tmp_path / "ckpt.pt"
    ckpt = tiny_checkpoint()
    assert save_checkpoint(ckpt, path) == file_sha256(path)  # the identity runs record
    assert_same(torch.load(path, weights_only=True), ckpt)
    assert_same(load_checkpoint(str(path), kind="mae"), ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


def write_truncated(path):
    save_checkpoint(tiny_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BAD_FILES = {
    "missing": (lambda p: None, "not found"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (write_truncated, "truncated or corrupt"),
    "random bytes": (lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
                     "truncated or corrupt"),
    "foreign dict": (lambda p: torch.save({"state_dict": {"w": torch.zeros(2)}}, p),
                     "not a checkpoint written by this project"),
    "arbitrary pickle": (lambda p: torch.save(argparse.Namespace(a=1), p), "refusing"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_load_checkpoint_refuses_bad_files_with_a_clear_message(tmp_path, case):
    path = tmp_path / "model.pt"
    write, message = BAD_FILES[case]
    write(path)
    with pytest.raises(UsageError, match=message) as e:
        load_checkpoint(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_load_checkpoint_refuses_the_other_kind(tmp_path):
    path = tmp_path / "mae.pt"
    save_checkpoint(tiny_checkpoint(), path)
    with pytest.raises(UsageError, match="mae checkpoint; expected a classifier"):
        load_checkpoint(str(path), kind="classifier")


# --------------------------------------------------------------------------- schedule
def test_cosine_lr_warms_up_linearly_then_follows_a_cosine_per_step():
    total, warmup, peak, floor = 100, 10, 0.5, 0.01
    lrs = [cosine_lr(s, total, warmup, peak, floor) for s in range(total + 1)]
    assert lrs[0] == 0.0
    for s in range(warmup + 1):
        assert lrs[s] == pytest.approx(peak * s / warmup)
    assert max(lrs) == pytest.approx(peak) and lrs[warmup] == pytest.approx(peak)
    for s in range(warmup, total + 1):
        progress = (s - warmup) / (total - warmup)
        expected = floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
        assert lrs[s] == pytest.approx(expected)
    assert lrs[total] == pytest.approx(floor)
    assert all(a > b for a, b in zip(lrs[warmup:], lrs[warmup + 1:]))  # changes every step
    assert cosine_lr(0, total, 0, peak) == pytest.approx(peak)  # no warmup: start at the peak


def test_cosine_lr_when_the_warmup_fills_the_run():
    """No cosine phase left: linear to the peak, and the peak at the end (no division by 0)."""
    assert [cosine_lr(s, 4, 4, 1.0) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


# --------------------------------------------------------------------------- optimizer groups
def no_decay_expected(name):
    return name.endswith(".bias") or "norm" in name or name in ("cls_token", "pos_embed")


def test_param_groups_skip_decay_on_biases_norms_tokens_and_position_embeddings():
    model = ViT_Classifier(ClassifierConfig(**TINY_VIT))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, weight_decay=0.05)
    grouped = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names.values())  # every parameter exactly once
    for g in groups:
        for p in g["params"]:
            want = 0.0 if no_decay_expected(names[id(p)]) else 0.05
            assert g["weight_decay"] == want, names[id(p)]
    assert {g["lr_scale"] for g in groups} == {1.0}


def test_param_groups_skip_mae_tokens_and_frozen_parameters():
    mae = MAE_ViT(**TINY_VIT, decoder_dim=32, decoder_layer=1, pos_embed="sincos")
    names = {id(p): n for n, p in mae.named_parameters()}
    decayed = {names[id(p)] for g in param_groups(mae, 0.05) if g["weight_decay"]
               for p in g["params"]}
    assert not decayed & {"mask_token", "encoder.cls_token", "decoder_pos_embed"}
    grouped = {names[id(p)] for g in param_groups(mae, 0.05) for p in g["params"]}
    assert "encoder.pos_embed" not in grouped  # frozen sin-cos: not optimised at all


def test_layer_decay_scales_each_block():
    decay, depth = 0.5, TINY_VIT["encoder_layer"]
    model = ViT_Classifier(ClassifierConfig(**TINY_VIT))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups(model, 0.05, layer_decay=decay)
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            if name.startswith("blocks."):
                layer = int(name.split(".")[1]) + 1
            elif name.startswith(("patch_embed", "cls_token", "pos_embed")):
                layer = 0
            else:  # the final norm and the head
                layer = depth + 1
            assert g["lr_scale"] == pytest.approx(decay ** (depth + 1 - layer)), name
    opt = torch.optim.AdamW(groups, lr=1.0)
    set_lr(opt, 0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx(
        sorted(0.1 * g["lr_scale"] for g in groups))


# --------------------------------------------------------------------------- CSV
def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_drops_rows_from_the_resume_epoch_on(tmp_path):
    path = str(tmp_path / "metrics.csv")
    log = CSVLogger(path, ["epoch", "loss"])
    for e in range(3):
        log.log({"epoch": e, "loss": 1.0 / (e + 1)})
    assert [r["epoch"] for r in read_csv(path)] == ["0", "1", "2"]
    resumed = CSVLogger(path, ["epoch", "loss"], start_epoch=1)
    resumed.log({"epoch": 1, "loss": 9.0})
    rows = read_csv(path)
    assert [(r["epoch"], r["loss"]) for r in rows] == [("0", "1"), ("1", "9")]
    CSVLogger(path, ["epoch", "loss"]).log({"epoch": 0, "loss": 2.0})  # a new run restarts
    assert [(r["epoch"], r["loss"]) for r in read_csv(path)] == [("0", "2")]


# --------------------------------------------------------------------------- loader
def tagged_split(n):
    """Image i is filled with the value i % 256 and labelled i, so batches reveal indices."""
    images = (torch.arange(n) % 256).to(torch.uint8)[:, None, None, None].expand(n, 1, 4, 4)
    return Split(images.contiguous(), torch.arange(n))


def epoch_labels(loader, epoch):
    labels = []
    for x, y in loader.epoch(epoch):
        assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y % 256)  # image matches label
        labels.append(y)
    return torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)


def unit_loader(split, batch_size, **kw):
    return DeviceLoader(split, batch_size, torch.zeros(1), torch.ones(1), **kw)


def test_loader_yields_each_image_once_per_epoch_in_a_seeded_order():
    split = tagged_split(100)
    loader = unit_loader(split, 32, seed=3)
    assert len(loader) == 4
    orders = [epoch_labels(loader, e) for e in range(2)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(100))
    assert not torch.equal(orders[0], orders[1])  # a new permutation every epoch
    assert torch.equal(epoch_labels(unit_loader(split, 32, seed=3), 1), orders[1])
    assert not torch.equal(epoch_labels(unit_loader(split, 32, seed=4), 1), orders[1])


def test_two_rank_shards_are_disjoint_and_cover_the_split():
    split = tagged_split(100)
    ranks = [unit_loader(split, 32, seed=0, rank=r, world=2) for r in range(2)]
    for epoch in range(2):
        shards = [epoch_labels(loader, epoch) for loader in ranks]
        assert len(shards[0]) == len(shards[1]) == 50
        assert not set(shards[0].tolist()) & set(shards[1].tolist())
        assert sorted(torch.cat(shards).tolist()) == list(range(100))
        single = epoch_labels(unit_loader(split, 32, seed=0), epoch)
        steps = [torch.cat([s[i:i + 16] for s in shards]) for i in range(0, 50, 16)]
        assert torch.equal(torch.cat(steps), single)  # each global batch is split in two


def test_loader_indices_match_the_batches():
    split = tagged_split(70)
    loader = unit_loader(split, 32, seed=1)
    idx = torch.cat([loader.indices(0, s) for s in range(len(loader))])
    assert torch.equal(idx, epoch_labels(loader, 0))


@pytest.mark.parametrize("augment", AUGMENTS)
def test_augmentation_keeps_shape_and_range(augment):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32)
    x[0] = 0.0
    x[1] = 1.0
    y = augment_batch(x.clone(), augment)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0.0 and y.max() <= 1.0
    if augment == "none":
        assert torch.equal(y, x)
    if augment == "flip":
        for a, b in zip(x, y):
            assert torch.equal(a, b) or torch.equal(a.flip(-1), b)


def tagged_images(n, side):
    """(n, 1, side, side) floats: pixel (i, j) of image b holds 1 + b*side^2 + i*side + j,
    so every value says where it came from (and 0 is the crop's padding)."""
    return (1 + torch.arange(n * side * side, dtype=torch.float)).reshape(n, 1, side, side)


def find_window(out, padded):
    """(dy, dx, mirrored) of the window of padded (C, H+2p, W+2p) that out (C, H, W) is."""
    h, w = out.shape[-2:]
    for dy in range(padded.shape[-2] - h + 1):
        for dx in range(padded.shape[-1] - w + 1):
            window = padded[:, dy:dy + h, dx:dx + w]
            for mirrored in (False, True):
                if torch.equal(out, window.flip(-1) if mirrored else window):
                    return dy, dx, mirrored
    return None


def test_crop_flip_gives_a_window_of_the_padded_image_at_offsets_that_vary():
    torch.manual_seed(0)
    n, side, pad = 48, 8, CROP_PAD
    x = tagged_images(n, side)
    out = augment_batch(x.clone(), "crop_flip")
    padded = F.pad(x, (pad, pad, pad, pad))
    found = [find_window(o, p) for o, p in zip(out, padded)]
    assert None not in found  # each output is its own image's window, or its mirror
    offsets = {(dy, dx) for dy, dx, _ in found}
    assert len(offsets) > n // 3  # (2 * pad + 1) ** 2 = 81 offsets, drawn per image
    every_shift = set(range(2 * pad + 1))  # from flush with one padded edge to the other
    assert {dy for dy, _ in offsets} == {dx for _, dx in offsets} == every_shift
    mirrored = sum(m for _, _, m in found)
    assert n // 4 < mirrored < 3 * n // 4


def test_flips_mirror_about_half_the_images():
    torch.manual_seed(0)
    n = 4000
    x = tagged_images(n, 4)
    out = augment_batch(x.clone(), "flip")
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(same, ~mirrored)  # each image is either left alone or mirrored
    assert mirrored.float().mean().item() == pytest.approx(0.5, abs=0.03)


def ramps(n, side):
    """(n, 2, side, side): channel 0 is the column index, channel 1 the row index."""
    coords = torch.arange(side, dtype=torch.float)
    return torch.stack([coords.expand(side, side), coords[:, None].expand(side, side)])[
        None].expand(n, -1, -1, -1).clone()


def test_random_resized_crop_zooms_into_a_box_of_the_right_area_and_keeps_flat_images():
    torch.manual_seed(0)
    n, side = 400, 32
    lo, hi = RRC_SCALE
    out = random_resized_crop(ramps(n, side), RRC_SCALE, RRC_RATIO)
    inner = slice(2, side - 2)  # away from the border's half-pixel clamp
    w = out[:, 0, inner].diff(dim=-1).median(dim=-1).values.median(dim=-1).values  # (n,)
    h = out[:, 1, :, inner].diff(dim=-2).median(dim=-2).values.median(dim=-1).values
    area = w * h  # the box's sides as fractions of the image
    assert area.min() >= lo - 0.01 and area.max() <= hi + 0.01
    assert area.min() < lo + 0.05 and area.max() > 0.9  # the whole range is used
    assert (w / h).min() >= RRC_RATIO[0] - 0.02 and (w / h).max() <= RRC_RATIO[1] + 0.02
    centres = out[:, :, side // 2, side // 2]  # (n, 2): about each box's centre x, y
    for axis in range(2):  # boxes sit anywhere, centred on the image on average
        c = centres[:, axis]
        assert c.mean().item() == pytest.approx((side - 1) / 2, abs=1.0)
        assert c.max() - c.min() > side / 3
    flat = torch.full((8, 3, side, side), 0.3)
    torch.testing.assert_close(augment_batch(flat, "rrc_flip"), flat)
    x = torch.rand(16, 3, side, side)
    y = augment_batch(x.clone(), "rrc_flip")
    assert all(not torch.allclose(a, b, atol=1e-3) and not torch.allclose(a.flip(-1), b, atol=1e-3)
               for a, b in zip(x, y))


def test_unknown_augment_is_refused():
    with pytest.raises(UsageError, match="augment"):
        DeviceLoader(tagged_split(4), 2, augment="mixup")


# --------------------------------------------------------------------------- datasets
def test_fake_dataset_is_deterministic_and_learnable():
    a, b = load_dataset("fake", image_size=16), load_dataset("fake", image_size=16, max_train=100)
    assert torch.equal(a.train.images[:100], b.train.images)
    assert torch.equal(a.test.images, b.test.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.in_chans == 3 and a.image_size == 16 and a.num_classes == 10

    def spectrum(split):  # phase-free: the grating's angle and frequency carry the label
        return torch.fft.fft2(split.images.float() / 255).abs().flatten(1)

    train, test = spectrum(a.train), spectrum(a.test)
    means = torch.stack([train[a.train.labels == c].mean(0) for c in range(a.num_classes)])
    accuracy = (torch.cdist(test, means).argmin(1) == a.test.labels).float().mean()
    assert accuracy > 0.9  # chance is 0.1


def test_val_split_is_held_out_of_train():
    d = load_dataset("fake", image_size=16, val_split=100, max_eval=50)
    assert (d.name, d.source) == ("fake", "generated images (--dataset fake)")
    assert len(d.val) == 50 and len(d.train) == 4096 - 100
    train_set = {bytes(x.numpy()) for x in d.train.images}
    assert not any(bytes(x.numpy()) in train_set for x in d.val.images)


def test_splits_know_their_positions_in_the_source_split():
    full = load_dataset("fake", image_size=8)
    assert torch.equal(full.train.index, torch.arange(4096))
    d = load_dataset("fake", image_size=8, val_split=100, max_train=300, max_eval=50)
    train_idx, val_idx = carve(4096, 100)
    assert torch.equal(d.val.index, val_idx[:50]) and torch.equal(d.train.index, train_idx[:300])
    assert torch.equal(d.test.index, torch.arange(50))
    for split, source in ((d.train, full.train), (d.val, full.train), (d.test, full.test)):
        assert torch.equal(split.images, source.images[split.index])
        assert torch.equal(split.labels, source.labels[split.index])
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(4096))
    with pytest.raises(UsageError, match="--val_split 4096"):
        carve(4096, 4096)


def test_image_record_hashes_the_sorted_positions():
    split = Split(torch.zeros(4, 1, 1, 1, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                  torch.tensor([7, 3, 9, 1]))
    want = hashlib.sha256(np.array([3, 7, 9], dtype="<i8").tobytes()).hexdigest()
    assert image_record(split, "train", 3) == {"source": "train", "count": 3, "sha256": want}
    assert image_record(split, "test")["count"] == 4
@pytest.mark.parametrize("val_split", [1, 4095])
def test_val_split_takes_from_one_image_to_all_but_one(val_split):
    d = load_dataset("fake", image_size=4, val_split=val_split)
    assert (len(d.val), len(d.train)) == (val_split, 4096 - val_split)


def test_val_split_of_the_whole_training_set_is_refused():
    with pytest.raises(UsageError, match="--val_split 4096 must be between 1 and 4095$"):
        load_dataset("fake", image_size=4, val_split=4096)


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_flat_gzipped_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("t10k", 4)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", arrays[split][0], IDX_IMAGES_MAGIC)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", arrays[split][1], IDX_LABELS_MAGIC)
    d = load_dataset("fashion_mnist", data_dir=str(tmp_path))
    assert d.in_chans == 1 and d.image_size == 28 and d.num_classes == 10
    for split, (images, labels) in (("train", arrays["train"]), ("test", arrays["t10k"])):
        got = getattr(d, split)
        assert torch.equal(got.images, torch.from_numpy(images).to(torch.uint8)[:, None])
        assert torch.equal(got.labels, torch.from_numpy(labels).long())
    resized = load_dataset("fashion_mnist", data_dir=str(tmp_path), image_size=32)
    assert resized.train.images.shape == (6, 1, 32, 32)


def test_fashion_mnist_missing_files_is_a_usage_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(UsageError, match="fashion_mnist not found"):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


COLOURS = {"cat": (255, 0, 0), "dog": (0, 128, 255)}


def test_folder_dataset_reads_a_tree_of_pngs(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls, colour in COLOURS.items():
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (20, 20), colour).save(tmp_path / split / cls / f"{i}.png")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    d = load_dataset("folder", data_dir=str(tmp_path))
    assert d.classes == ["cat", "dog"] and d.in_chans == 3 and d.image_size == 32
    assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(d.test) == 4
    for image, label in zip(d.train.images, d.train.labels):
        colour = torch.tensor(COLOURS[d.classes[label]], dtype=torch.uint8)
        assert torch.equal(image, colour[:, None, None].expand(3, 32, 32))


def test_folder_dataset_without_a_tree_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="train"):
        load_dataset("folder", data_dir=str(tmp_path))


def image_tree(root, splits):
    """splits: {split: {class: number of images}} of 8x8 PNGs, each image its own colour."""
    for split, classes in splits.items():
        for c, (cls, n) in enumerate(classes.items()):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * c, 10 * i, 0)).save(root / split / cls / f"{i}.png")


def test_test_images_of_a_class_training_lacks_are_refused(tmp_path):
    """Issue 35: they were dropped without a word, the accuracy reported on the rest."""
    image_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1, "fox": 1}})
    with pytest.raises(UsageError, match="class folder.s. fox that .*train lacks"):
        load_dataset("folder", data_dir=str(tmp_path))


def test_data_fingerprint_follows_the_images(tmp_path):
    image_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    first = load_dataset("folder", data_dir=str(tmp_path), image_size=8).sha256
    assert load_dataset("folder", data_dir=str(tmp_path), image_size=8).sha256 == first
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "train" / "cat" / "0.png")
    assert load_dataset("folder", data_dir=str(tmp_path), image_size=8).sha256 != first
