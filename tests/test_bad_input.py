"""Bad input is refused before anything is written: exit code 2, one line naming the problem
and the fix, no traceback, and the outputs root exactly as it was.

All cases run in one interpreter (conftest.run_scripts), each as `python script.py ...`.
"""
import gzip
import hashlib
import os
import shutil
import socket
import struct
import threading
import zipfile
import zlib
from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import TINY_DATA, TINY_MAE, run_scripts

from mae_cifar.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from mae_cifar.cli import UsageError
from mae_cifar.data import datasets
from model import MAE_ViT, MAEConfig, ViT_Classifier

MAE, CLF, VIS = "mae_pretrain.py", "train_classifier.py", "visualize_pred.py"
ENCODER = dict(image_size=16, patch_size=4, emb_dim=32, encoder_layer=2, encoder_head=2)
SIZE = ["--image_size", str(ENCODER["image_size"])]
TRAIN = ["--total_epoch", "1", "--warmup_epoch", "0", "--output_root", "{out}", "--exp_name", "e"]
BASE = {MAE: [*TINY_DATA, *TINY_MAE, *TRAIN], CLF: [*TINY_DATA, *SIZE, *TRAIN],
        VIS: ["--dataset", "fake", "--device", "cpu", *SIZE, "--max_eval_images", "32",
              "--save_dir", "{out}/visualize"]}
