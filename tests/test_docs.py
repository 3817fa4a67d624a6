"""Every command the docs show runs: the README (top to bottom) and docs/*.md code blocks, the
example commands of each script's --help, the commands in the drivers' header comments, and the
seed README's own command lines.

The command text is run as written, by bash, in a sandbox folder that links to the repository
(so `outputs/` is the sandbox's). Stand-ins on PATH record each `python` / `torchrun` launch;
the recorded launches then run for real, in order, in one interpreter (conftest.run_scripts),
with tiny sizes appended where the command names no --dataset (or --config) of its own (flags
given last win).
A launch made by a driver (`bash commands/*.sh`) is parsed by its script's parser instead,
except for the seed's main experiment, whose drivers run for real with tiny sizes appended; the
quick start runs for real in test_commands.py. `pip install -r` checks that the installed
packages satisfy the requirements (no network); `python -m pytest` (this suite) is not rerun.
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, THREAD_ENV, TINY_DATA, TINY_ENCODER, TINY_MAE, run_scripts
from test_commands import parse

pytestmark = pytest.mark.usefixtures("one_thread")
# the seed README's command blocks, committed (the README itself is not in this repository)
SEED_README = Path(__file__).parent / "data" / "seed_readme_bash_blocks.md"
DOCS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
# The seed README's command lines (its bash blocks but the conda one), in its order.
SEED_COMMANDS = [
    "bash commands/mae_pretrain.sh", "bash commands/mae_pretrain_150.sh",
    "bash commands/scratch_cls.sh", "bash commands/scratch_cls_50.sh",
    "bash commands/pretrain_cls.sh", "bash commands/pretrain_cls_50.sh",
    "bash visualize_pred.sh",
    "bash commands/mae_pretrain_depth.sh", "bash commands/ft_depth.sh",
    "bash commands/ft_default_d4_w192.sh", "bash commands/lin_depth.sh",
    "bash commands/lin_default_d4_w192.sh",
    "bash commands/mae_pretrain_width.sh", "bash commands/ft_width.sh",
    "bash commands/lin_width.sh",
]
HELP_SCRIPTS = ("mae_pretrain.py", "train_classifier.py", "visualize_pred.py", "export.py")
SKIP_LINKS = {".git", "outputs", "data", ".pytest_cache", "__pycache__"}
COPIED = {"results"}
EPOCH = ["--total_epoch", "1", "--warmup_epoch", "0"]
GENERATED = ("fake", "shapes")  # datasets made offline; a doc's command on another runs tiny
TINY = {  # script -> sizes appended to a launch that names no --dataset (or to every driver's)
    "mae_pretrain.py": [*TINY_DATA, *TINY_MAE, *EPOCH, "--knn_freq", "0"],
    "train_classifier.py": [*TINY_DATA, *EPOCH],
    "visualize_pred.py": ["--dataset", "fake", "--device", "cpu", "--image_size", "16",
                          "--max_eval_images", "32"],
}
# One launch per line: DIRECT (1 in a doc's own command, 0 in a driver's), then its argv.
RECORDER = """#!/usr/bin/env bash
if [ "$(basename "$0")" = python ] && [ "${1:-}" = -m ] && [ "${2:-}" = pytest ]; then
    echo "not rerun: the test suite itself"; exit 0
fi
printf '%s\\0' "${DOC_DIRECT:-1}" "$(basename "$0")" "$@" >> "$QUEUE"
echo >> "$QUEUE"
"""
PIP = """#!/usr/bin/env bash
[ "$1" = install ] && [ "$2" = -r ] || { echo "unexpected pip command: $*" >&2; exit 1; }
exec "$REAL_PYTHON" "$CHECK_REQUIREMENTS" "$3"
"""
CHECK_REQUIREMENTS = """import sys
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
bad = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        req = Requirement(line)
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                bad.append(f"{req} (installed {version(req.name)})")
        except PackageNotFoundError:
            bad.append(f"{req} (not installed)")
