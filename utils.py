"""Small shared pieces: seeding, RNG state, checkpoints, the lr schedule and parameter groups."""
import hashlib
import io
import math
import os
import pickle
import random
import stat
import zipfile

import numpy as np
import torch

from cli import UsageError
from fileio import atomic_write_bytes

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


# --------------------------------------------------------------------------- randomness
def seed_everything(seed):
    """Seed Python, NumPy and torch (every device); make cuDNN deterministic."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def get_rng_state():
    """Every RNG the training loop draws from, as plain containers and tensors."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].copy()),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy(), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- checkpoints
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


# --------------------------------------------------------------------------- optimisation
def cosine_lr(step, total_steps, warmup_steps, peak_lr, min_lr=0.0):
    """Learning rate at optimizer step `step`: linear warmup from 0, then cosine to min_lr."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def constant_lr(step, warmup_steps, peak_lr):
    """Learning rate at optimizer step `step`: linear warmup from 0, then peak_lr for good
    (no decay: a plateau of the validation curve is the model's, not the schedule's)."""
    return peak_lr * step / warmup_steps if step < warmup_steps else peak_lr


NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model, weight_decay, layer_decay=1.0, no_decay_names=NO_DECAY_NAMES):
    """AdamW groups: no decay on biases, norms (ndim <= 1) and names containing one of
    no_decay_names (default: tokens and position embeddings, as official MAE fine-tuning;
    official pretraining passes none, so it decays its tokens).

    layer_decay < 1 scales each ViT block's lr by layer_decay ** (depth + 1 - layer_id)
    (embeddings are layer 0, the head layer depth + 1), as in BEiT and MAE fine-tuning.
    Each group carries 'lr_scale', which set_lr applies. Not timm's param_groups_layer_decay:
    its layers differ from official MAE's for the final norm, and its group order from the
    optimizer state of existing checkpoints (tests/test_recipes.py shows both).
    """
    depth = len(model.blocks) if hasattr(model, "blocks") else 0
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim <= 1 or any(k in name for k in no_decay_names)
        layer = _layer_id(name, depth)
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (depth + 1 - layer)}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def _layer_id(name, depth):
    if name.startswith(("cls_token", "pos_embed", "patch_embed", "reg_token")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
