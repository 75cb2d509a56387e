#!/usr/bin/env bash
# Set up .venv (if needed) and start Neon's main job: neon-serve on the embedded default
# (the offline tiny backbone; the first start trains its heads on the synthetic G1 dataset,
# about a minute on 2 cores, then the checkpoint is cached). Extra arguments go to neon-serve.
# Query it from another shell with:  .venv/bin/python -m neon_runtime.query
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" dev
cd "$ROOT"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$ROOT/.venv/bin/neon-serve" "$@"