sys.exit("requirements not satisfied: " + "; ".join(bad) if bad else 0)
"""
# In a doc's bash block, `bash` runs a driver with DOC_DIRECT=0 (its launches are a driver's).
PRELUDE = "set -eo pipefail\nbash() { DOC_DIRECT=0 command bash \"$@\"; }\n"


def code_blocks(text, lang):
    """Fenced blocks of one language, also those indented under a list item."""
    return [textwrap.dedent(b) for b in
            re.findall(rf"^[ \t]*```{lang}\n(.*?)^[ \t]*```", text, flags=re.S | re.M)]


def help_examples(script):
    """The example command lines at the top of a script's --help (continuations joined)."""
    module = __import__(script.removesuffix(".py"))
    text = module.get_args_parser().description.replace("\\\n", " ")
    return [line.strip() for line in text.splitlines()
            if line.strip().startswith(f"python {script}")]


def driver_header_commands():
    """`[VAR=value ...] bash commands/X.sh [--flag value ...]` in the drivers' comments."""
    pattern = re.compile(r"((?:[A-Z_]+=\S+ )*bash commands/\w+\.sh(?: --[\w-]+(?: [\w.\-]+)?)*)")
    found = []
    for path in sorted((REPO / "commands").glob("*.sh")):
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                found += pattern.findall(line)
    return found


