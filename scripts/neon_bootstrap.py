"""Make `import neon` work for the PEP 723 scripts beside this file.

Run from a checkout (`uv run scripts/train_neon.py ...`), the repository root is
put on sys.path. Run on its own (`hf jobs uv run scripts/train_neon.py ...`
uploads only the script), set NEON_SOURCE to something pip understands, e.g.
`git+https://github.com/<you>/neon`, and it is installed into the script's
environment first.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path


def ensure_neon() -> None:
    root = Path(__file__).resolve().parent.parent
    if (root / "neon" / "__init__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    if importlib.util.find_spec("neon") is not None:
        return
    source = os.environ.get("NEON_SOURCE")
    if not source:
        sys.exit("error: the `neon` package is not importable. Run this script from a Neon checkout, or set "
                 "NEON_SOURCE to a pip requirement for it (e.g. git+https://github.com/<you>/neon).")
    uv = shutil.which("uv")
    cmd = ([uv, "pip", "install", "--python", sys.executable, source] if uv
           else [sys.executable, "-m", "pip", "install", source])
    subprocess.run(cmd, check=True)
