#!/usr/bin/env bash
# Sets up .venv and runs the default test suite (slow tests: add -m slow, or -m "" for all).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest -q --durations=15 "$@"
