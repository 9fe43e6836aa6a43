#!/usr/bin/env bash
# Build the service image and, with `test`, run tests/test_service.py against the container.
#
#   scripts/test_image.sh build   # what `make image` runs
#   scripts/test_image.sh test    # what `make test-image` (and .ci/run) runs
#
# The engine is whatever `docker info` reaches; otherwise, as root on Debian, this installs
# Debian's docker.io and starts a daemon of its own (stopped at the end, by its pid). The base
# image is $BASE, else python:3.12-slim if the engine has or can pull it, else one made from
# Debian's packages with debootstrap + docker import. `test` never fails for want of an engine
# or a base image: it says why it skips and exits 0. Once the image is built, a failing test
# fails. Everything is bounded by TEST_IMAGE_BUDGET_S (default 600 s); the container is
# reached over loopback only (--network host, bound to 127.0.0.1), and runs under the 4 GB of
# RAM the service is meant for (TEST_IMAGE_MEMORY). A passing `test` writes the image size
# and the container's peak memory to notebooks/results/test-image-<time>.json (atomically,
# through llmops_lib.core.results), which notebook 10 prints.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-test}"
TAG="${IMAGE:-llmops-service}"
PYTHON="${PYTHON:-.venv/bin/python}"
BUDGET_S="${TEST_IMAGE_BUDGET_S:-600}"
TESTS_S=180  # kept back from the budget for the container's tests
CACHE="${LLMOPS_CACHE:-$HOME/.cache/llmops}"
RUN_DIR="$(mktemp -d -t llmops-image-XXXXXX)"
CONTEXT=docker/context
DOCKERD_PID=""
CONTAINER=""
MEMORY="${TEST_IMAGE_MEMORY:-4g}"  # the RAM the service is meant to run in
RESULTS="${LLMOPS_RESULTS:-notebooks/results}"  # where notebook 10 reads the record
export DOCKER_BUILDKIT=0  # the classic builder ships with the engine; buildx may not

say() { echo "[test-image $((SECONDS))s] $*"; }
left() { local s=$((BUDGET_S - SECONDS)); echo $((s > 1 ? s : 1)); }  # timeout 0 = none

skip() {
    # An environment that cannot build images is not a failure of the project.
    if [ "$MODE" = test ]; then
        say "SKIPPED: $*"
        say "The image was not built, so its tests did not run; nothing failed."
        exit 0
    fi
    say "ERROR: $*"
    exit 1
}

cleanup() {
    if [ -n "$CONTAINER" ]; then docker rm -f "$CONTAINER" >/dev/null 2>&1 || true; fi
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        kill -TERM "$DOCKERD_PID" 2>/dev/null || true
        for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$DOCKERD_PID" 2>/dev/null || true
    fi
    # dockerd leaves its network namespace mounted in its exec root.
    awk -v dir="$RUN_DIR/" 'index($2, dir) == 1 {print $2}' /proc/mounts | sort -r \
        | while read -r mounted; do umount "$mounted" 2>/dev/null || true; done
    rm -rf "$RUN_DIR" "$CONTEXT"
}
trap cleanup EXIT

as_root_with_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_install() {  # apt_install PACKAGE...: Debian's packages, bounded in time
    as_root_with_apt || return 1
    say "installing $* from Debian's packages"
    { timeout "$(left)" apt-get install -y -q --no-install-recommends "$@" \
        || { timeout "$(left)" apt-get update -q && timeout "$(left)" apt-get install -y -q \
            --no-install-recommends "$@"; }; } >"$RUN_DIR/apt.log" 2>&1
}

ensure_engine() {
    if docker info >/dev/null 2>&1; then say "using the running engine"; return; fi
    if ! command -v dockerd >/dev/null 2>&1; then
        apt_install docker.io || skip "no container engine: dockerd is not installed and" \
            "Debian's docker.io could not be installed here (root and apt-get needed)."
    fi
    command -v docker >/dev/null 2>&1 || skip "docker.io installed no docker client."
    as_root_with_apt || skip "dockerd is installed but not running, and starting it needs root."
    # A daemon of our own on a private socket; its data root persists so that the base image
    # and the layers of pip installs are reused by the next run.
    mkdir -p "$CACHE/docker"
    export DOCKER_HOST="unix://$RUN_DIR/docker.sock"
    dockerd --host "$DOCKER_HOST" --data-root "$CACHE/docker" --exec-root "$RUN_DIR/exec" \
        --pidfile "$RUN_DIR/docker.pid" >"$RUN_DIR/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && { say "started dockerd (pid $DOCKERD_PID)"; return; }
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.5
    done
    skip "dockerd did not start; its log ends with: $(tail -n 5 "$RUN_DIR/dockerd.log")"
}

