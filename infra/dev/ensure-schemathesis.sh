#!/usr/bin/env bash
# Installs the pinned Schemathesis (the property-based OpenAPI tester the gateway's
# `schemathesis` test runs against the committed spec) into a Python venv of its own
# under the tools dir, and prints the path of its `st` command on stdout. Idempotent:
# when the pinned versions are already there it only checks and prints, in well under
# 1 s. Its own venv keeps its many dependencies apart from moto's (ensure-tools.sh);
# every one of them is pinned in schemathesis-requirements.txt beside this script.
set -euo pipefail

REQUIREMENTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/schemathesis-requirements.txt"

TOOLS_DIR="${ARCA_TOOLS_DIR:-$HOME/.cache/arca/tools}"
VENV="$TOOLS_DIR/schemathesis"
STAMP="$TOOLS_DIR/.schemathesis.stamp"
mkdir -p "$TOOLS_DIR"

# What is wanted is the exact package list: a changed pin reinstalls.
want="$(grep -v '^#' "$REQUIREMENTS" | tr '\n' ' ')"
# The stamp records what was installed, so a warm run starts no interpreter but one
# `python -c ''`, which catches a venv whose base interpreter has gone away.
installed() {
    [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -x "$VENV/bin/st" ]] && "$VENV/bin/python" -c '' 2>/dev/null
}
if ! installed; then
    # Two test runs on one machine (the test installs it too) take turns.
    exec 9>"$TOOLS_DIR/.schemathesis.lock"
    flock 9
fi
if ! installed; then
    echo "ensure-schemathesis: installing $(grep '^schemathesis==' "$REQUIREMENTS") into $VENV" >&2
    "$VENV/bin/python" -c '' 2>/dev/null || python3 -m venv --clear "$VENV"
    # Quiet, and on stderr: stdout carries only the `st` path for callers.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS" >&2
    echo "$want" >"$STAMP"
fi

# One bin/ with every tool, like ensure-tools.sh.
mkdir -p "$TOOLS_DIR/bin"
ln -sf "$VENV/bin/st" "$TOOLS_DIR/bin/st"

echo "$VENV/bin/st"
