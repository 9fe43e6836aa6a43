#!/usr/bin/env bash
# JupyterLab on notebooks/, as `make lab` starts it (after setup); arguments go to
# `jupyter lab` (e.g. --port=8890). Where a plain `jupyter lab` stops or stalls:
#   as root (containers, cloud VMs) Jupyter refuses to start without --allow-root;
#   without a display (ssh, a container, WSL without WSLg) it would try to open a
#   browser, and on Linux Python's webbrowser may pick a text browser in this terminal.
# JupyterLab prints the URL with its token either way ("Or copy and paste one of these
# URLs"); without a display that is the URL to open.
set -euo pipefail
cd "$(dirname "$0")/.."

ARGS=(--notebook-dir=notebooks)
if [ "$(id -u)" -eq 0 ]; then
    echo "lab: running as root (a container or cloud VM?), so JupyterLab starts with --allow-root"
    ARGS+=(--allow-root)
fi
case "$(uname -s)" in
Darwin) [ -z "${SSH_CONNECTION:-}" ] && display=1 || display= ;;
*) [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && display=1 || display= ;;
esac
if [ -z "$display" ]; then
    echo "lab: no display, so no browser: open the http://...lab?token=... URL that JupyterLab prints below"
    ARGS+=(--no-browser)
fi
exec .venv/bin/jupyter lab "${ARGS[@]}" "$@"