class Sandbox:
    """A folder linking to the repository's files, with recording stand-ins on PATH."""

    def __init__(self, path):
        self.path, self.bin, self.queue = path, path / ".bin", path / ".queue"
        for entry in REPO.iterdir():
            if entry.name in COPIED:  # folders a driver may write into: copies, not links
                shutil.copytree(entry, path / entry.name)
            elif entry.name not in SKIP_LINKS:
                (path / entry.name).symlink_to(entry)
        self.bin.mkdir()
        for name in ("python", "torchrun", "srun"):
            (self.bin / name).write_text(RECORDER)
        (self.bin / "pip").write_text(PIP)
        for f in self.bin.iterdir():
            f.chmod(0o755)
        (path / ".check_requirements.py").write_text(CHECK_REQUIREMENTS)
        self.snippets = 0

    def bash(self, script, **env):
        """Run script (bash text) in the sandbox -> (returncode, output); launches queue up."""
        full_env = {k: v for k, v in os.environ.items() if k not in ("DATASET", "EXP", "NPROC")}
        full_env.update(THREAD_ENV, PATH=f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                        QUEUE=str(self.queue), REAL_PYTHON=sys.executable,
                        CHECK_REQUIREMENTS=str(self.path / ".check_requirements.py"),
                        MASTER_ADDR="node1",  # the docs ask users to set it
                        JOBS="1",  # study.sh's arms one at a time: launches queue up whole
                        **env)
        proc = subprocess.run(["bash", "-c", PRELUDE + script], cwd=self.path, env=full_env,
                              capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr

    def python_block(self, code):
        """A ```python block: saved as a file and queued like a direct `python file.py`."""
        self.snippets += 1
        name = f"snippet_{self.snippets}.py"
        (self.path / name).write_text(code)
        with open(self.queue, "a") as f:
            f.write("\0".join(["1", "python", name]) + "\0\n")

    def take_launches(self):
        text = self.queue.read_text() if self.queue.exists() else ""
        self.queue.unlink(missing_ok=True)
        return [line.split("\0") for line in text.split("\0\n")[:-1]]


def offline(argv):
    """argv without a real dataset (the suite runs offline): its --dataset and --data_dir
    dropped, so that the tiny generated sizes are appended instead."""
    if "--dataset" not in argv or argv[argv.index("--dataset") + 1] in GENERATED:
        return argv
    out = list(argv)
    for flag in ("--dataset", "--data_dir"):
        if flag in out:
            del out[out.index(flag):out.index(flag) + 2]
    return out


def tiny(argv, always=False):
    """argv with the script's tiny sizes appended unless it names its own generated
    --dataset (a real one is replaced by them)."""
    argv = offline(argv)
    script = argv[0]
    own = "--dataset" in argv or "--config" in argv  # sizes as written, or a replayed run's
    if script not in TINY or (own and not always):
        return argv
    extra = list(TINY[script])
    if script == "train_classifier.py" and not any(
            a in argv for a in ("--pretrained_model_path", "--mae_ckpt", "--pretrained_ckpt")):
        extra += TINY_ENCODER
    return [*argv, *extra]


def run_launches(sandbox, launches, execute_drivers=False):
    """Run the direct launches (and a driver's, with execute_drivers) for real, in order;
    parse the others. -> [(argv, CompletedProcess or None)]"""
    todo = []
    for direct, launcher, *argv in launches:
        script = next((a for a in argv if a.endswith(".py")), None)
        if launcher != "python" or direct == "0" and not execute_drivers:
            if script is not None and not script.startswith("snippet_"):
                parse(script, argv[argv.index(script) + 1:])  # fails the test if refused
            continue
        todo.append(tiny(argv, always=direct == "0"))
    results = run_scripts(todo, cwd=sandbox.path) if todo else []
    for argv, r in zip(todo, results):
        assert r.returncode == 0, f"{shlex.join(map(str, argv))} failed:\n" \
                                  f"{r.stdout[-1500:]}{r.stderr[-3000:]}"
    return list(zip(todo, results))


@pytest.fixture(scope="module")
def docs_run(tmp_path_factory):
    """README then docs/*.md, then the scripts' --help examples, in one sandbox."""
    sandbox = Sandbox(tmp_path_factory.mktemp("docs"))
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for block in re.findall(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M):
            lang, code = block
            if lang == "python":
                sandbox.python_block(code)
                continue
            rc, out = sandbox.bash(code)
            assert rc == 0, f"{doc}: this block failed:\n{code}\n{out[-3000:]}"
    readme = run_launches(sandbox, sandbox.take_launches())
    for script in HELP_SCRIPTS:
        for line in help_examples(script):
            rc, out = sandbox.bash(line.split(" #")[0])
            assert rc == 0, f"{script} --help example {line!r}: {out}"
    helps = run_launches(sandbox, sandbox.take_launches())
    return sandbox, readme, helps


def test_readme_and_docs_commands_run(docs_run):
    sandbox, readme, _ = docs_run
    scripts = [argv[0] for argv, _ in readme]
    for needed in ("mae_pretrain.py", "train_classifier.py", "visualize_pred.py", "report.py",
                   "export.py", "snippet_1.py"):
        assert needed in scripts, f"the README runs no {needed}"
    out = sandbox.path / "outputs"
    assert (out / "smoke" / "mae-pretrain" / "summary.json").is_file()  # as written, no sizes
    assert (out / "smoke_again" / "mae-pretrain" / "summary.json").is_file()  # --config replay
    smoke, again = (json.loads((out / e / "mae-pretrain" / "args.json").read_text())
                    for e in ("smoke", "smoke_again"))
    assert {k for k in smoke.keys() | again.keys() if smoke.get(k) != again.get(k)} == \
        {"exp_name", "config"}
    for stage in ("scratch-cls", "pretrain-cls", "pretrain-cls-lin", "scratch-cls-lin"):
        assert (out / "main_exp" / stage / "summary.json").is_file(), stage
    assert (out / "main_exp" / "mae-pretrain" / "vit-t-mae-timm" / "config.json").is_file()


def test_help_examples_run(docs_run):
    _, _, helps = docs_run
    for script in HELP_SCRIPTS:
        assert help_examples(script), f"{script} --help shows no example"
        # a continuation that lost its backslash prints as a run of spaces inside a command
        text = __import__(script.removesuffix(".py")).get_args_parser().format_help()
        assert not re.search(r"\S {4,}--", text.split("\noptions:")[0]), script
    assert {argv[0] for argv, _ in helps} == set(HELP_SCRIPTS)


def test_readme_is_short_and_keeps_the_flag_reference_in_help():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) < 16_000
    assert "## All flags" not in text and "usage: " not in text
    assert "Python >= 3.11" in text and "Jay Chiehen Liao" in text


