"""The command line every script shares, importing no torch (report.py uses it): the one-line
error a bad input gives, --help's layout, --config replay of an args.json, and the argparse
types of the flags."""
import argparse
import errno
import json
import math
import os
import sys


class UsageError(Exception):
    """Bad input: the scripts print the message on one line and exit with code 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter,
                    argparse.RawDescriptionHelpFormatter):
    """--help keeps the description's layout (its example commands) and shows every default."""


CONFIG_FLAG = "--config"
# Flags that act on a run folder instead of describing a run: a --config never replays them
# (X's "overwrite": true replayed into Y would empty Y).
ACTION_KEYS = ("config", "overwrite")
# args.json key of a classifier's upstream: the sha256 of --pretrained_model_path's bytes
# (None from scratch). A run records it beside its flags and computes it again on replay.
UPSTREAM_KEY = "pretrained_sha256"
# args.json key of the data a run trained on (datasets.data_sha256): resumed only on the same
DATA_KEY = "data_sha256"
RECORDED_KEYS = (UPSTREAM_KEY, DATA_KEY)


class DeprecatedFlag(argparse.Action):
    """An old flag name that still works in a script where another script gives the same name
    another meaning: it stores its value as the flag it stands for does (dest) and prints
    `note`, one `note: ...` line saying which flag it is."""

    def __init__(self, option_strings, dest, note, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.note = note

    def __call__(self, parser, namespace, values, option_string=None):
        if launch_rank() == 0:
            print(self.note)
        setattr(namespace, self.dest, values)


def add_config_arg(parser):
    parser.add_argument(CONFIG_FLAG, default=None, metavar="ARGS_JSON",
                        help="replay a run: the values in this args.json (a run folder's) "
                             "become the defaults, checked as flags are; flags given on the "
                             "command line override them, and a --recipe given there "
                             "re-resolves the recipe's settings. --overwrite is never "
                             "replayed")


def follows(parser, dest, keys):
    """Declare that the flags `keys` follow --dest: when a command line with --config also
    gives --dest, the file's values of `keys` are not replayed (the stage resolves them from
    --dest again, unless they too are on the command line)."""
    parser.follows = {**getattr(parser, "follows", {}), dest: set(keys)}


def parse_args(parser, argv=None):
    """Parse argv; with --config FILE, FILE's values are the defaults (two passes), so flags
    on the command line win wherever they stand. UsageError for an unreadable file, a key
    the parser does not know, or a value its flag would refuse."""
    followed = getattr(parser, "follows", {})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(CONFIG_FLAG, default=None)
    for dest in followed:
        pre.add_argument("--" + dest, default=None)
    given = pre.parse_known_args(argv)[0]
    if given.config is not None:
        values = read_config(parser, given.config)
        for dest, keys in followed.items():
            if getattr(given, dest) is not None:
                values = {k: v for k, v in values.items() if k not in keys}
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def read_config(parser, path):
    """{dest: value} of an args.json, each value checked and converted as its flag's
    command-line value is (type, choices, number of values); without ACTION_KEYS and
    RECORDED_KEYS."""
    values = _load_config(path)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    unknown = sorted(set(values) - set(actions) - set(RECORDED_KEYS))
    if unknown:
        raise UsageError(f"{CONFIG_FLAG} {path}: unknown keys {', '.join(unknown)} (is it "
                         f"an args.json of {parser.prog}?)")
    if values.get("overwrite") and launch_rank() == 0:
        print(f"note: --config {path} says overwrite; it is not replayed (give "
              "--overwrite on the command line to train again)")
    return {k: _config_value(actions[k], v, path) for k, v in values.items()
            if k not in ACTION_KEYS and k not in RECORDED_KEYS}


def _load_config(path):
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{CONFIG_FLAG} {path}: cannot read it as JSON: "
                         f"{getattr(e, 'strerror', None) or e}") from None
    except RecursionError:
        raise UsageError(f"{CONFIG_FLAG} {path}: cannot read it as JSON: nested deeper than "
                         "an args.json ever is") from None
    if not isinstance(values, dict):
        raise UsageError(f"{CONFIG_FLAG} {path}: expected a JSON object of flag values, got "
                         f"{type(values).__name__}")
    return values


def _config_value(action, value, path):
    """value of a --config for `action`, as the parser would take it from a command line."""
    try:
        return _convert(action, value)
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise UsageError(f"{CONFIG_FLAG} {path}: {action.dest} {json.dumps(value)} is not a "
                         f"valid {action.option_strings[0]} (expected {_expected(action)})"
                         ) from None


def _convert(action, value):
    if value is None and action.default is None:
        return None
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):  # store_true and --x/--no-x flags
            raise TypeError
        return value
    if action.nargs in (None, "?"):
        return _convert_one(action, value)
    if not isinstance(value, list) or not value and action.nargs == "+" or \
            isinstance(action.nargs, int) and len(value) != action.nargs:
        raise TypeError
    return [_convert_one(action, v) for v in value]


def _convert_one(action, value):
    if isinstance(value, (bool, list, dict)) or value is None:
        raise TypeError
    if action.type is None:
        if not isinstance(value, str):
            raise TypeError
        v = value
    else:
        v = action.type(value if isinstance(value, str) else repr(value))
    if action.choices is not None and v not in action.choices:
        raise ValueError
    return v


def _expected(action):
    """What a flag's value must be, for a message."""
    if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
        return "true or false"
    if action.choices is not None:
        one = f"one of {', '.join(map(str, action.choices))}"
    else:
        one = getattr(action.type, "__name__", "a value") if action.type else "a string"
    if action.nargs in (None, "?"):
        return one
    count = action.nargs if isinstance(action.nargs, int) else "one or more"
    return f"a list of {count} values, each {one}"


def launch_rank():
    """This process's rank as torchrun sets it (0 without torchrun). The launcher's RANK and
    WORLD_SIZE are read here and nowhere else (distributed.setup too), before any process
    group exists: messages printed before it print once."""
    return int(os.environ.get("RANK", "0"))


def launch_world_size():
    """The number of processes torchrun launched (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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


# --------------------------------------------------------------------------- flag types
def positive_int(s):
    v = int(s)
    if v <= 0:
        raise ValueError
    return v


positive_int.__name__ = "positive integer"


def non_negative_int(s):
    v = int(s)
    if v < 0:
        raise ValueError
    return v


non_negative_int.__name__ = "non-negative integer"


def positive_float(s):
    v = float(s)
    if not v > 0 or not math.isfinite(v):
        raise ValueError
    return v


positive_float.__name__ = "positive number"


def non_negative_float(s):
    v = float(s)
    if not v >= 0 or not math.isfinite(v):
        raise ValueError
    return v


non_negative_float.__name__ = "non-negative number"


def finite_float(s):
    v = float(s)
    if not math.isfinite(v):
        raise ValueError
    return v


finite_float.__name__ = "finite number"

# The largest float32: a learning rate or weight decay beyond it overflows the optimizer's
# float32 arithmetic ("value cannot be converted to type float without overflow").
FLOAT32_MAX = 3.4028234663852886e38


SEED_LIMIT = 2 ** 32  # seeds are in [0, 2**32), as NumPy takes them


def seed_int(s):
    v = int(s)
    if not 0 <= v < SEED_LIMIT:
        raise ValueError
    return v


seed_int.__name__ = f"integer in [0, {SEED_LIMIT})"