RANDOM_BYTES = 4096
HANG_LIMIT_S = 60  # far above the 1 s download timeout the test sets
# {name}: placeholders for the files and folders the `inputs` fixture makes.
CASES = {  # id: (script, extra flags, fragments the error line must contain)
    "width_not_divisible_by_heads": (MAE, ["--emb_dim", "30", "--encoder_head", "4"],
                                     ["emb_dim=30 must be divisible by encoder_head=4"]),
    "image_not_divisible_by_patch": (MAE, ["--image_size", "30", "--patch_size", "4"],
                                     ["image_size=30 must be divisible by patch_size=4"]),
    "mask_ratio_one": (MAE, ["--mask_ratio", "1.0"], ["mask_ratio must be in [0, 1)"]),
    "mask_ratio_negative": (MAE, ["--mask_ratio", "-0.1"], ["mask_ratio must be in [0, 1)"]),
    "sincos_decoder_width": (MAE, ["--recipe", "paper", "--decoder_dim", "30"],
                             ["pos_embed='sincos' needs decoder_dim divisible by 4, got 30"]),
    "val_split_whole_train_split": (MAE, ["--val_split", "4096"],
                                    ["--val_split 4096 must be between 1 and 4095"]),
    "zero_epochs": (MAE, ["--total_epoch", "0"], ["--total_epoch", "positive integer", "'0'"]),
    "negative_batch": (MAE, ["--batch_size", "-8"], ["--batch_size", "positive integer"]),
    "zero_image_size": (MAE, ["--image_size", "0"], ["--image_size", "positive integer"]),
    "zero_width": (MAE, ["--emb_dim", "0"], ["--emb_dim", "positive integer"]),
    "negative_warmup": (MAE, ["--warmup_epoch", "-1"], ["--warmup_epoch", "non-negative"]),
    "zero_lr": (MAE, ["--base_learning_rate", "0"], ["--base_learning_rate", "positive"]),
    "unknown_dataset": (MAE, ["--dataset", "imagenet"], ["--dataset", "invalid choice"]),
    "cifar10_offline": (MAE, ["--dataset", "cifar10", "--data_dir", "{empty}"],
                        ["cifar10 not found in", "--data_dir"]),
    "fashion_mnist_offline": (MAE, ["--dataset", "fashion_mnist", "--data_dir", "{empty}"],
                              ["fashion_mnist not found in", "--data_dir"]),
    "folder_without_splits": (MAE, ["--dataset", "folder", "--data_dir", "{empty}"],
                              ["folder dataset needs", "train/<class>/"]),
    "folder_without_images": (MAE, ["--dataset", "folder", "--data_dir", "{no_images}"],
                              ["no images found under"]),
    "folder_one_class": (MAE, ["--dataset", "folder", "--data_dir", "{one_class}"],
                         ["1 class folder(s)", "at least 2"]),
    "folder_unreadable_image": (MAE, ["--dataset", "folder", "--data_dir", "{bad_image}"],
                                ["cannot read image", "x.png", "remove or replace"]),
    "cuda_without_cuda": (MAE, ["--device", "cuda"], ["no CUDA device", "--device cpu"]),
    "output_root_under_a_file": (MAE, ["--output_root", "{file}/sub"],
                                 ["cannot write to {file}/sub", "--output_root"]),
    "exp_name_with_slash": (MAE, ["--exp_name", "a/b"], ["--exp_name must be a plain folder"]),
    "ckpt_missing": (CLF, ["--pretrained_model_path", "{ckpt}/missing.pt"],
                     ["checkpoint not found", "missing.pt"]),
    "ckpt_empty": (CLF, ["--pretrained_model_path", "{ckpt}/empty.pt"],
                   ["checkpoint is empty", "empty.pt"]),
    "ckpt_truncated": (CLF, ["--pretrained_model_path", "{ckpt}/truncated.pt"],
                       ["truncated or corrupt"]),
    "ckpt_random_bytes": (CLF, ["--pretrained_model_path", "{ckpt}/random.pt"],
                          ["truncated or corrupt"]),
    "ckpt_classifier_not_mae": (CLF, ["--pretrained_model_path", "{ckpt}/classifier.pt"],
                                ["is a classifier checkpoint", "expected an MAE"]),
    "ckpt_width_contradicts_flag": (CLF, ["--pretrained_model_path", "{ckpt}/mae.pt",
                                          "--emb_dim", "64"],
                                    ["does not match", "--emb_dim 64 (the checkpoint has 32)"]),
    "ckpt_image_size_contradicts_data": (CLF, ["--pretrained_model_path", "{ckpt}/mae.pt",
                                               "--image_size", "32"],
                                         ["does not match", "image_size 32"]),
    "ckpt_crafted_pickle": (CLF, ["--pretrained_model_path", "{ckpt}/evil.pt"],
                            ["refusing", "evil.pt", "can run code"]),
    "classifier_width_not_divisible_by_heads": (CLF, ["--emb_dim", "30", "--encoder_head", "4"],
                                                ["emb_dim=30 must be divisible by "
                                                 "encoder_head=4"]),
    "classifier_zero_layer_decay": (CLF, ["--layer_decay", "0"], ["--layer_decay", "(0, 1]"]),
    "probe_with_mixup": (CLF, ["--linear_probe", "--mixup", "0.8"], ["drop --mixup"]),
    "visualize_index_out_of_range": (VIS, ["--pretrained_ckpt", "{ckpt}/classifier.pt",
                                           "--scratch_ckpt", "{ckpt}/classifier.pt",
                                           "--indices", "0", "32"],
                                     ["--indices 32 out of range", "0 to 31"]),
    "visualize_mae_not_classifier": (VIS, ["--pretrained_ckpt", "{ckpt}/mae.pt",
                                           "--scratch_ckpt", "{ckpt}/classifier.pt"],
                                     ["mae.pt is a mae checkpoint", "expected a classifier"]),
    # hostile but realistic input
    "ckpt_os_system_pickle": (CLF, ["--pretrained_model_path", "{ckpt}/system.pt"],
                              ["refusing", "system.pt", "it needs arbitrary unpickling"]),
    "sincos_width_not_divisible_by_4": (MAE, ["--pos_embed", "sincos", "--emb_dim", "30"],
                                        ["pos_embed='sincos' needs emb_dim divisible by 4"]),
    "seed_overflow": (MAE, ["--seed", "99999999999999999999999"], ["--seed", "integer in"]),
    "weight_decay_nan": (MAE, ["--weight_decay", "nan"], ["--weight_decay", "finite number"]),
    "mixup_nan": (CLF, ["--mixup", "nan"], ["--mixup", "finite number"]),
    "cutmix_inf": (CLF, ["--cutmix", "inf"], ["--cutmix", "finite number"]),
    "pad_value_nan": (MAE, ["--pad_value", "nan"], ["--pad_value", "finite number"]),
    "min_lr_nan": (MAE, ["--min_lr", "nan"], ["--min_lr", "finite number"]),
    "reprob_inf": (CLF, ["--reprob", "inf"], ["--reprob", "finite number"]),
    "betas_nan": (MAE, ["--betas", "0.9", "nan"], ["--betas", "finite number"]),
    "pad_value_out_of_range": (MAE, ["--pad_value", "2"], ["--pad_value must be in [0, 1]"]),
    "amp_fp16_on_cpu": (MAE, ["--amp", "fp16"], ["--amp fp16 needs a CUDA device"]),
    "csv_log_alias_args_json": (CLF, ["--csv_log", "args.json"],  # an alias: the name is --csv_fn
                                ["--csv_fn args.json would overwrite the run's own args.json"]),
    "csv_fn_checkpoint": (CLF, ["--csv_fn", "checkpoint.pt"], ["would overwrite", "checkpoint"]),
    "csv_fn_summary": (MAE, ["--csv_fn", "summary.json"], ["--csv_fn summary.json would"]),
    "model_fn_lock": (MAE, ["--model_fn", ".lock"], ["--model_fn .lock would overwrite"]),
    "model_fn_in_subfolder": (MAE, ["--model_fn", "sub/x.pt"],
                              ["--model_fn is a file name in the stage folder", "sub/x.pt"]),
    "csv_fn_is_the_model": (CLF, ["--csv_fn", "vit-t-clf-from_scratch.pt"],
                            ["both name vit-t-clf-from_scratch.pt"]),
    "csv_fn_equals_model_fn": (MAE, ["--csv_fn", "m.pt", "--model_fn", "m.pt"],
                               ["both name m.pt"]),
    "clf_model_fn_reserved": (CLF, ["--model_fn", "{out}/e/scratch-cls/checkpoint.pt"],
                              ["--model_fn checkpoint.pt would overwrite"]),
    "output_model_path_alias_is_a_folder": (CLF, ["--output_model_path", "{empty}"],
                                            ["--model_fn", "is a folder"]),
    "clf_model_fn_under_a_file": (CLF, ["--model_fn", "{file}/x.pt"],
                                  ["cannot create files under {file}"]),
    "clf_model_fn_is_the_upstream": (CLF, ["--pretrained_model_path", "{ckpt}/mae.pt",
                                           "--model_fn", "{ckpt}/./mae.pt"],
                                     ["--model_fn would overwrite --pretrained_model_path"]),
    "fashion_corrupt_deflate": (MAE, ["--dataset", "fashion_mnist", "--data_dir",
                                      "{fashion_corrupt}"], ["cannot read", "idx3-ubyte.gz"]),
    "fashion_labels_as_images": (MAE, ["--dataset", "fashion_mnist", "--data_dir",
                                       "{fashion_swapped}"], ["swapped"]),
    "fashion_label_200": (MAE, ["--dataset", "fashion_mnist", "--data_dir",
                                "{fashion_label200}"], ["labels outside 0..9", "200"]),
    "fashion_fewer_labels": (MAE, ["--dataset", "fashion_mnist", "--data_dir",
                                   "{fashion_short}"], ["images but", "labels"]),
    "folder_decompression_bomb": (MAE, ["--dataset", "folder", "--data_dir", "{bomb}"],
                                  ["cannot read image", "x.png", "remove or replace"]),
    "folder_symlink_loop": (MAE, ["--dataset", "folder", "--data_dir", "{loop}"],
                            ["cannot list", "x.png", "symbolic links"]),
    "folder_class_symlink_loop": (MAE, ["--dataset", "folder", "--data_dir", "{classloop}"],
                                  ["cannot list", "train/c", "symbolic links"]),
    "folder_fifo": (MAE, ["--dataset", "folder", "--data_dir", "{fifo}"],
                    ["x.png is not a regular file"]),
    "folder_hidden_class": (MAE, ["--dataset", "folder", "--data_dir", "{hidden}"],
                            ["1 class folder(s)"]),
    "folder_newline_in_name": (MAE, ["--dataset", "folder", "--data_dir", "{newline}"],
                               ["cannot read image", "bad\\nname.png"]),
    "args_json_invalid": (MAE, ["--exp_name", "invalid"], ["args.json is damaged"]),
    "args_json_empty": (MAE, ["--exp_name", "empty"], ["args.json is damaged"]),
    "args_json_list": (MAE, ["--exp_name", "list"], ["args.json is damaged",
                                                      "not a JSON object"]),
    "args_json_gone_checkpoint_left": (MAE, ["--exp_name", "noargs"],
                                       ["holds a run with other flags", "--seed: 7 (saved)"]),
    "args_json_gone_summary_left": (MAE, ["--exp_name", "summary_only"],
                                    ["holds files of an unknown run", "--overwrite"]),
    # what the model file is, not "not found" (and a FIFO is never opened)
    "ckpt_is_a_directory": (CLF, ["--pretrained_model_path", "{ckpt}/folder.pt"],
                            ["{ckpt}/folder.pt is a folder without config.json; pass a "
                             "model file or a timm folder"]),
    "ckpt_is_a_fifo": (CLF, ["--pretrained_model_path", "{ckpt}/fifo.pt"],
                       ["{ckpt}/fifo.pt is not a regular file"]),
    "visualize_png_is_a_folder": (VIS, ["--pretrained_ckpt", "{ckpt}/classifier.pt",
                                        "--scratch_ckpt", "{ckpt}/classifier.pt",
                                        "--save_dir", "{vis}"],
                                  ["predictions.png", "Is a directory"]),
}
ARGPARSE_CASES = {"zero_epochs", "negative_batch", "zero_image_size", "zero_width",
                  "negative_warmup", "zero_lr", "unknown_dataset", "seed_overflow",
                  "weight_decay_nan", "mixup_nan", "cutmix_inf", "pad_value_nan",
                  "min_lr_nan", "reprob_inf", "betas_nan"}