STUDY_SECTION = re.compile(r"^## What the CPU study shows\n(.*?)^## ", re.S | re.M)
NUMBER = re.compile(r"\d+(?:\.\d+)?")
NOT_QUOTED = re.compile(r"```.*?```|`[^`]*`|\]\([^)]*\)|\bissues? \d+(?: and \d+)?|\bv\d+\b",
                        re.S)  # code, link targets, issue numbers and study versions


def test_readme_study_numbers_come_from_results_md():
    """Every number the README's study section quotes is in a results.md it links to
    (report.py writes every difference, interval and plateau statement there)."""
    section = STUDY_SECTION.search((REPO / "README.md").read_text())[1]
    links = set(re.findall(r"\]\(([^)]*results\.md)\)", section))
    assert links, "the study section links no results.md"
    shown = {n for link in links for n in NUMBER.findall((REPO / link).read_text())}
    quoted = NUMBER.findall(NOT_QUOTED.sub(" ", section))
    assert quoted, "the study section quotes no number"
    missing = sorted(set(quoted) - shown, key=float)
    assert not missing, f"README numbers not in {sorted(links)}: {missing}"


def test_driver_header_commands_run(tmp_path):
    sandbox = Sandbox(tmp_path)
    commands = driver_header_commands()
    assert len(commands) >= 15 and any("NPROC=4" in c for c in commands)
    for command in commands:
        rc, out = sandbox.bash(command)
        assert rc == 0, f"{command}: {out[-2000:]}"
    run_launches(sandbox, sandbox.take_launches())  # every launch parses


def test_seed_command_list_matches_the_seed_readme():
    blocks = [b for b in code_blocks(SEED_README.read_text(), "bash") if "conda" not in b]
    assert [line.strip() for b in blocks for line in b.splitlines() if line.strip()] == \
        SEED_COMMANDS


def test_seed_readme_commands_work(tmp_path):
    """The seed's own lines. The main experiment's drivers (600/100 epochs) run for real, tiny
    sizes appended to each launch, through `bash visualize_pred.sh` from the root; the others
    (the 150/50 versions and the ablations: the same scripts with other flags) are recorded and
    parsed. The conda block is not run (no conda here); `pip install -r` is, in the README."""
    sandbox = Sandbox(tmp_path)
    main = [line for line in SEED_COMMANDS if line == "bash visualize_pred.sh"
            or re.search(r"/(mae_pretrain|scratch_cls|pretrain_cls)\.sh$", line)]
    for line in main:
        rc, out = sandbox.bash(line)
        assert rc == 0, f"{line}: {out[-2000:]}"
    ran = run_launches(sandbox, sandbox.take_launches(), execute_drivers=True)
    assert [a[0] for a, _ in ran] == ["mae_pretrain.py", "train_classifier.py",
                                      "train_classifier.py", "visualize_pred.py"]
    assert (tmp_path / "outputs" / "main_exp" / "visualize" / "predictions.png").is_file()
    for line in (line for line in SEED_COMMANDS if line not in main):
        rc, out = sandbox.bash(line)
        assert rc == 0, f"{line}: {out[-2000:]}"
    assert len(run_launches(sandbox, sandbox.take_launches())) == 0  # parsed, none run


def test_notebook_finds_the_quickstart_runs(tmp_path, monkeypatch):
    """Without OUTPUTS_ROOT the notebook's first cell finds outputs/quickstart's runs."""
    nbformat = pytest.importorskip("nbformat")
    cell = next(c for c in nbformat.read(REPO / "metrics.ipynb", as_version=4).cells
                if c.cell_type == "code")
    code = "\n".join(line for line in cell.source.splitlines()
                     if not line.startswith("%") and "IPython" not in line)
    for exp in ("quickstart/quickstart", "main_exp"):
        stage = tmp_path / "outputs" / exp / "mae-pretrain"
        stage.mkdir(parents=True)
        (stage / "args.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OUTPUTS_ROOT", raising=False)
    scope = {}
    exec(code, scope)
    assert scope["roots"] == ["outputs", "outputs/quickstart"]
    assert sorted(scope["runs"]["exp"]) == ["main_exp", "quickstart"]
