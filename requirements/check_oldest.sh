#!/usr/bin/env bash
# Build a virtualenv with the oldest declared versions (requirements/oldest.txt; everything else as
# requirements/lock.txt pins it) and run the default test suite in it. Slow (a fresh install and the
# whole suite, about 10 minutes on 2 cores): run it when pyproject.toml's lower bounds change.
#
#   bash requirements/check_oldest.sh [pytest args]     # VENV=.venv-oldest by default
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv-oldest}
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
# oldest.txt wins; every other package as locked
names=$(grep -E '^[A-Za-z]' requirements/oldest.txt | cut -d= -f1 | tr 'A-Z_' 'a-z-')
grep -E '^[A-Za-z]' requirements/lock.txt | while read -r line; do
  name=$(echo "${line%%==*}" | tr 'A-Z_' 'a-z-')
  echo "$names" | grep -qx "$name" || echo "$line"
done > "$constraints"
grep -E '^[A-Za-z]' requirements/oldest.txt >> "$constraints"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$constraints" -e ".[test]"
"$venv/bin/python" -m pip list 2>/dev/null | grep -i -E '^(jax|jaxlib|flax|optax|chex|numpy|orbax-checkpoint) '
exec "$venv/bin/python" -m pytest -q "$@"
