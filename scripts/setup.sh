#!/usr/bin/env bash
# Create or refresh .venv at the repository root with everything Neon needs.
#
#   scripts/setup.sh [EXTRAS]      e.g. scripts/setup.sh dev      (default: dev)
#
# Safe to run any number of times: Debian packages are installed only when
# missing, and pip runs only when pyproject.toml, constraints.txt or the
# requested extras changed since the last successful run. The same script is
# used by the README's commands, by CI (.ci/run) and by the Docker images.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${1:-dev}"
VENV="$ROOT/.venv"
PYTHON="${NEON_PYTHON:-python3}"

# Debian packages the Python wheels cannot bring themselves.
DEBIAN_PACKAGES=(libportaudio2)  # sounddevice's PortAudio (the local microphone path)

# The g1 extra (in dev too) needs CycloneDDS 0.10.x, the G1's DDS. PyPI has its wheels only up to Python 3.10;
# from 3.11 pip builds it against Debian's libddsc 0.10.2, the version Unitree's SDKs bundle.
CYCLONEDDS_BUILD=0
if [[ ",$EXTRAS," == *",g1,"* || ",$EXTRAS," == *",dev,"* ]] \
    && "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    CYCLONEDDS_BUILD=1
    DEBIAN_PACKAGES+=(cyclonedds-dev)
fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "[setup] installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! "$PYTHON" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)'; then
    echo "[setup] Neon needs Python 3.10-3.12; $PYTHON is $("$PYTHON" --version 2>&1). Set NEON_PYTHON." >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.neon-setup-stamp"
want="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1) extras=$EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "[setup] .venv is up to date (extras: $EXTRAS)"
else
    echo "[setup] installing neon[$EXTRAS] into .venv (torch pinned by constraints.txt)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ "$CYCLONEDDS_BUILD" = 1 ]; then
        # cyclonedds' build looks for CYCLONEDDS_HOME/{include,bin,lib/libddsc.so}; Debian keeps the library
        # in its multiarch directory, so point a small tree of links at the system's files.
        libddsc="$(dpkg -L cyclonedds-dev | grep '/libddsc\.so$' | head -n1)"
        export CYCLONEDDS_HOME="$VENV/cyclonedds-home"
        mkdir -p "$CYCLONEDDS_HOME"
        ln -sfn /usr/include "$CYCLONEDDS_HOME/include"
        ln -sfn /usr/bin "$CYCLONEDDS_HOME/bin"
        ln -sfn "$(dirname "$libddsc")" "$CYCLONEDDS_HOME/lib"
    fi
    "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[$EXTRAS]"
    echo "$want" > "$stamp"
fi

# The test suite drives the server with an unmodified openpi client, which pins numpy<2: it gets
# an environment of its own. (openpi-client 0.1.2 imports typing_extensions without declaring it.)
if [[ ",$EXTRAS," == *",dev,"* ]]; then
    OPENPI="$ROOT/.venv-openpi"
    if ! "$OPENPI/bin/python" -c "import openpi_client.websocket_client_policy" 2>/dev/null; then
        echo "[setup] creating $OPENPI with openpi-client (for the server's compatibility test)"
        "$PYTHON" -m venv "$OPENPI"
        "$OPENPI/bin/python" -m pip install -q openpi-client==0.1.2 typing_extensions
    fi
fi
