"""A stage's run folder: its state (new / unfinished / finished / foreign), the lock a writing
run holds, the names its files take, and the identity of its upstream model.
"""
import fcntl
import json
import os
import shutil

from mae_cifar import distributed
from mae_cifar.checkpoint import check_model_file, load_checkpoint
from mae_cifar.cli import DATA_KEY, RECORDED_KEYS, UPSTREAM_KEY, UsageError, os_error_hint
from mae_cifar.fileio import TEMP_PREFIX, file_sha256, remove_temp_files, write_json
from mae_cifar.weights import weights_file

CHECKPOINT_FN = "checkpoint.pt"
ARGS_FN = "args.json"
SUMMARY_FN = "summary.json"
LOCK_FN = ".lock"
TENSORBOARD_DIR = "tensorboard"
LOCK_MODE = 0o666  # of a new lock file, before the umask
PID_MAX_CHARS = 16  # a lock file holding more is not a pid
# UPSTREAM_KEY (cli.py): args.json's sha256 of --pretrained_model_path's bytes; the path's
# spelling does not matter, its content does.
HASH_SHOWN = 12  # hex digits of a hash shown in messages
EXTEND_KEY = "extend_to"  # --extend_to N: a finished run continued to N epochs (not compared)
EXTENSIONS_KEY = "extensions"  # summary.json's list of {from_epochs, to_epochs}
# Flags that do not change the numbers a run produces; they may differ on resume (a run
# folder may also be moved or renamed).
NON_RESULT_ARGS = {"overwrite", "compile", "max_device_batch_size", "device", "save_freq",
                   "progress_seconds", "model", "wandb", "output_root", "data_dir", "exp_name",
                   "config",
                   # compared by content: UPSTREAM_KEY
                   "pretrained_model_path",
                   # the kNN monitor (evaluation/knn.py) only observes: training is unchanged
                   "knn_freq", "knn_k", "knn_t", "knn_feature", "knn_train_images",
                   "knn_eval_images"}

# Names of the run folder's own files and folders, refused for output file flags.
RESERVED_NAMES = (ARGS_FN, CHECKPOINT_FN, SUMMARY_FN, LOCK_FN, TENSORBOARD_DIR)
# The files that make a folder a run folder (no other run's output goes there; a lock file
# alone does not: other tools take locks of that name).
RUN_FILES = (ARGS_FN, SUMMARY_FN, CHECKPOINT_FN)


