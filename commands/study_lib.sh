# The machinery of a study driver in parts (study.sh); sourced, not run. A part is a shell
# function part_NAME that runs its stages (each skips itself when finished) and adds its
# experiments to PART_EXPS. run_part then brings RESULTS up to date with them:
#   RESULTS/runs/EXP/STAGE/{args.json,metrics.csv,summary.json}   copies of the finished runs
#   RESULTS/environment/NAME_<UTC time>.md                         one per invocation whose
#                                                                  runs changed RESULTS/runs
# What is done follows from what RESULTS lacks, not from what this invocation trained, so a
# rerun after a failed or killed collect (a read-only RESULTS, a kill inside environment)
# finishes the job, and a rerun with nothing new writes nothing. Two invocations never write
# RESULTS at once (results_lock), so one part's runs get one environment record.
# The sourcing driver sets RESULTS, OUTPUT_ROOT and ENV_SETTINGS (the names of the settings
# its environment records list).

# results_lock: wait for, then hold, an exclusive lock on the RESULTS folder on fd 9, until
# results_unlock (or the shell's death: the kernel drops it). flock(2) through python, which
# every machine running the study has (the flock command is not on macOS); the lock belongs to
# the folder opened here, so it outlives the python that took it.
results_lock() {
    mkdir -p "$RESULTS"
    exec 9<"$RESULTS"
    "$PYTHON" -c 'import fcntl, sys
try:
    fcntl.flock(9, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print(f"waiting for another invocation writing to {sys.argv[1]}", file=sys.stderr)
    fcntl.flock(9, fcntl.LOCK_EX)' "$RESULTS"
}
results_unlock() {
    exec 9<&-
}

# pending_file PART: the marker of PART's environment record still to write (its name, its
# finishing time and the wall time of the invocation whose runs it records, one a line).
pending_file() {
    echo "$RESULTS/environment/.pending_$1"
}

# mark_pending PART STARTED: create PART's marker unless there is one (the invocation that
# started at STARTED, in epoch seconds, has finished its runs now); under results_lock.
mark_pending() {
    local marker
    marker=$(pending_file "$1")
    [[ -f "$marker" ]] && return
    mkdir -p "$RESULTS/environment"
    {
        echo "${1}_$(date -u +%Y%m%dT%H%M%SZ).md"
        date -u '+%Y-%m-%d %H:%M UTC'
        awk "BEGIN {printf \"%.1f\\n\", ($(date -u +%s) - $2) / 60}"
    } > "$marker.tmp"
    mv "$marker.tmp" "$marker"
}

# collect PART STARTED EXP...: copy each finished run of EXP... (args.json, metrics.csv,
# summary.json; never checkpoints) to RESULTS/runs/ where RESULTS lacks it or holds another
# version, through a temporary file (none is ever half-written); the first copy marks PART's
# environment record as pending. Idempotent; under results_lock.
collect() {
    local part=$1 started=$2 exp stage file dest
    shift 2
    for exp in "$@"; do
        for stage in "$OUTPUT_ROOT/$exp"/*/; do
            [[ -f "$stage/summary.json" ]] || continue
            dest="$RESULTS/runs/$exp/$(basename "$stage")"
            for file in args.json metrics.csv summary.json; do
                cmp -s "$stage/$file" "$dest/$file" && continue
                mark_pending "$part" "$started"
                mkdir -p "$dest"
                cp "$stage/$file" "$dest/.tmp-$file"
                mv "$dest/.tmp-$file" "$dest/$file"
            done
        done
    done
}

# environment PART EXP...: write PART's pending record (pending_file) to
# RESULTS/environment/<its name>, through <name>.tmp, then drop the marker. A rerun after a
# kill anywhere in here writes the same file again: never two records for one invocation.
# Never edited after. Under results_lock.
environment() {
    local part=$1 marker name finished minutes file setting settings=""
    shift
    marker=$(pending_file "$part")
    { read -r name; read -r finished; read -r minutes; } < "$marker"
    file="$RESULTS/environment/$name"
    for setting in "${ENV_SETTINGS[@]}"; do
        settings+="$setting=${!setting:-}, "
    done
    {
        echo "# Environment of one invocation of part \`$part\`"
        echo
        echo "- command: \`PART=$part bash commands/study.sh\` (${settings%, })"
        echo "- finished: $finished; wall time of the invocation that finished it: $minutes min"
        "$PYTHON" -c 'import glob, json, sys
paths = [p for exp in sys.argv[2:]  # the names as they are, never as glob patterns
         for p in glob.glob(f"{glob.escape(sys.argv[1])}/{glob.escape(exp)}/*/summary.json")]
total = sum(json.load(open(p)).get("wall_seconds", 0) + json.load(open(p)).get(
    "feature_seconds", 0) for p in paths)
print(f"- training + feature time summed over {len(paths)} runs: {total / 60:.1f} min")' \
            "$OUTPUT_ROOT" "$@"
        echo "- machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 |
             xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load average at the end:" \
             "$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "- git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)" \
             "$(git diff --quiet HEAD 2>/dev/null || echo '(with uncommitted changes)')"
        "$PYTHON" -c 'import platform, torch, torchvision, timm, numpy, pandas
print(f"- python {platform.python_version()}, torch {torch.__version__}, torchvision "
      f"{torchvision.__version__}, timm {timm.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}")'
    } > "$file.tmp"
    mv "$file.tmp" "$file"
    rm "$marker"
    echo "part $part: environment recorded in $file"
}

# run_part NAME: part_NAME, then (under results_lock) its runs collected into RESULTS, and
# its environment record written if one is pending; temporary files a killed collect or
# environment left are removed first.
run_part() {
    local started
    started=$(date -u +%s)
    PART_EXPS=()  # filled by part_NAME: every experiment of the part, trained now or before
    echo "=== part $1"
    "part_$1"
    results_lock
    rm -f "$RESULTS/environment/$1"_*.md.tmp "$(pending_file "$1").tmp"
    collect "$1" "$started" ${PART_EXPS[@]+"${PART_EXPS[@]}"}
    if [[ -f "$(pending_file "$1")" ]]; then
        environment "$1" ${PART_EXPS[@]+"${PART_EXPS[@]}"}
    else
        echo "part $1: $RESULTS already holds its runs and environment; left as they are"
    fi
    results_unlock
}
