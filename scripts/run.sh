#!/usr/bin/env bash
# Set up .venv (if needed) and run Neon's main job on the embedded default:
# one end-to-end predict() on the offline tiny backbone, printing the action
# chunk and per-stage timings. Extra arguments go to `neon demo`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" dev
cd "$ROOT"
exec "$ROOT/.venv/bin/neon" demo "$@"
