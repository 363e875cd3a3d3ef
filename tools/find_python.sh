#!/usr/bin/env bash
# Print the path of a working interpreter for Python version $1 (e.g. "3.10"), or fail.
# pyenv shims exist for every installed version but only run the versions pyenv selected, so a
# shim on PATH is not enough: each candidate is executed before it is accepted.
set -u
want="${1:?usage: find_python.sh MAJOR.MINOR}"
candidates=("python${want}")
if [ -n "${PYENV_ROOT:-}" ] || [ -d "$HOME/.pyenv" ]; then
  root="${PYENV_ROOT:-$HOME/.pyenv}"
  for d in "$root"/versions/"${want}".*/bin/python"${want}"; do candidates+=("$d"); done
fi
candidates+=("/usr/bin/python${want}" "/usr/local/bin/python${want}")
for c in "${candidates[@]}"; do
  p=$(command -v "$c" 2>/dev/null) || continue
  if "$p" -c "import sys, venv; assert sys.version_info[:2] == tuple(map(int, '${want}'.split('.')))" 2>/dev/null; then
    echo "$p"
    exit 0
  fi
done
echo "find_python.sh: no working python${want} found (looked on PATH and under pyenv)" >&2
exit 1
