#!/usr/bin/env bash
# The one-command local stack: make sure the project's virtual environment exists and is up to date with
# pyproject.toml and constraints.txt (creating it and running `pip install -c constraints.txt -e .` when not), then run scripts/local_stack.py in it
# (python -m scripts.local_stack, from the checkout).
#
#   scripts/stack.sh [local_stack.py flags]     e.g.  MNIST_TENSORBOARD_PORT=6007 scripts/stack.sh --epochs 3
#   scripts/stack.sh --setup-only               only create / update the environment
#
# Which environment: $MNIST_VENV, else the active one ($VIRTUAL_ENV), else .venv in the checkout.
# MNIST_STACK_EXTRAS=dev also installs the development tools (make test and make lint ask for them).
# PYTHON picks the interpreter that creates a new environment (default python3; 3.11 to 3.13).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MNIST_VENV:-${VIRTUAL_ENV:-.venv}}"
EXTRAS="${MNIST_STACK_EXTRAS:-}"
SPEC="."
[ -n "$EXTRAS" ] && SPEC=".[${EXTRAS}]"

say() { printf 'stack.sh: %s\n' "$*" >&2; }

# An environment whose interpreter does not run is made anew: one never made, one whose interpreter link dangles
# (its Python removed or upgraded), or a dangling link where it should be. What is there goes first, as
# `python -m venv` stops on leftover links; only a link or a virtual environment (pyvenv.cfg) is removed, never
# another folder. One without pip (its creation cut off, or made by a tool that leaves pip out) gets pip.
if ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
    say "creating the virtual environment $VENV"
    if [ -L "$VENV" ] || [ -f "$VENV/pyvenv.cfg" ]; then rm -rf "$VENV"; fi
    "${PYTHON:-python3}" -m venv "$VENV"
elif ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    say "installing pip into $VENV"
    "$VENV/bin/python" -m ensurepip --upgrade
fi

# Reinstall when pyproject.toml or constraints.txt (the exact versions: scripts/lock.py), the checkout or the
# extras changed since the last install into this environment. The checkout counts because the install is
# editable: an environment shared by two clones (CI's) must import the code of the clone that runs, not of the
# one that installed it.
STAMP="$VENV/.mnist-stack-install"
WANT="$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)@${ROOT} ${EXTRAS}"
HAVE="$(cat "$STAMP" 2>/dev/null || true)"
# An environment installed with more extras (dev) serves a plain run too.
if [ "$HAVE" != "$WANT" ] && ! { [ -z "$EXTRAS" ] && [ "${HAVE%% *}" = "${WANT%% *}" ]; }; then
    say "installing the project into $VENV (pip install -e '$SPEC'; PyTorch is large, the first time takes a while)"
    # The stamp goes first and comes back only once pip has finished: a cut-off install leaves none, so it is
    # never taken for the install the stamp named.
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --disable-pip-version-check -c constraints.txt -e "$SPEC"
    printf '%s\n' "$WANT" > "$STAMP"
fi

if [ "${1:-}" = "--setup-only" ]; then
    say "$VENV is ready"
    exit 0
fi
# exec: Ctrl-C and SIGTERM go straight to the supervisor, which stops the services in order.
exec "$VENV/bin/python" -m scripts.local_stack "$@"
