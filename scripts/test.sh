#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" dev
cd "$ROOT"
export HF_HUB_OFFLINE=1
exec "$ROOT/.venv/bin/python" -m pytest "$@"
