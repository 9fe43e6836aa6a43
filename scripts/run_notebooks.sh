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

MAX_LOAD="${LLMOPS_MAX_LOAD:-0.5}"
load="$(cut -d' ' -f1 /proc/loadavg)"
if awk -v l="$load" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
    echo "run_notebooks: the 1-minute load average is $load (above $MAX_LOAD): another" \
        "program is using the CPU and the notebooks' timings would show it. Wait until the" \
        "machine is idle (see uptime/top), or set LLMOPS_MAX_LOAD to override." >&2
    exit 1
fi

[ "$#" -gt 0 ] || set -- notebooks/[0-9][0-9]_*.ipynb
for nb in "$@"; do
    echo "== $(basename "$nb") (load average $(cut -d' ' -f1 /proc/loadavg))"
    start=$SECONDS
    # Run from notebooks/ so results/ lands in notebooks/results/, as on a reader's machine.
    (cd "$(dirname "$nb")" && LLMOPS_PROFILE=tiny "$OLDPWD/.venv/bin/jupyter" nbconvert \
        --to notebook --execute --inplace --log-level=WARN \
        --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=python3 \
        --NotebookExporter.preprocessors=nbconvert.preprocessors.CoalesceStreamsPreprocessor \
        "$(basename "$nb")")
    echo "   done in $((SECONDS - start)) s"
done
