#!/usr/bin/env bash
# Execute the notebooks in order, each in a fresh kernel, one at a time, and store their
# outputs in place: the only way the committed outputs are made (`make notebooks`).
# Timings in those outputs are what readers see, so it refuses to start on a busy machine.
# Streamed text (a reply printed token by token) is stored as one block per cell, not one
# output per token (GitHub would show one line per token).
#   scripts/run_notebooks.sh                      every notebook
#   scripts/run_notebooks.sh notebooks/05_*.ipynb  some of them
set -euo pipefail
cd "$(dirname "$0")/.."

# Other programs' CPU use right now (a 2 s sample, in cores), not the 1-minute load average,
# which still counts the previous notebook for a minute after it ended.
MAX_BUSY="${LLMOPS_MAX_BUSY:-0.5}"
busy() { .venv/bin/python -c 'from llmops_lib.core.hardware import busy_cores; print(f"{busy_cores(2.0):.2f}")'; }
now="$(busy)"
if awk -v b="$now" -v m="$MAX_BUSY" 'BEGIN { exit !(b > m) }'; then
    echo "run_notebooks: other programs use $now cores right now (above $MAX_BUSY): the" \
        "notebooks' timings would show it. Wait until the machine is idle (see top), or set" \
        "LLMOPS_MAX_BUSY to override." >&2
    exit 1
fi

# 00 (the course map, with each notebook's stored run time) and 99 (the wrap-up, from the
# results files) read the other notebooks' runs: they go last, so they read the final ones.
if [ "$#" -eq 0 ]; then
    set -- $(ls notebooks/[0-9][0-9]_*.ipynb | grep -v -E '/(00|99)_') notebooks/00_*.ipynb notebooks/99_*.ipynb
fi
for nb in "$@"; do
    echo "== $(basename "$nb") (other programs: $(busy) cores busy)"
    start=$SECONDS
    # Run from notebooks/ so results/ lands in notebooks/results/, as on a reader's machine.
    (cd "$(dirname "$nb")" && LLMOPS_PROFILE=tiny "$OLDPWD/.venv/bin/jupyter" nbconvert \
        --to notebook --execute --inplace --log-level=WARN \
        --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=python3 \
        --NotebookExporter.preprocessors=nbconvert.preprocessors.CoalesceStreamsPreprocessor \
        "$(basename "$nb")")
    echo "   done in $((SECONDS - start)) s"
done
