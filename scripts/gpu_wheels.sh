#!/usr/bin/env bash
# Fetch, here (where PyPI answers), the wheels a lent GPU machine without network needs for bench/gpu_session.sh,
# into .whl/ at the repository root (git-ignored; carry it: the device tool's carry [".whl"]).
#
#   scripts/gpu_wheels.sh                    # for the GPU image's torch 2.11 cu130 (CUDA 13.x), Python 3.10-3.13
#
# The GPU image has torch (CUDA build) but an older transformers and no bitsandbytes. bitsandbytes' wheel holds a
# library per CUDA version (43 MB); the copy kept here holds only the CPU and CUDA 13.x libraries (~5 MB), so the
# checkout and the wheels stay far under the device call's 64 MiB.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/.whl"
PIP="${PIP:-$ROOT/.venv/bin/pip}"
TRANSFORMERS="${TRANSFORMERS:-transformers==5.20.2}"  # the newest that works with the image's huggingface_hub 1.33
BITSANDBYTES="${BITSANDBYTES:-bitsandbytes==0.50.2}"
KEEP_CUDA="${KEEP_CUDA:-cuda130 cuda132}"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"

rm -rf "$DEST.tmp" && mkdir -p "$DEST.tmp"
echo "[gpu_wheels] pure-Python and abi3 wheels: $TRANSFORMERS, tokenizers, safetensors, typer"
"$PIP" download -q --no-deps -d "$DEST.tmp" "$TRANSFORMERS" "tokenizers>=0.23.1,<0.24" "safetensors>=0.8" typer \
    --only-binary=:all: $PLATFORMS --python-version 3.11
for py in 3.10 3.11 3.12 3.13; do  # regex has a wheel per Python version
    "$PIP" download -q --no-deps -d "$DEST.tmp" "regex>=2025.10.22" --only-binary=:all: \
        $PLATFORMS --python-version "$py"
done
echo "[gpu_wheels] $BITSANDBYTES, slimmed to the CPU and ${KEEP_CUDA// /, } libraries"
"$PIP" download -q --no-deps -d "$DEST.tmp/full" "$BITSANDBYTES" --only-binary=:all: \
    $PLATFORMS --python-version 3.11
"$ROOT/.venv/bin/python" - "$DEST.tmp/full" "$DEST.tmp" $KEEP_CUDA <<'EOF'
"""Rewrite a bitsandbytes wheel without the native libraries of other CUDA/ROCm/XPU versions (RECORD rewritten)."""
import base64, hashlib, sys, zipfile
from pathlib import Path

src_dir, dest_dir, keep = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
(src,) = src_dir.glob("bitsandbytes-*.whl")
wanted = lambda name: not name.endswith(".so") or name.endswith("_cpu.so") or any(f"_{k}.so" in name for k in keep)
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest_dir / src.name, "w", zipfile.ZIP_DEFLATED) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    rows = []
    for info in zin.infolist():
        if info.filename == record_name or not wanted(info.filename):
            continue
        data = zin.read(info)
        zout.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{info.filename},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
print(f"[gpu_wheels] {src.name}: {src.stat().st_size / 1e6:.1f} MB -> {(dest_dir / src.name).stat().st_size / 1e6:.1f} MB")
EOF
rm -rf "$DEST.tmp/full" "$DEST" && mv "$DEST.tmp" "$DEST"
du -sh "$DEST" && ls "$DEST"
