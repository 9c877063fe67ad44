#!/usr/bin/env bash
# Run the whole test suite from a fresh clone: create .venv, install the package with its
# test, docs, lightning and plots extras (editable, so doctests in src/ import the same
# modules), then run pytest. The suite includes a strict mkdocs build of the site.
#
# Environment: PYTHON (default: python3); extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,docs,lightning,plots]"

.venv/bin/python -m pytest "$@"
