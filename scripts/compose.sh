#!/usr/bin/env bash
# `docker compose` with the right compose files for this host: docker-compose.yml alone where Docker has the
# NVIDIA runtime (the trainer gets the GPU), plus docker-compose.cpu.yml where it has not (laptops, CI), which
# would otherwise fail with `could not select device driver "nvidia"`. Every argument goes to docker compose:
#
#   scripts/compose.sh up                      (make up)
#   scripts/compose.sh run --rm client info
#   scripts/compose.sh down -v                 (make down)
#
# COMPOSE_FILE set in the environment or in .env wins: then this is plain `docker compose`.
set -euo pipefail
# The client service works in the folder this is run from (its files: `run --rm client predict digit.png`), not
# in the repository root that compose resolves "." to, and that this script moves to.
export MNIST_CLIENT_DIR="${MNIST_CLIENT_DIR:-$PWD}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${COMPOSE_FILE:-}" ] && ! grep -qs '^COMPOSE_FILE=' .env; then
    if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"nvidia"'; then
        export COMPOSE_FILE=docker-compose.yml
    else
        echo "compose.sh: Docker has no NVIDIA runtime here: the trainer runs on the CPU (docker-compose.cpu.yml)" >&2
        export COMPOSE_FILE=docker-compose.yml:docker-compose.cpu.yml
    fi
fi
exec docker compose "$@"
