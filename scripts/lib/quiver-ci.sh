# Shared by scripts/check-api and clients/python/test_client.sh (sourced, not run).

# The Python tools, pinned; bump here and the cached venv is rebuilt.
QUIVER_CI_PIP=(openapi-python-client==0.29.1 schemathesis==4.32.5)

# Prints the path of a venv holding QUIVER_CI_PIP, creating it on first use under
# ${XDG_CACHE_HOME:-~/.cache}/quiver-ci so CI runs reuse it.
# The newest Python found (QUIVER_CI_PYTHON overrides): 3.11.7's compiler crashes on the
# deeply nested code Hypothesis builds ("AST constructor recursion depth mismatch").
quiver_ci_venv() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/quiver-ci/venv"
    local python=${QUIVER_CI_PYTHON:-}
    if [ -z "$python" ]; then
        local pyenv_root
        pyenv_root=$(pyenv root 2>/dev/null || true)
        for python in python3.13 python3.12 "$pyenv_root"/versions/3.13*/bin/python3 \
            "$pyenv_root"/versions/3.12*/bin/python3 python3; do
            if "$python" -c '' 2>/dev/null; then break; fi
        done
    fi
    local want
    want="$("$python" -c 'import sys; print(sys.version.split()[0])') ${QUIVER_CI_PIP[*]}"
    if [ "$(cat "$venv/.quiver-pins" 2>/dev/null)" != "$want" ]; then
        rm -rf "$venv"
        "$python" -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "${QUIVER_CI_PIP[@]}" >&2
        echo "$want" >"$venv/.quiver-pins"
    fi
    echo "$venv"
}

quiver_ci_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a standalone Quiver on free ports in a fresh data dir and exports
# QUIVER_DATA_URL and QUIVER_CONTROL_URL. The binary: QUIVER_BIN, else cargo builds it.
quiver_ci_start() {
    local root bin
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    bin=${QUIVER_BIN:-}
    if [ -z "$bin" ]; then
        (cd "$root" && cargo build --locked -p quiver >&2)
        bin="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug/quiver"
    fi
    QUIVER_CI_DIR=$(mktemp -d)
    local data_port control_port
    data_port=$(quiver_ci_free_port)
    control_port=$(quiver_ci_free_port)
    local models=()
    if [ -d "${QUIVER_MODELS_DIR:-/var/cache/quiver-models}" ]; then
        models=(--models-dir "${QUIVER_MODELS_DIR:-/var/cache/quiver-models}")
    fi
    "$bin" standalone --data-dir "$QUIVER_CI_DIR/data" --data-addr "127.0.0.1:$data_port" \
        --control-addr "127.0.0.1:$control_port" --pull-models=false "${models[@]}" \
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
    cat "$QUIVER_CI_DIR/quiver.log" >&2
    echo "error: standalone Quiver did not become ready" >&2
    return 1
}

# Stops what quiver_ci_start started; on failure, shows its log.
quiver_ci_stop() {
    local status=$?
    if [ -n "${QUIVER_CI_PID:-}" ]; then
        kill "$QUIVER_CI_PID" 2>/dev/null || true
        wait "$QUIVER_CI_PID" 2>/dev/null || true
    fi
    if [ "$status" != 0 ] && [ -f "${QUIVER_CI_DIR:-}/quiver.log" ]; then
        echo "== standalone Quiver log (last 50 lines)" >&2
        tail -n 50 "$QUIVER_CI_DIR/quiver.log" >&2
    fi
    rm -rf "${QUIVER_CI_DIR:-}"
    return "$status"
}
