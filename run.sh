#!/usr/bin/env bash
# The project's entry point. Creates or reuses .venv and installs the versions requirements/lock.txt pins.
#   ./run.sh train [--config experiments/configs/NAME.py] [--workdir DIR] [...]  main job
#   ./run.sh test  [pytest args]                                                 lint, format check, fast tests
#   ./run.sh python ARGS...                                                      python in the venv
set -euo pipefail
cd "$(dirname "$0")"

venv=.venv
python=${PYTHON:-python3}
stamp="$venv/.installed-$(cat pyproject.toml requirements/lock.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -c requirements/lock.txt -e ".[test]"
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

# The main job trains on full Fashion-MNIST, which Debian ships as a package (no download at run time
# beyond the package registry). Where it cannot be installed, the job falls back to sklearn's digits;
# the tests that need it (the shipped models' check values) run where it is installed.
ensure_fashion_mnist() {
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's dataset-fashion-mnist for the main job ..." >&2
    { timeout 300 apt-get update -qq && timeout 300 apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
      || echo "could not install dataset-fashion-mnist: the main job falls back to sklearn's digits" >&2
  fi
}

cmd=${1:-help}
shift || true
case "$cmd" in
  train)  ensure_fashion_mnist; exec "$venv/bin/python" -m experiments.train "$@" ;;
  test)   ensure_fashion_mnist; "$venv/bin/ruff" check --quiet . && "$venv/bin/ruff" format --check --quiet . && exec "$venv/bin/python" -m pytest -q "$@" ;;
  python) exec "$venv/bin/python" "$@" ;;
  *) echo "usage: ./run.sh {train|test|python} [args...]" >&2; exit 2 ;;
esac
