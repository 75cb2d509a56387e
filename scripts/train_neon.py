# /// script
# requires-python = ">=3.10,<3.13"
# dependencies = [
#     "torch>=2.4",
#     "transformers>=5.20,<6",
#     "tokenizers>=0.22",
#     "safetensors>=0.4",
#     "huggingface_hub>=1.0",
#     "accelerate>=1.0",
#     "bitsandbytes>=0.48",
#     "numpy>=1.26",
#     "pillow>=10",
#     "tqdm>=4.66",
#     "pyarrow>=15",
#     "av>=12",
#     "pyyaml>=6",
#     "matplotlib>=3.8",
#     "tensorboard>=2.15",
# ]
# ///
"""Train Neon: the same as `neon-train`, runnable with `uv run` or `hf jobs uv run`.

    hf jobs uv run --flavor a100-large --secrets HF_TOKEN --timeout 8h \\
        -e NEON_SOURCE=git+https://github.com/<you>/neon \\
        scripts/train_neon.py --backbone Qwen/Qwen2.5-Omni-7B --mode arms_only --audio --output YOU/neon-g1-v1

    uv run scripts/train_neon.py --backbone Qwen/Qwen2.5-VL-3B-Instruct --mode arms_only --epochs 3 \\
        --batch-size 4 --dataset data/g1_synth --output YOU/neon-g1-v1

Checkpoints are pushed to the Hub as they improve: a Job's disk is gone when it ends.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from neon_bootstrap import ensure_neon

ensure_neon()

from neon_train.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
