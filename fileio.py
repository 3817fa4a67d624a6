"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

Imports no torch, so report.py stays light.
"""
import hashlib
import json
import os
import tempfile

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