HAND_EDITED_ARGS = {"invalid": "{\"seed\": ", "empty": "", "list": "[]\n"}  # exp -> args.json
BOMB_SIDE = 20000  # pixels: a PNG header claiming 20000 x 20000 (PIL refuses > 2 x 89 M)
FASHION_IMAGES = 8  # images per idx file the Fashion-MNIST fixtures write


class CreatesFileWhenUnpickled:
    """A crafted pickle: loading it with plain pickle would create `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


class RunsShellCommand:
    """A pickle of os.system (posix.system): unpickled, it would run the shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def make_checkpoints(folder):
    """Real MAE and classifier checkpoints, and broken or hostile ones."""
    os.makedirs(folder)
    cfg = MAEConfig(**ENCODER, decoder_dim=32, decoder_layer=1)
    mae = {"format": CHECKPOINT_FORMAT, "kind": "mae", "config": asdict(cfg),
           "model": MAE_ViT.from_config(cfg).state_dict()}
    save_checkpoint(mae, os.path.join(folder, "mae.pt"))
    clf = ViT_Classifier.from_mae(cfg, MAE_ViT.from_config(cfg).encoder.state_dict())
    fake = datasets.load_dataset("fake", image_size=ENCODER["image_size"], max_train=1, max_eval=1)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "classifier",
                     "config": asdict(clf.config), "model": clf.state_dict(),
                     "classes": fake.classes, "norm_mean": fake.mean, "norm_std": fake.std},
                    os.path.join(folder, "classifier.pt"))
    with open(os.path.join(folder, "mae.pt"), "rb") as f:
        blob = f.read()
    files = {"empty.pt": b"", "truncated.pt": blob[:len(blob) // 2],
             "random.pt": os.urandom(RANDOM_BYTES)}
    for name, content in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "mae",
                "model": CreatesFileWhenUnpickled(os.path.join(folder, "PWNED"))},
               os.path.join(folder, "evil.pt"))
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "mae",
                "model": RunsShellCommand(f"touch {os.path.join(folder, 'PWNED_SYSTEM')}")},
               os.path.join(folder, "system.pt"))
    os.mkdir(os.path.join(folder, "folder.pt"))
    os.mkfifo(os.path.join(folder, "fifo.pt"))  # opened for reading, it would block forever


