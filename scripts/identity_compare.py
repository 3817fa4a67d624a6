"""Compare two folders of scripts/identity_runs.sh: every metrics CSV (wall-clock columns
aside), summary.json (times aside), model and checkpoint tensors, args.json and PNG bytes.

    python scripts/identity_compare.py /tmp/before /tmp/after     # exit 1 if anything differs
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import torch

TIMING = ("seconds", "images_per_s", "time", "date", "commit", "minutes", "host")


def untimed(d):
    return {k: v for k, v in d.items() if not any(t in k for t in TIMING)}


def same_csv(a, b):
    rows = [list(csv.DictReader(p.open())) for p in (a, b)]
    return [untimed(r) for r in rows[0]] == [untimed(r) for r in rows[1]]


def same_tensors(x, y):
    """Tensors equal bit for bit, containers recursively; other leaves (times) are skipped."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and \
            all(same_tensors(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(same_tensors(u, v) for u, v in zip(x, y))
    return True


def same(a, b):
    if a.suffix == ".csv":
        return same_csv(a, b)
    if a.suffix == ".pt":
        return same_tensors(*(torch.load(p, weights_only=True) for p in (a, b)))
    if a.name == "summary.json":
        return untimed(json.loads(a.read_text())) == untimed(json.loads(b.read_text()))
    return a.read_bytes() == b.read_bytes()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="output folder of the first identity_runs.sh")
    p.add_argument("after", type=Path, help="output folder of the second")
    args = p.parse_args()
    files = sorted(f.relative_to(args.before) for f in args.before.rglob("*")
                   if f.is_file() and "tensorboard" not in f.parts)  # event names hold times
    differ = [f for f in files if not (args.after / f).is_file() or
              not same(args.before / f, args.after / f)]
    for f in differ:
        print(f"differs: {f}")
    print(f"{len(files)} files compared, {len(differ)} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
