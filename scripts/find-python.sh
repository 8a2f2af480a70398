#!/usr/bin/env bash
# Print a Python >= 3.12 interpreter (the SSCD model package needs it): python3 itself when new
# enough, else python3.13/python3.12 on PATH, else one that pyenv installed. Exit 1 if none.
set -euo pipefail
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
for py in python3 python3.13 python3.12; do
  if command -v "$py" >/dev/null 2>&1 && ok "$py"; then command -v "$py"; exit 0; fi
done
for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3; do
  if [ -x "$py" ] && ok "$py"; then echo "$py"; exit 0; fi
done
echo "no Python >= 3.12 found (install python3.12, or: pyenv install 3.12)" >&2
exit 1
