"""visualize_pred.py on classifiers and an MAE trained for one epoch by the real scripts."""
import re
from dataclasses import asdict

import pytest
import torch
from conftest import TINY_ENCODER, TINY_MAE, run_scripts

import visualize_pred
from mae_cifar.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.data.datasets import load_dataset
from model import ClassifierConfig, ViT_Classifier

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_TEST = 64
DATA = ["--dataset", "fake", "--device", "cpu", "--max_eval_images", str(N_TEST)]
TRAIN = DATA + ["--max_train_images", "128", "--batch_size", "128", "--total_epoch", "1",
                "--warmup_epoch", "0"]
FIGURES = ("predictions.png", "disagreements.png")
MODELS = ("pretrained", "scratch")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Train an MAE, a fine-tuned and a scratch classifier, then run visualize_pred.py in
    several ways, all in one interpreter -> (checkpoint paths, results by name, tmp dir)."""
    root = tmp_path_factory.mktemp("vis")
    out = ["--output_root", root, "--exp_name", "e"]
    ckpt = {"mae": root / "e/mae-pretrain/vit-t-mae.pt",
            "pretrained": root / "e/pretrain-cls/vit-t-clf-from_pretrained.pt",
            "scratch": root / "e/scratch-cls/vit-t-clf-from_scratch.pt"}
    both = ["--finetuned_model_path", ckpt["pretrained"], "--scratch_model_path", ckpt["scratch"]]
    commands = {
        "mae": ["mae_pretrain.py", *TRAIN, *TINY_MAE, "--knn_freq", "0", *out],
        "finetune": ["train_classifier.py", *TRAIN, "--pretrained_model_path", ckpt["mae"],
                     *out],
        "scratch": ["train_classifier.py", *TRAIN, *TINY_ENCODER, *out],
        "full": ["visualize_pred.py", *DATA, *both, "--pretrained_model_path", ckpt["mae"],
                 "--n", "5", "--save_dir", root / "full"],
        "same": ["visualize_pred.py", *DATA, "--pretrained_ckpt", ckpt["scratch"],  # old names
                 "--scratch_ckpt", ckpt["scratch"], "--use_first_n", "--n", "3",
                 "--save_dir", root / "same"],
        "out_of_range": ["visualize_pred.py", *DATA, *both, "--indices", "0", str(N_TEST),
                         "--save_dir", root / "bad"],
        "foreign": ["visualize_pred.py", *DATA, "--finetuned_model_path", ckpt["mae"],
                    "--scratch_model_path", ckpt["scratch"], "--save_dir", root / "foreign"],
    }
    results = dict(zip(commands, run_scripts(list(commands.values()))))
    for name in ("mae", "finetune", "scratch"):
        assert results[name].returncode == 0, results[name].stderr[-2000:]
    return ckpt, results, root


def assert_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:len(PNG_MAGIC)] == PNG_MAGIC


def test_figures_and_accuracy_line(runs):
    _, results, root = runs
    r = results["full"]
    assert r.returncode == 0, r.stderr
    for name in (*FIGURES, "reconstruction.png"):
        assert_png(root / "full" / name)
    line = next(s for s in r.stdout.splitlines() if s.startswith("accuracy on the 5 shown"))
    assert f"whole test split ({N_TEST} images)" in line
    assert "pretrained " in line and "scratch " in line


def independent_predictions(path, split):
    """Predicted labels of a saved classifier on split: rebuilt from the file, images
    normalised by hand with the checkpoint's statistics."""
    ckpt = torch.load(path, weights_only=True)
    model = ViT_Classifier(ClassifierConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    mean, std = (ckpt[k][None, :, None, None] for k in ("norm_mean", "norm_std"))
    with torch.no_grad():
        return model.eval()((split.images.float() / 255 - mean) / std).argmax(-1)


def test_printed_accuracies_and_disagreements_match_an_independent_evaluation(runs):
    ckpt, results, _ = runs
    out = results["full"].stdout
    test = load_dataset("fake", max_eval=N_TEST).test
    preds = {name: independent_predictions(ckpt[name], test) for name in MODELS}
    shown = [int(i) for i in re.search(r"showing \[([\d, ]+)\]", out)[1].split(",")]
    numbers = re.search(r"accuracy on the 5 shown images: pretrained ([\d.]+), scratch "
                        r"([\d.]+); on the whole test split \(64 images\): pretrained "
                        r"([\d.]+), scratch ([\d.]+); they disagree on (\d+) images", out)
    assert numbers, out
    for k, name in enumerate(MODELS):
        right = (preds[name] == test.labels).float()
        assert float(numbers[1 + k]) == pytest.approx(right[shown].mean().item(), abs=1e-4)
        assert float(numbers[3 + k]) == pytest.approx(right.mean().item(), abs=1e-4)
    assert int(numbers[5]) == (preds["pretrained"] != preds["scratch"]).sum().item()
    accuracies = {float(numbers[3]), float(numbers[4])}
    assert accuracies != {0.5}  # the check can fail: accuracy and error rate differ


def test_identical_classifiers_never_disagree_and_no_mae_figure(runs):
    _, results, root = runs
    r = results["same"]
    assert r.returncode == 0, r.stderr
    assert "showing [0, 1, 2]" in r.stdout
    assert "they disagree on 0 images" in r.stdout
    # the old names still work; --pretrained_ckpt (the MAE file elsewhere) says which flag it is
    assert r.stdout.splitlines()[0] == (
        "note: --pretrained_ckpt is deprecated in visualize_pred.py: here it is "
        "--finetuned_model_path (the fine-tuned classifier), not the MAE file "
        "(--pretrained_model_path) it names in train_classifier.py")
    for name in FIGURES:
        assert_png(root / "same" / name)
    assert not (root / "same" / "reconstruction.png").exists()


def test_out_of_range_index_exits_2_and_writes_nothing(runs):
    _, results, root = runs
    r = results["out_of_range"]
    assert r.returncode == 2
    assert f"--indices {N_TEST} out of range" in r.stderr
    assert f"0 to {N_TEST - 1}" in r.stderr
    assert not (root / "bad").exists()


def test_mae_checkpoint_as_classifier_is_refused(runs):
    _, results, root = runs
    r = results["foreign"]
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "expected a classifier checkpoint" in r.stderr
    assert not (root / "foreign").exists()


def test_classifiers_of_different_image_shapes_are_refused(runs, tmp_path):
    """A valid classifier checkpoint of 16x16 images, in train_classifier.py's format."""
    ckpt, _, _ = runs
    saved = load_checkpoint(ckpt["scratch"], kind="classifier")
    cfg = ClassifierConfig(**{**saved["config"], "image_size": 16})
    small = tmp_path / "small.pt"
    save_checkpoint({**saved, "format": CHECKPOINT_FORMAT, "config": asdict(cfg),
                     "model": ViT_Classifier(cfg).state_dict()}, small)
    args = visualize_pred.get_args_parser().parse_args(
        [*DATA, "--finetuned_model_path", str(small), "--scratch_model_path", str(ckpt["scratch"]),
         "--save_dir", str(tmp_path / "out")])
    with pytest.raises(UsageError, match="different image shapes: pretrained 3x16x16"):
        visualize_pred.main(args)
    assert not (tmp_path / "out").exists()


def test_every_flag_has_help():
    parser = visualize_pred.get_args_parser()
    assert all(a.help for a in parser._actions)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--finetuned_model_path", "--scratch_model_path", "--pretrained_model_path",
            "--pretrained_ckpt", "--scratch_ckpt", "--mae_ckpt", "--n", "--indices",
            "--use_first_n", "--seed", "--save_dir", "--device", "--dataset", "--data_dir",
            "--image_size", "--max_eval_images"} <= flags


def test_random_choice_follows_seed():
    parser = visualize_pred.get_args_parser()
    pick = [visualize_pred.select_indices(parser.parse_args(["--seed", s]), 100).tolist()
            for s in ("1", "1", "2")]
    assert pick[0] == pick[1] != pick[2]
    assert len(set(pick[0])) == 12 and all(0 <= i < 100 for i in pick[0])
    assert torch.equal(visualize_pred.select_indices(
        parser.parse_args(["--use_first_n", "--n", "500"]), 100), torch.arange(100))
