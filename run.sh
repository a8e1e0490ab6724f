#!/usr/bin/env bash
# The project's entry point. Creates or reuses .venv and installs what pyproject.toml pins.
#   ./run.sh train [--config experiments/configs/NAME.py] [--workdir DIR] [...]  main job
#   ./run.sh test  [pytest args]                                                 lint + fast tests
#   ./run.sh python ARGS...                                                      python in the venv
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
python=${PYTHON:-python3}
stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e ".[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

cmd=${1:-help}
shift || true
case "$cmd" in
  train)  exec "$venv/bin/python" -m experiments.train "$@" ;;
  test)   "$venv/bin/ruff" check --quiet . && exec "$venv/bin/python" -m pytest -q "$@" ;;
  python) exec "$venv/bin/python" "$@" ;;
  *) echo "usage: ./run.sh {train|test|python} [args...]" >&2; exit 2 ;;
esac
