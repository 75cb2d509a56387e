#!/usr/bin/env bash
# One prepared GPU session for issue 24: Qwen2.5-VL-3B at batch 1, nf4 and bf16, the eager encode (before) beside
# the static-shape encode with the encode and heads captured as CUDA graphs (after), then, while the time lasts,
# the other backbones (Omni-7B first), eager, bf16 and nf4, batch 1.
#
# Prepare here:  scripts/gpu_wheels.sh                 (fills .whl/: transformers 5.20, a slim bitsandbytes, ...)
# Try here:      GPU_SESSION_SMOKE=1 OUT=/tmp/gs PYTHON=.venv/bin/python bench/gpu_session.sh   (CPU, --smoke)
# On the GPU:    the device tool: run(command="bash bench/gpu_session.sh", carry=[".whl"], timeout_s=560)
#
# Writes under $OUT: gpu_session.log (everything printed), env.txt, vl3b.json and one JSON per other backbone (bench_gpu rows).
# The GPU image has torch (CUDA 13.0 build) and transformers 5.17 but no bitsandbytes and no network: the wheels
# in .whl/ are installed without dependencies into a folder put first on PYTHONPATH; nothing else is changed.
set -uo pipefail

OUT="${OUT:-/tmp/neon_gpu_session}"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-520}"  # stop starting new work after this many seconds (the device call's limit is 600)
START=$SECONDS
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session.log") 2>&1

SITE="$(mktemp -d)/site"
WORK="$(mktemp -d)"
py_tag="$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
wheels=(.whl/transformers-*.whl .whl/tokenizers-*.whl .whl/safetensors-*.whl .whl/bitsandbytes-*.whl
        .whl/regex-*-"$py_tag"-*.whl)
for w in "${wheels[@]}"; do
    [ -e "$w" ] || { echo "[gpu_session] missing $w: run scripts/gpu_wheels.sh here and carry .whl"; exit 2; }
done
echo "[gpu_session] installing ${#wheels[@]} wheels into $SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}" || exit 2
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

{
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PYTHON" - <<'EOF'
import platform, torch, transformers, bitsandbytes
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.1f} GiB")
EOF
} | tee "$OUT/env.txt"

if [ -n "${GPU_SESSION_SMOKE:-}" ]; then
    common=(--smoke --device cpu --iters 2 --warmup 1)
    others=(omni7b)
else
    common=(--iters 50 --warmup 5)
    others=(omni7b omni3b cosmos2b vl7b cosmos8b)
fi

left() { echo $((BUDGET_S - (SECONDS - START))); }

echo "[gpu_session] 1/2 Qwen2.5-VL-3B, batch 1: eager (before) | static + CUDA graphs (after), nf4 and bf16"
timeout "$(left)" "$PYTHON" bench/bench_gpu.py --backbones vl3b --batches 1 "${common[@]}" \
    --encode eager static --compile-mode reduce-overhead --json "$OUT/vl3b.json" --workdir "$WORK"
echo "[gpu_session] step 1 exit $?, $((SECONDS - START)) s"

for b in "${others[@]}"; do  # one backbone per call, so a timeout loses only the one in progress
    if [ "$(left)" -lt 90 ]; then
        echo "[gpu_session] $(left) s left: not starting $b"
        continue
    fi
    echo "[gpu_session] 2/2 $b, batch 1, eager, nf4 and bf16"
    timeout "$(left)" "$PYTHON" bench/bench_gpu.py --backbones "$b" --batches 1 "${common[@]}" \
        --json "$OUT/$b.json" --workdir "$WORK"
    echo "[gpu_session] $b exit $?, $((SECONDS - START)) s"
done
rm -rf "$WORK"
echo "[gpu_session] done in $((SECONDS - START)) s; rows in $OUT/*.json"
