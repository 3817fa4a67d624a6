"""Atomic file writes (a crash leaves the old file or the new one, never half of one), and the
JSON and metrics CSV files a run writes.

Imports no torch, so report.py stays light.
"""
import csv
import hashlib
import io
import json
import os
import stat
import tempfile

from mae_cifar.cli import UsageError

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file
TEMP_PREFIX = ".tmp-"  # atomic_write's temporary files; a writer killed mid-write leaves one


def _file_mode():
    """0o666 minus the umask: what open() would give (mkstemp alone gives 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write_fn, mode="wb"):
    """Write through write_fn(fileobj) into a temporary file, then os.replace it onto path."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix="-" + os.path.basename(path),
                               dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):  # name the file, not the temporary (ENOSPC names none)
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode="w")


def atomic_write_bytes(path, data):
    atomic_write(path, lambda f: f.write(data))


def write_json(path, obj):
    """obj as indented JSON with sorted keys, written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_temp_files(folder):
    """Delete the temporary files killed writers left under folder (hold its lock first)."""
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(root, name))


def file_sha256(path):
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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


def is_regular_file(path):
    """Whether path is a regular file (stat only: a FIFO is never opened, so never waited on)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def read_metrics(path, skip_damaged=False):
    """The rows of a metrics CSV (a UTF-8 BOM, as Excel writes, is fine).

    Training resumes on them: a damaged line is a UsageError naming it. The report shows what
    it can (skip_damaged): damaged rows are dropped, an unreadable file has no rows, and a
    file that stops parsing keeps the rows before the damage."""
    rows = []
    if os.path.lexists(path) and not is_regular_file(path):
        if skip_damaged:
            return rows
        raise UsageError(f"{path} is not a regular file (a FIFO or a folder?); restore it, or "
                         "start again with --overwrite")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
        for row in csv.DictReader(io.StringIO(text)):  # a csv.Error keeps the rows before it
            rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        if not skip_damaged:
            raise UsageError(f"cannot read {path}: {e}; restore it, or start again with "
                             "--overwrite") from None
    good = []
    for line, row in enumerate(rows, start=2):
        if numeric_row(row):
            good.append(row)
        elif not skip_damaged:
            raise UsageError(f"{path} line {line} is damaged; repair or delete that line, or "
                             "start again with --overwrite")
    return good


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