class RunFolder:
    """One stage's output folder and its state: new / unfinished / finished / foreign.

    The state is decided from every file present: a readable args.json (or, if it is gone,
    the flags saved in checkpoint.pt) names the run; summary.json marks it finished, and
    checkpoint.pt makes it resumable. Files that no flags can be found for make the folder
    foreign: it is refused, and only --overwrite deletes anything. While a run writes, it holds
    an fcntl lock on LOCK_FN (released by the kernel when the process dies); only the owner
    removes the file.
    """

    def __init__(self, path, args, is_main=True, defaults=None):
        """defaults: {dest: default} of the stage's flags; a flag missing from a saved
        args.json (one written before the flag existed) counts as its default."""
        self.path, self.args, self.is_main = path, vars(args).copy(), is_main
        self.defaults = defaults or {}
        self.ckpt_path = os.path.join(path, CHECKPOINT_FN)
        self.lock_fd = None
        self.folders = []  # outside folders output files go to (check_output_path)
        self.decided = None  # the status() this process acts on, re-checked under the lock
        self.extensions = []  # summary.json's EXTENSIONS_KEY once --extend_to finishes

    def file(self, name):
        return os.path.join(self.path, name)

    def status(self):
        """'new' (nothing to resume: no files, --overwrite, only a readable args.json of a
        run refused or stopped before writing anything else, whatever its flags, or an
        args.json of the same flags without a checkpoint), 'unfinished' or 'finished';
        refuses changed flags and foreign folders. Reads only."""
        self.decided = self._status()
        return self.decided

    def _status(self):
        self._check_not_nested()
        status = self._flags_status()
        return status if self.args.get(EXTEND_KEY) is None else self._extension_status(status)

    def _flags_status(self):
        if self.args.get("overwrite") or not self._has_run_files():
            return "new"
        saved = self._saved_args()  # a damaged args.json is refused, even alone
        if self._only_args():
            return "new"
        missing = object()
        diff = [f"--{k}: {saved.get(k)!r} (saved) vs {self.args.get(k)!r} (now)"
                for k in sorted(set(saved) | set(self.args))
                if k not in NON_RESULT_ARGS and k not in (*RECORDED_KEYS, EXTEND_KEY)
                and saved.get(k, self.defaults.get(k, missing)) != self.args.get(k)]
        if diff:
            raise UsageError(f"{self.path} holds a run with other flags: " + "; ".join(diff)
                             + ". Use the same flags to resume, another --exp_name, or "
                               "--overwrite")
        self._check_upstream(saved)
        if os.path.exists(self.file(SUMMARY_FN)):
            return "finished"
        return "unfinished" if os.path.exists(self.ckpt_path) else "new"

    def _extension_status(self, status):
        """--extend_to N: 'finished' once the run was extended to N, else 'unfinished' (its
        checkpoint continues); refuses a run that never finished, that stopped early (it
        would stop again at once), or that has trained N epochs or more. Sets
        self.extensions, the list summary.json will hold."""
        n = self.args[EXTEND_KEY]
        if status != "finished":
            what = "no run" if status == "new" else "an unfinished run: finish it first " \
                "(the same command without --extend_to)"
            raise UsageError(f"--extend_to continues a finished run; {self.path} holds {what}")
        try:
            with open(self.file(SUMMARY_FN), encoding="utf-8") as f:
                summary = json.load(f)
            done, extensions = int(summary["epochs"]), list(summary.get(EXTENSIONS_KEY, []))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UsageError(f"{self.file(SUMMARY_FN)} is damaged ({e}); it cannot say how "
                             "far the run went") from None
        if extensions and extensions[-1].get("to_epochs") == n:
            self.extensions = extensions
            return "finished"
        planned = extensions[-1]["to_epochs"] if extensions else self.args["total_epoch"]
        if done < planned:
            raise UsageError(f"--extend_to: {self.path} stopped early after {done} of "
                             f"{planned} epochs ({summary.get('stop_reason', 'early')}); it "
                             "would stop again at once")
        if n <= done:
            raise UsageError(f"--extend_to {n}: {self.path} has trained {done} epochs "
                             "already; give more")
        if not os.path.exists(self.ckpt_path):
            raise UsageError(f"--extend_to needs {self.ckpt_path}, the run's last checkpoint; "
                             "it is gone, so the run cannot continue")
        self.extensions = extensions + [{"from_epochs": done, "to_epochs": n}]
        return "unfinished"

    def summary_record(self):
        """summary.json's entries of the run folder: the extensions, if any."""
        return {EXTENSIONS_KEY: self.extensions} if self.extensions else {}

    def _check_not_nested(self):
        """A run folder is never inside another run's folder, nor holds one (--overwrite of
        the outer run would delete the inner)."""
        outer = run_folder_of(os.path.dirname(os.path.abspath(self.path)))
        if outer is not None:
            raise UsageError(f"{self.path} is inside {outer}, another run's folder; choose an "
                             "--output_root outside run folders")
        inner = inner_run_folder(self.path)
        if inner is not None:
            raise UsageError(f"{self.path} holds another run's folder, {inner}; move that "
                             "run out first, or choose another --exp_name")

    def _has_run_files(self):
        """Anything besides the lock and killed writers' temporary files."""
        try:
            names = os.listdir(self.path)
        except (FileNotFoundError, NotADirectoryError):  # open() says why it cannot write
            return False
        except OSError as e:
            raise UsageError(f"cannot read {self.path}: {e.strerror}") from None
        return any(n != LOCK_FN and not n.startswith(TEMP_PREFIX) for n in names)

    def _only_args(self):
        """Only an args.json: a run refused or stopped before writing anything else, whose
        folder a command with other flags may take (RunFolder.open writes its own)."""
        names = {n for n in os.listdir(self.path)
                 if n != LOCK_FN and not n.startswith(TEMP_PREFIX)}
        return names == {ARGS_FN}

    def wrote(self, key, path):
        """Whether this folder's run (its saved args.json) wrote its --key file at path."""
        try:
            saved = self._saved_args()
        except UsageError:
            return False
        value = saved.get(key)
        return isinstance(value, str) and os.path.abspath(value) == os.path.abspath(path)

    def _saved_args(self):
        """The flags the folder's run was started with: args.json, else checkpoint.pt's."""
        path = self.file(ARGS_FN)
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    saved = json.load(f)
            except (OSError, ValueError, RecursionError) as e:
                raise UsageError(f"{path} is damaged ({e}); restore it, or start again with "
                                 "--overwrite") from None
            if not isinstance(saved, dict):
                raise UsageError(f"{path} is damaged (not a JSON object); restore it, or "
                                 "start again with --overwrite")
            return saved
        if os.path.exists(self.ckpt_path):
            saved = load_checkpoint(self.ckpt_path).get("args")
            if isinstance(saved, dict):
                return saved
        raise UsageError(f"{self.path} holds files of an unknown run (no args.json); use "
                         "another --exp_name, or --overwrite to delete them")

    def _check_upstream(self, saved):
        """A run started from a model file continues only from the same bytes."""
        if UPSTREAM_KEY not in saved:  # a run folder of an older version
            return
        was, now = saved[UPSTREAM_KEY], self.args.get(UPSTREAM_KEY)
        if was != now:
            raise UsageError(
                f"{self.path} was trained from a pretrained model with sha256 "
                f"{str(was)[:HASH_SHOWN]}, but --pretrained_model_path now holds "
                f"{str(now)[:HASH_SHOWN]}; start again with --overwrite (or another "
                "--exp_name)")

    def check_data(self, sha256):
        """A run continues only on the data it started on (DATA_KEY in its args.json; a run
        folder of an older version has none); records sha256 for args.json."""
        if self.decided == "unfinished":
            was = self._saved_args().get(DATA_KEY)
            if was is not None and was != sha256:
                raise UsageError(
                    f"{self.path} was trained on other data (sha256 {str(was)[:HASH_SHOWN]}), "
                    f"but --dataset and --data_dir now give {sha256[:HASH_SHOWN]}; restore "
                    "that data, or start again with --overwrite (or another --exp_name)")
        self.args[DATA_KEY] = sha256

    def open(self, fresh):
        """Create the folder, take the lock, re-check the status under it, empty the folder
        when --overwrite says so, delete temporary files a killed run left, write args.json.
        Rank 0 writes; every rank calls this, after status(): the barriers keep rank 0 from
        emptying the folder while another rank reads it, and the others from going on before
        it is ready."""
        distributed.barrier()
        if self.is_main:
            try:
                self._create(fresh)
            except BaseException:
                self.release()
                raise
        distributed.barrier()

    def _create(self, fresh):
        try:
            os.makedirs(self.path, exist_ok=True)
            self._take_lock()
            for folder in self.folders:
                os.makedirs(folder, exist_ok=True)
            if self.decided is not None and self._status() != self.decided:
                raise UsageError(f"{self.path} changed while this run was starting (another "
                                 "run?); run the command again")
            if fresh and self.args.get("overwrite"):
                self._empty()
            remove_temp_files(self.path)
            write_json(self.file(ARGS_FN), self.args)
        except OSError as e:
            hint = os_error_hint(e, "choose a writable --output_root")
            raise UsageError(f"cannot write to {self.path}: {e.strerror or e}; {hint}") from None

    def _empty(self):
        """Delete everything but the lock (deleting it would let a second run take another)."""
        for entry in os.scandir(self.path):
            if entry.name == LOCK_FN:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.remove(entry.path)

    def _take_lock(self):
        """flock LOCK_FN for this process's life. The lock must still be the file at LOCK_FN
        once held: its owner may have removed it (on release) after we opened it."""
        lock = self.file(LOCK_FN)
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, LOCK_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                who = f"another run (pid {pid})" if pid else "another run"
                raise UsageError(f"{who} is writing to {self.path}; wait for it to finish or "
                                 "stop it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a file its owner removed: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.lock_fd = fd

    def release(self):
        """Only the owner releases: remove the file while still holding it, then unlock."""
        if self.lock_fd is None:
            return
        try:
            os.remove(self.file(LOCK_FN))
        except FileNotFoundError:
            pass
        os.close(self.lock_fd)
        self.lock_fd = None


def _read_pid(fd):
    """The pid a lock file names, or None when it holds something else."""
    text = os.pread(fd, PID_MAX_CHARS, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and len(text) < PID_MAX_CHARS else None


def check_file_names(names):
    """names {flag: file name in the stage folder}: each a plain name, distinct, and not one
    of the run folder's own files; UsageError naming the flag otherwise."""
    seen = {}
    for flag, name in names.items():
        if not name or os.sep in name or name in (".", "..") or name.startswith(TEMP_PREFIX):
            raise UsageError(f"{flag} is a file name in the stage folder, got {name!r}")
        if name in RESERVED_NAMES:
            raise UsageError(f"{flag} {name} would overwrite the run's own {name}; choose "
                             "another name")
        if name in seen:
            raise UsageError(f"{flag} and {seen[name]} both name {name}; choose different "
                             "names")
        seen[name] = flag


def check_output_path(run, flag, key, names):
    """The file path of flag (args key `key`), outside the naming rules of check_file_names:
    refused now, not after training, if it cannot be written, if it is in another run's
    folder, or if it exists and this run folder's run did not write it; its missing folders
    are created when the run opens. names: the stage folder's other output names."""
    path = run.args[key]
    full = os.path.abspath(path)
    folder = os.path.dirname(full)
    if folder == os.path.abspath(run.path):
        check_file_names({**names, flag: os.path.basename(full)})
    if os.path.isdir(full):
        raise UsageError(f"{flag} {path} is a folder; give a file path")
    owner = run_folder_of(folder, run.path)
    if owner is not None:
        raise UsageError(f"{flag} {path} is in {owner}, another run's folder; choose a path "
                         "outside run folders")
    if os.path.lexists(full) and not run.wrote(key, path):
        raise UsageError(f"{flag} {path} exists and this run did not write it; choose "
                         "another path, or move that file")
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot create files under {existing}; choose a "
                         "writable path")
    run.folders.append(folder)


def run_folder_of(folder, own=None):
    """The nearest of folder and its parents (up to the run's own folder `own`, excluded)
    that holds run files (RUN_FILES), or None."""
    folder = os.path.abspath(folder)
    own = own and os.path.abspath(own)
    while True:
        if folder == own:
            return None
        if holds_run_files(folder):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def holds_run_files(folder):
    return any(os.path.lexists(os.path.join(folder, n)) for n in RUN_FILES)


def inner_run_folder(path):
    """The first folder below path (path excluded) that holds run files, or None."""
    for top, dirs, _ in os.walk(path):
        dirs.sort()
        for d in dirs:
            if holds_run_files(os.path.join(top, d)):
                return os.path.join(top, d)
    return None


def upstream_hash(path):
    """The sha256 of a pretrained model file, or of a timm folder's weights (None without
    one), or UsageError."""
    if path is None:
        return None
    path = weights_file(path)
    check_model_file(path)
    try:
        return file_sha256(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None

