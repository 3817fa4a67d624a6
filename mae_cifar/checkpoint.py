"""This project's checkpoint files: written atomically, read back safely (weights_only), each
refused with one clear line when it is not what the caller needs."""
import hashlib
import io
import os
import pickle
import stat
import zipfile

import torch

from mae_cifar.cli import UsageError
from mae_cifar.fileio import atomic_write_bytes

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


def save_checkpoint(obj, path):
    """torch.save through a temporary file; obj holds only containers, numbers and tensors.
    Returns the hex sha256 of the bytes written (the file's identity for downstream runs)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())
    return hashlib.sha256(buf.getbuffer()).hexdigest()


def load_checkpoint(path, kind=None, map_location="cpu"):
    """Load a checkpoint of this project safely (weights_only), or raise UsageError.

    kind: 'mae' or 'classifier' to insist on one kind of file.
    """
    ckpt = read_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path} is not a checkpoint written by this project")
    if kind is not None and ckpt.get("kind") != kind:
        want = {"mae": "an MAE pretraining checkpoint (mae_pretrain.py)",
                "classifier": "a classifier checkpoint (train_classifier.py)"}
        raise UsageError(f"{path} is a {ckpt.get('kind')} checkpoint; expected {want[kind]}")
    return ckpt


def check_model_file(path):
    """UsageError unless path is a regular file: says what it is instead (stat only, so a
    FIFO is never opened and never blocks)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UsageError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"{path} is a directory, not a checkpoint file; pass the model "
                         "file inside it")
    if not stat.S_ISREG(mode):
        raise UsageError(f"{path} is not a regular file (a FIFO, socket or device); pass a "
                         "checkpoint file")


def read_torch_file(path, map_location="cpu"):
    """torch.load(weights_only=True) of any torch.save file, or UsageError."""
    check_model_file(path)
    if os.path.getsize(path) == 0:
        raise UsageError(f"checkpoint is empty: {path} (delete it and rerun the stage)")
    # torch.save writes zip archives; other bytes can crash torch.load with any exception
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not a readable checkpoint (truncated or corrupt)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a pickle of classes or functions
            raise UsageError(f"refusing {path}: it needs arbitrary unpickling, which can run "
                             "code; only plain tensor checkpoints are loaded") from None
        raise UsageError(f"{path} is not a readable checkpoint (truncated or corrupt)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError):
        raise UsageError(f"{path} is not a readable checkpoint (truncated or corrupt)") from None
    return ckpt
