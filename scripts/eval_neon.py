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
# ]
# ///
"""Evaluate a Neon checkpoint: the same as `neon-eval`, runnable with `uv run` or `hf jobs uv run`.

    uv run scripts/eval_neon.py --model YOU/neon-g1-v1 --dataset data/g1_synth --trajs 10 --baselines --plot
    hf jobs uv run --flavor l4x1 --secrets HF_TOKEN -e NEON_SOURCE=git+https://github.com/<you>/neon \\
        scripts/eval_neon.py --model YOU/neon-g1-v1 --dataset YOU/g1-data --trajs 500 --baselines
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from neon_bootstrap import ensure_neon

ensure_neon()

from neon_train.eval_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