def make_image_folders(root):
    """Folder datasets that are wrong in one way each."""
    png = os.path.join(root, "ok.png")
    torch.manual_seed(0)
    from torchvision.utils import save_image
    save_image(torch.rand(3, 8, 8), png)
    layouts = {  # dataset -> {relative file: source (None: random bytes)}; '' = empty folder
        "no_images": {"train/a/": "", "train/b/": "", "test/a/": "", "test/b/": ""},
        "one_class": {"train/a/i.png": png, "test/a/i.png": png},
        "bad_image": {"train/a/x.png": None, "train/b/i.png": png, "test/a/i.png": png,
                      "test/b/i.png": png},
    }
    for name, files in layouts.items():
        for rel, src in files.items():
            path = os.path.join(root, name, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if rel.endswith("/"):
                continue
            if src is None:
                with open(path, "wb") as f:
                    f.write(os.urandom(RANDOM_BYTES))
            else:
                shutil.copy(src, path)


def png_header(width, height):
    """The first chunks of a PNG of that size (enough for PIL to read its size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def make_hostile_folders(root, png):
    """Folder datasets a hostile review used: a decompression bomb, symlink loops (an image,
    a class folder), a FIFO, a hidden folder (the only second class), a bad file with a
    newline in its name."""
    ok = {"train/b/i.png": png, "test/a/i.png": png, "test/b/i.png": png}
    for name in ("bomb", "loop", "fifo", "newline", "classloop"):
        for rel, src in ok.items():
            os.makedirs(os.path.join(root, name, os.path.dirname(rel)), exist_ok=True)
            shutil.copy(src, os.path.join(root, name, rel))
        os.makedirs(os.path.join(root, name, "train", "a"))
    with open(os.path.join(root, "bomb", "train", "a", "x.png"), "wb") as f:
        f.write(png_header(BOMB_SIDE, BOMB_SIDE))
    os.symlink("x.png", os.path.join(root, "loop", "train", "a", "x.png"))
    os.mkfifo(os.path.join(root, "fifo", "train", "a", "x.png"))
    os.symlink("c", os.path.join(root, "classloop", "train", "c"))
    with open(os.path.join(root, "newline", "train", "a", "bad\nname.png"), "wb") as f:
        f.write(os.urandom(RANDOM_BYTES))
    for rel in ("train/a/i.png", "train/.ipynb_checkpoints/i.png", "test/a/i.png"):
        os.makedirs(os.path.join(root, "hidden", os.path.dirname(rel)), exist_ok=True)
        shutil.copy(png, os.path.join(root, "hidden", rel))


def idx_bytes(arr):
    """A uint8 array in the idx format (the MNIST files)."""
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) \
        + arr.astype(np.uint8).tobytes()


def make_fashion_folders(root):
    """Fashion-MNIST .gz files damaged in one way each -> {name: folder}."""
    rng = np.random.default_rng(0)
    images = idx_bytes(rng.integers(0, 256, (FASHION_IMAGES, 28, 28)))
    labels = rng.integers(0, 10, FASHION_IMAGES)
    good = {"images": images, "labels": idx_bytes(labels)}
    compressed = gzip.compress(images)
    corrupt = compressed[:20] + bytes(b ^ 0xFF for b in compressed[20:40]) + compressed[40:]
    variants = {
        "fashion_corrupt": {"train-images-idx3-ubyte.gz": corrupt},
        "fashion_swapped": {"train-images-idx3-ubyte.gz": gzip.compress(good["labels"])},
        "fashion_label200": {"train-labels-idx1-ubyte.gz": gzip.compress(
            idx_bytes(np.where(np.arange(FASHION_IMAGES) == 1, 200, labels)))},
        "fashion_short": {"train-labels-idx1-ubyte.gz": gzip.compress(idx_bytes(labels[:-1]))},
    }
    for name, damaged in variants.items():
        os.makedirs(os.path.join(root, name))
        for split in ("train", "t10k"):
            for kind, idx in (("images", 3), ("labels", 1)):
                fn = f"{split}-{kind}-idx{idx}-ubyte.gz"
                with open(os.path.join(root, name, fn), "wb") as f:
                    f.write(damaged.get(fn, gzip.compress(good[kind])))
    return {name: os.path.join(root, name) for name in variants}


def make_run_folders(out):
    """Run folders a user edited by hand: args.json broken or deleted."""
    for exp, text in HAND_EDITED_ARGS.items():
        os.makedirs(os.path.join(out, exp, "mae-pretrain"))
        with open(os.path.join(out, exp, "mae-pretrain", "args.json"), "w") as f:
            f.write(text)
    folder = os.path.join(out, "noargs", "mae-pretrain")  # flags survive in the checkpoint
    os.makedirs(folder)
    save_checkpoint({"format": CHECKPOINT_FORMAT, "kind": "mae", "args": {"seed": 7}},
                    os.path.join(folder, "checkpoint.pt"))
    folder = os.path.join(out, "summary_only", "mae-pretrain")
    os.makedirs(folder)
    with open(os.path.join(folder, "summary.json"), "w") as f:
        f.write('{"finished": true}\n')


def tree(root):
    """{relative path: sha256} of every file and folder under root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(folder, d), root) + "/"] = ""
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[os.path.relpath(os.path.join(folder, name), root)] = \
                    hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    paths = {k: str(root / k) for k in ("empty", "ckpt", "out", "file")}
    os.makedirs(paths["empty"])
    make_checkpoints(paths["ckpt"])
    make_image_folders(str(root))
    paths.update({k: str(root / k) for k in ("no_images", "one_class", "bad_image")})
    make_hostile_folders(str(root), str(root / "ok.png"))
    paths.update({k: str(root / k)
                  for k in ("bomb", "loop", "fifo", "hidden", "newline", "classloop")})
    paths.update(make_fashion_folders(str(root)))
    paths["vis"] = str(root / "vis")
    os.makedirs(os.path.join(paths["vis"], "predictions.png"))
    make_run_folders(paths["out"])
    os.makedirs(os.path.join(paths["out"], "other", "mae-pretrain"))
    with open(os.path.join(paths["out"], "other", "mae-pretrain", "args.json"), "w") as f:
        f.write("{}\n")
    with open(paths["file"], "w") as f:
        f.write("a regular file, not a folder\n")
    return paths