base_image() {
    if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
    if docker image inspect python:3.12-slim >/dev/null 2>&1 \
        || timeout 60 docker pull -q python:3.12-slim >/dev/null 2>&1; then
        echo python:3.12-slim; return
    fi
    # No registry serves base images: make one from Debian's packages, the host's release
    # (the host-built llama.cpp wheel needs a C library at least as new as the host's).
    local codename name root
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    name="llmops-base:$codename"
    if docker image inspect "$name" >/dev/null 2>&1; then echo "$name"; return; fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap >&2 || return 1
    root="$RUN_DIR/rootfs"
    say "making $name with debootstrap (once; it stays in the engine's cache)" >&2
    timeout "$(left)" debootstrap --variant=minbase \
        --include=python3,python3-venv,libgomp1,libstdc++6,ca-certificates \
        "$codename" "$root" >"$RUN_DIR/debootstrap.log" 2>&1 || return 1
    tar -C "$root" -c . | docker import - "$name" >/dev/null || return 1
    echo "$name"
}

host_wheel() {
    # The llama-cpp-python wheel this machine already compiled, so the image does not
    # compile llama.cpp again: the llama-tools cache first (the portable build, else the
    # machine's default one), then pip's wheel cache. CPU builds only: a CUDA build would
    # need the CUDA runtime in the image.
    local native
    native="$(LLMOPS_CACHE="$CACHE" LLMOPS_LLAMA_BACKEND=cpu llmops_lib/data/build_llama_tools.sh --print-wheel 2>/dev/null || true)"
    "$PYTHON" - "$CACHE" "$HOME/.cache/pip/wheels" "$native" <<'PY'
import re, sys, zipfile
from pathlib import Path

pins = Path("constraints.txt").read_text()
version = re.search(r"^llama[-_]cpp[-_]python==(\S+)", pins, re.I | re.M).group(1)
places = [Path(sys.argv[1]) / "llama-tools" / f"{version}-cpu-x86-64-v3" / "wheel"]
places += [Path(sys.argv[3]).parent] if sys.argv[3] else []
places.append(Path(sys.argv[2]))
for place in places:
    for wheel in sorted(place.rglob(f"llama_cpp_python-{version}-*.whl")):
        if not any("libggml-cuda" in name for name in zipfile.ZipFile(wheel).namelist()):
            print(wheel)
            sys.exit(0)
PY
}

build() {
    ensure_engine
    local base wheel
    base="$(base_image)" || skip "no base image: none could be pulled and debootstrap" \
        "failed ($(tail -n 3 "$RUN_DIR/debootstrap.log" 2>/dev/null || echo 'not installed'))."
    rm -rf "$CONTEXT" && mkdir -p "$CONTEXT/wheels"
    wheel="$(host_wheel)"
    if [ -n "$wheel" ]; then
        cp "$wheel" "$CONTEXT/wheels/"
        say "reusing the host's wheel $wheel"
    elif [ "$MODE" = test ]; then
        skip "no llama-cpp-python wheel built on this machine (make setup builds one), and" \
            "compiling llama.cpp inside the image (~6 min on 2 cores) does not fit the" \
            "budget; \`make image\` builds it that way."
    else
        say "no host wheel found: the image compiles llama.cpp (~6 min on 2 cores)"
    fi
    # Behind a TLS-inspecting proxy, pip in the build needs the CAs that this machine
    # trusts (the build stage only: the runtime stage never sees them).
    local cert="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
    if [ -f "$cert" ]; then cp "$cert" "$CONTEXT/ca.crt"; fi
    say "building $TAG on $base"
    local status=0 build_s=$(($(left) - TESTS_S))
    [ "$build_s" -ge 30 ] || skip "no time left in the budget of ${BUDGET_S} s to build."
    timeout "$build_s" docker build --network host --build-arg BASE="$base" -t "$TAG" . \
        >"$RUN_DIR/build.log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        tail -n 30 "$RUN_DIR/build.log"
        if [ "$status" = 124 ]; then
            skip "the build did not finish within the budget of ${BUDGET_S} s (less" \
                "${TESTS_S} s for the tests); a slow or busy machine. Run it again: the" \
                "layers built so far are cached."
        fi
        if grep -qiE "Temporary failure in name resolution|Could not fetch URL|Failed to \
fetch|Connection (refused|reset)|Network is unreachable|Max retries exceeded" \
            "$RUN_DIR/build.log"; then
            skip "the build could not reach the package registries (see the log above)."
        fi
        say "FAILED: docker build exited with $status (log above)."
        exit 1
    fi
    say "built $TAG in $((SECONDS)) s: $(docker image inspect -f '{{.Size}}' "$TAG" \
        | awk '{printf "%.0f MB", $1 / 1e6}')"
    # awk reads to the end (no `head`): an early exit would SIGPIPE the writer under pipefail.
    docker history --format '{{.Size}}\t{{.CreatedBy}}' "$TAG" | awk 'NR <= 20 { print substr($0, 1, 110) }'
}

