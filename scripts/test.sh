#!/usr/bin/env bash
# Set up .venv (if needed) and run the whole test suite offline.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" dev
cd "$ROOT"
export HF_HUB_OFFLINE=1
# ROS 2 traffic stays on this machine: localhost-only discovery and a random domain per run.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 200) + 10 ))}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
