"""Small shared pieces: errors, the CLI, seeding, RNG state, checkpoints, schedule, CSV."""
import argparse
import csv
import errno
import hashlib
import io
import json
import math
import os
import pickle
import random
import stat
import sys
import zipfile

import numpy as np
import torch

from fileio import atomic_write_bytes, atomic_write_text

CHECKPOINT_FORMAT = 1  # bump when the checkpoint layout changes


class UsageError(Exception):
    """Bad input: the scripts print the message on one line and exit with code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's layout (its example commands) and shows every default."""


CONFIG_FLAG = "--config"


def add_config_arg(parser):
    parser.add_argument(CONFIG_FLAG, default=None, metavar="ARGS_JSON",
                        help="replay a run: the values in this args.json (a run folder's) "
                             "become the defaults; flags given on the command line override "
                             "them")


def parse_args(parser, argv=None):
    """Parse argv; with --config FILE, FILE's values are the defaults (two passes), so flags
    on the command line win wherever they stand. UsageError for an unreadable file or a key
    the parser does not know."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(CONFIG_FLAG, default=None)
    path = pre.parse_known_args(argv)[0].config
    if path is not None:
        parser.set_defaults(**read_config(parser, path))
    return parser.parse_args(argv)


def read_config(parser, path):
    """{dest: value} of an args.json, checked against the parser's flags."""
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{CONFIG_FLAG} {path}: cannot read it as JSON: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    if not isinstance(values, dict):
        raise UsageError(f"{CONFIG_FLAG} {path}: expected a JSON object of flag values, got "
                         f"{type(values).__name__}")
    dests = {a.dest for a in parser._actions} - {"help"}
    unknown = sorted(set(values) - dests)
    if unknown:
        raise UsageError(f"{CONFIG_FLAG} {path}: unknown keys {', '.join(unknown)} (is it "
                         f"an args.json of {parser.prog}?)")
    values.pop("config", None)  # the file a replayed run was itself replayed from
    return values


def run_cli(main, parser):
    """Parse arguments and run main(args); UsageError -> one line on stderr, exit 2."""
    try:
        main(parse_args(parser))
    except UsageError as e:
        fail(str(e))
    except OSError as e:  # a write that failed (disk full, read-only) or an unreadable file
        fail(os_error_message(e))
    except KeyboardInterrupt:  # Ctrl-C before training installed its handlers
        print("stopped by SIGINT before training started; nothing to resume yet: run the "
              "same command again", file=sys.stderr)
        sys.exit(EXIT_SIGINT)


EXIT_SIGINT = 130  # 128 + SIGINT, as a shell reports it


def fail(message):
    """One `error:` line (newlines in file names escaped) and exit code 2."""
    print("error: " + message.replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
    sys.exit(2)


def os_error_message(e):
    """What failed, on which file, and the remedy."""
    writing = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
    what = f"{'cannot write' if writing else 'cannot use'} {e.filename}" if e.filename else \
        "a file operation failed"
    return f"{what}: {e.strerror or e}; {os_error_hint(e, 'check the path')}"


def os_error_hint(e, otherwise):
    """The remedy for a failed write: free space when the disk is full, else `otherwise`."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space, then run the same command to resume"
    return "choose a writable folder" if e.errno in (errno.EROFS, errno.EACCES) else otherwise


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


NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token")


def param_groups(model, weight_decay, layer_decay=1.0, no_decay_names=NO_DECAY_NAMES):
    """AdamW groups: no decay on biases, norms (ndim <= 1) and names containing one of
    no_decay_names (default: tokens and position embeddings, as official MAE fine-tuning;
    official pretraining passes none, so it decays its tokens).

    layer_decay < 1 scales each ViT block's lr by layer_decay ** (depth + 1 - layer_id)
    (embeddings are layer 0, the head layer depth + 1), as in BEiT and MAE fine-tuning.
    Each group carries 'lr_scale', which set_lr applies.
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


# --------------------------------------------------------------------------- logging
class CSVLogger:
    """Per-epoch metrics; the whole file is rewritten atomically on every row.

    On resume, rows of epochs >= start_epoch are dropped so each epoch appears once.
    """

    def __init__(self, path, fieldnames, start_epoch=0):
        self.path, self.fieldnames, self.rows = path, list(fieldnames), []
        if start_epoch > 0 and os.path.exists(path):
            self.rows = [r for r in read_metrics(path) if int(r["epoch"]) < start_epoch]

    def log(self, row):
        self.rows.append({k: _fmt(row.get(k)) for k in self.fieldnames})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


def read_metrics(path):
    """The rows of a metrics CSV (a UTF-8 BOM, as Excel writes, is fine); UsageError naming
    the first damaged line."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"cannot read {path}: {e}; restore it, or start again with "
                         "--overwrite") from None
    for line, row in enumerate(rows, start=2):
        if not numeric_row(row):
            raise UsageError(f"{path} line {line} is damaged; repair or delete that line, or "
                             "start again with --overwrite")
    return rows


def numeric_row(row):
    """An integer epoch and a number or blank in every other cell, none missing or extra."""
    if None in row or None in row.values() or not (row.get("epoch") or "").isdigit():
        return False
    return all(_is_number(v) for v in row.values() if v)


def _is_number(s):
    try:
        float(s)
    except ValueError:
        return False
    return True


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