test_container() {
    local port url health
    port="$("$PYTHON" -c 'from llmops_lib.engines.process import free_port; print(free_port())')"
    url="http://127.0.0.1:$port"
    # The queue of tests/test_service.py's own service process, so the same tests hold.
    CONTAINER="$(docker run -d --network host --memory "$MEMORY" -e LLMOPS_HOST=127.0.0.1 \
        -e LLMOPS_PORT="$port" -e LLMOPS_QUEUE=2 "$TAG")"
    say "container ${CONTAINER:0:12} serving on $url"
    for _ in $(seq 1 120); do
        health="$(docker inspect -f '{{.State.Health.Status}}' "$CONTAINER" 2>/dev/null)" || true
        [ "$health" = healthy ] && break
        [ "$(docker inspect -f '{{.State.Running}}' "$CONTAINER")" = true ] || break
        sleep 1
    done
    if [ "$health" != healthy ]; then
        docker logs --tail 30 "$CONTAINER" || true
        say "FAILED: the container did not become healthy (status: ${health:-none})."
        exit 1
    fi
    sample_memory &
    local sampler=$!
    LLMOPS_SERVICE_URL="$url" timeout "$(left)" "$PYTHON" -m pytest -q -m model \
        tests/test_service.py
    local peak
    peak="$(peak_memory)"
    kill "$sampler" 2>/dev/null || true
    # docker stop sends SIGTERM: the service must shut down by itself within the grace.
    # uvicorn re-raises the signal after its shutdown (143), which PID 1 ignores (0); a
    # kill by docker after the grace would be 137.
    docker stop -t 15 "$CONTAINER" >/dev/null
    local code logs
    code="$(docker inspect -f '{{.State.ExitCode}}' "$CONTAINER")"
    # Read the whole log first: `docker logs | grep -q` under pipefail fails when grep
    # exits at its first match and docker logs then dies of SIGPIPE.
    logs="$(docker logs "$CONTAINER" 2>&1)"
    if { [ "$code" != 0 ] && [ "$code" != 143 ]; } || [[ "$logs" != *"shutdown complete"* ]]; then
        docker logs --tail 20 "$CONTAINER" || true
        say "FAILED: the service did not shut down cleanly on SIGTERM (exit code $code;" \
            "'shutdown complete' in its log: $([[ "$logs" == *"shutdown complete"* ]] && echo yes || echo no))."
        exit 1
    fi
    say "the container stopped cleanly on SIGTERM; passed in $((SECONDS)) s"
    record "$peak"
}

sample_memory() {  # the container's memory use each second (docker stats), one line each
    while docker stats --no-stream --format '{{.MemUsage}}' "$CONTAINER" \
        >>"$RUN_DIR/memory.txt" 2>/dev/null; do sleep 1; done
}

peak_memory() {
    # "BYTES SOURCE": the kernel's own peak for the container's cgroup (v2, memory.peak)
    # where it can be read, else the largest of the samples above.
    local file
    for file in "/sys/fs/cgroup/system.slice/docker-$CONTAINER.scope/memory.peak" \
        "/sys/fs/cgroup/docker/$CONTAINER/memory.peak"; do
        if [ -r "$file" ]; then echo "$(cat "$file") cgroup-memory.peak"; return; fi
    done
    "$PYTHON" - "$RUN_DIR/memory.txt" <<'PY'
import re, sys
from pathlib import Path

units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "kB": 1e3, "MB": 1e6, "GB": 1e9}
path = Path(sys.argv[1])
used = [float(m[1]) * units[m[2]] for line in (path.read_text().splitlines() if path.exists() else [])
        if (m := re.match(r"\s*([\d.]+)\s*([A-Za-z]+)\s*/", line)) and m[2] in units]
print(f"{max(used):.0f} docker-stats-sampled-each-second" if used else "nan none")
PY
}

record() {  # the figures of a passing run, for notebook 10: one new file, written atomically
    local peak_bytes peak_source
    read -r peak_bytes peak_source <<<"$1"
    "$PYTHON" - "$RESULTS" "$TAG" "$(docker image inspect -f '{{.Size}}' "$TAG")" \
        "$peak_bytes" "$peak_source" "$MEMORY" <<'PY'
import json, sys
from datetime import datetime, timezone

from llmops_lib.core import results

folder, tag, size, peak, source, limit = sys.argv[1:]
record = {
    "image": tag,
    "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    "image_bytes": int(size),
    "peak_memory_bytes": float(peak),
    "peak_memory_source": source.replace("-", " "),
    "memory_limit": limit,
    "tests": "tests/test_service.py -m model against the container: passed",
}
text = json.dumps(record, indent=1)
path = results.save("test-image", ".json", lambda tmp: tmp.write_text(text), folder)
print(f"[test-image] recorded {path}")
PY
}

case "$MODE" in
    build) build ;;
    test) build; test_container ;;
    *) echo "usage: $0 build|test" >&2; exit 2 ;;
esac
