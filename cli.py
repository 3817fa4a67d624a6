"""The command line every script shares, importing no torch (report.py uses it): the one-line
error a bad input gives, --help's layout, --config replay of an args.json, and the argparse
types of the flags."""
import argparse
import errno
import json
import math
import sys


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


def finite_float(s):
    v = float(s)
    if not math.isfinite(v):
        raise ValueError
    return v


finite_float.__name__ = "finite number"

SEED_LIMIT = 2 ** 32  # seeds are in [0, 2**32), as NumPy takes them


def seed_int(s):
    v = int(s)
    if not 0 <= v < SEED_LIMIT:
        raise ValueError
    return v


seed_int.__name__ = f"integer in [0, {SEED_LIMIT})"
