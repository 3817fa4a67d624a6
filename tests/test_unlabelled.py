"""Pretraining on unlabelled images: a flat folder of images (or --unlabelled on a class tree)
pretrains without labels, evaluating on held-out images; the kNN monitor and the classifier
stages need labels and say so in one error line, before anything is written."""
import json

import numpy as np
import pytest
from conftest import TINY_MAE, one_error_line, run_scripts
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")
FLAT_IMAGES, TREE_IMAGES, VAL = 40, 12, 8  # TREE_IMAGES per class and split
SIDE = 16


def write_images(folder, n, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png")


def pretrain(data_dir, root, exp, *extra):
    return ["mae_pretrain.py", "--dataset", "folder", "--data_dir", data_dir, "--device", "cpu",
            "--image_size", str(SIDE), "--batch_size", "16", *TINY_MAE, "--total_epoch", "1",
            "--warmup_epoch", "0", "--output_root", root, "--exp_name", exp, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unlabelled")
    write_images(tmp / "flat", FLAT_IMAGES, 0)
    for k, (split, cls) in enumerate((s, c) for s in ("train", "test") for c in ("a", "b")):
        write_images(tmp / "tree" / split / cls, TREE_IMAGES, k + 1)
    root = tmp / "out"
    cmds = {
        "flat": pretrain(tmp / "flat", root, "flat", "--val_split", str(VAL), "--knn_freq", "0"),
        "flat_defaults": pretrain(tmp / "flat", root, "flat_defaults"),
        "tree": pretrain(tmp / "tree", root, "tree", "--unlabelled", "--knn_freq", "0"),
        "not_a_folder": ["fake" if a == "folder" else a
                         for a in pretrain(tmp / "flat", root, "fake", "--unlabelled")],
        "classifier": ["train_classifier.py", "--dataset", "folder", "--data_dir", tmp / "flat",
                       "--device", "cpu", "--output_root", root, "--exp_name", "cls"],
    }
    results = dict(zip(cmds, run_scripts(list(cmds.values()))))
    return dict(root=root, results=results)


def summary(runs, exp):
    return json.loads((runs["root"] / exp / "mae-pretrain" / "summary.json").read_text())


def test_a_flat_folder_of_images_pretrains(runs):
    r = runs["results"]["flat"]
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    images = summary(runs, "flat")["images"]
    assert images["pretrain"]["count"] == FLAT_IMAGES - VAL
    assert images["eval_split"] == "val" and images["eval"]["count"] == VAL


def test_unlabelled_ignores_the_class_folders_of_a_tree(runs):
    r = runs["results"]["tree"]
    assert r.returncode == 0, r.stdout[-1000:] + r.stderr[-2000:]
    images = summary(runs, "tree")["images"]
    assert images["pretrain"]["count"] == 2 * TREE_IMAGES  # both classes' training images
    assert images["eval_split"] == "test" and images["eval"]["count"] == 2 * TREE_IMAGES


@pytest.mark.parametrize("name,words", [
    ("flat_defaults", ["holds unlabelled images; pass --knn_freq 0", "and --val_split N"]),
    ("not_a_folder", ["--unlabelled reads the images of --dataset folder"]),
    ("classifier", ["is a folder of unlabelled images; classification needs labels",
                    "train/<class>/"]),
])
def test_what_needs_labels_says_so_and_writes_nothing(runs, name, words):
    one_error_line(runs["results"][name], words)
    exp = {"flat_defaults": "flat_defaults", "not_a_folder": "fake", "classifier": "cls"}[name]
    assert not (runs["root"] / exp).exists()
