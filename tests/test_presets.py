"""--model names a whole architecture (mae_cifar/training/presets.py): every architecture
flag not given takes the preset's value, a flag given overrides it, args.json records both."""
import json

import pytest
from conftest import TINY_DATA, run_scripts

from mae_cifar.checkpoint import load_checkpoint
from mae_cifar.training.presets import PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")
MICRO = PRESETS["vit_micro_patch4"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    common = [*TINY_DATA, "--total_epoch", "1", "--output_root", str(root)]
    mae = root / "m" / "mae-pretrain" / "vit-t-mae.pt"
    procs = run_scripts([
        ["mae_pretrain.py", *common, "--exp_name", "m", "--model", "vit_micro_patch4",
         "--emb_dim", "32"],
        ["train_classifier.py", *common, "--exp_name", "s", "--model", "vit_micro_patch4"],
        ["train_classifier.py", *common, "--exp_name", "f", "--pretrained_model_path", mae,
         "--model", "vit_tiny_patch2_32"],
        # no dataset flags: the MAE's (generated 16 x 16 images) are taken
        ["train_classifier.py", "--device", "cpu", "--batch_size", "32", "--max_train_images",
         "64", "--max_eval_images", "32", "--total_epoch", "1", "--output_root", str(root),
         "--exp_name", "r", "--pretrained_model_path", mae],
    ])
    return root, procs


def test_pretraining_takes_the_preset_and_the_flags_that_override_it(runs):
    root, procs = runs
    assert procs[0].returncode == 0, procs[0].stderr
    saved = json.loads((root / "m" / "mae-pretrain" / "args.json").read_text())
    assert saved["model"] == "vit_micro_patch4"
    assert {k: saved[k] for k in MICRO} == {**MICRO, "emb_dim": 32}
    assert "model vit_micro_patch4: patch_size 4, emb_dim 32 (flag), encoder_layer 6" \
        in procs[0].stdout


def test_a_scratch_classifier_is_built_from_the_preset(runs):
    root, procs = runs
    assert procs[1].returncode == 0, procs[1].stderr
    config = load_checkpoint(root / "s" / "scratch-cls" / "vit-t-clf-from_scratch.pt")["config"]
    assert {k: config[k] for k in ("patch_size", "emb_dim", "encoder_layer", "encoder_head")} \
        == {k: MICRO[k] for k in ("patch_size", "emb_dim", "encoder_layer", "encoder_head")}


def test_a_preset_that_contradicts_the_checkpoint_is_refused(runs):
    proc = runs[1][2]
    assert proc.returncode == 2
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("error: the pretrained encoder does not match: --patch_size 2 "
                           "(the checkpoint has 4)")


def test_a_stage_takes_its_data_from_the_pretrained_model(runs):
    root, procs = runs
    assert procs[3].returncode == 0, procs[3].stderr
    assert "from the pretrained model: --dataset fake, --data_dir ./data, --image_size 16" \
        in procs[3].stdout
    saved = json.loads((root / "r" / "pretrain-cls" / "args.json").read_text())
    assert (saved["dataset"], saved["image_size"]) == ("fake", 16)