@pytest.fixture(scope="module")
def results(inputs):
    """Every case run once; the outputs root before and after all of them. The scripts see
    no GPU (CUDA_VISIBLE_DEVICES empty), so 'cuda_without_cuda' holds on any machine."""
    before = tree(inputs["out"]), tree(inputs["file"])
    commands = [[script, *[a.format(**inputs) for a in BASE[script] + extra]]
                for script, extra, _ in CASES.values()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")  # the scripts' environment copies os.environ
        done = dict(zip(CASES, run_scripts(commands)))
    return done, before, (tree(inputs["out"]), tree(inputs["file"]))


@pytest.mark.parametrize("case", list(CASES))
def test_refused_with_one_clear_line(results, inputs, case):
    proc = results[0][case]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    if case in ARGPARSE_CASES:  # argparse: the usage, then one error line
        assert lines[0].startswith("usage:") and ": error: argument " in lines[-1]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in CASES[case][2]:
        assert fragment.format(**inputs) in lines[-1]


def test_nothing_written_under_the_outputs_root(results):
    _, before, after = results
    assert after == before


def test_crafted_pickle_never_runs(results, inputs):
    assert results[0]["ckpt_crafted_pickle"].returncode == 2
    assert not os.path.exists(os.path.join(inputs["ckpt"], "PWNED"))


def test_os_system_pickle_is_refused_unrun(results, inputs):
    """A torch zip checkpoint holding a pickle of posix.system: refused, never run."""
    with zipfile.ZipFile(os.path.join(inputs["ckpt"], "system.pt")) as z:
        pickled = next(z.read(n) for n in z.namelist() if n.endswith("data.pkl"))
    assert b"posix" in pickled and b"system" in pickled  # the payload is really there
    assert results[0]["ckpt_os_system_pickle"].returncode == 2
    assert not os.path.exists(os.path.join(inputs["ckpt"], "PWNED_SYSTEM"))


def test_download_from_a_silent_server_times_out(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers (a blocked network) must not
    hang the run: the download times out and the error names the missing files."""
    from torchvision import datasets as tv_datasets

    server = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody replies
    monkeypatch.setattr(tv_datasets.CIFAR10, "url",
                        f"http://127.0.0.1:{server.getsockname()[1]}/cifar-10-python.tar.gz")
    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT_S", 1)
    errors = []

    def load():
        try:
            datasets.load_dataset("cifar10", str(tmp_path))
        except UsageError as e:
            errors.append(str(e))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(HANG_LIMIT_S)
    server.close()
    assert not worker.is_alive(), "the download hangs on a silent server"
    assert len(errors) == 1 and "cifar10 not found in" in errors[0]
