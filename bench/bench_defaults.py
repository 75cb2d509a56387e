"""Do the defaults learn? The README's first-user sequence, run as a user would, scored on held-out episodes.

    neon-data synth --out D
    neon-train --backbone neon-tiny/qwen2.5-vl --mode arms_only --dataset D --max-steps 300 --no-push --output CK
    neon-eval --model CK/best --dataset D --baselines

Prints the held-out MSE of the model beside the hold, zero and mean baselines and the model's improvement
over each (the target: at least 30% over all three), for the defaults (joint groups relative to the state)
and, in the same run, for `--representation absolute` (what the defaults were). A benchmark, not a test: it
trains for minutes.

    .venv/bin/python bench/bench_defaults.py [--max-steps 300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", *args], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=300)
    ap.add_argument("--keep", help="work in this folder instead of a temporary one")
    ap.add_argument("--train-arg", action="append", default=[], help="an extra neon-train argument (repeatable)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        data = work / "d"
        t_data = run("neon.data.cli", "synth", "--out", str(data), "--overwrite")
        print(f"# first-user sequence, {args.max_steps} steps on the default synthetic dataset ({t_data:.0f} s to make)")
        print(f"{'representation':15s} {'':6s} {'MSE (rad^2)':>12s} {'step 0':>10s} {'model better by':>16s}")
        for rep in ("relative", "absolute"):
            ck, ev = work / f"ck_{rep}", work / f"eval_{rep}"
            t_train = run("neon_train.cli", "--backbone", "neon-tiny/qwen2.5-vl", "--mode", "arms_only", "--dataset",
                          str(data), "--max-steps", str(args.max_steps), "--no-push", "--output", str(ck),
                          "--representation", rep, *args.train_arg)
            run("neon_train.eval_cli", "--model", str(ck / "best"), "--dataset", str(data), "--baselines", "--out", str(ev))
            report = json.loads((ev / "eval_report.json").read_text())
            res, imp = report["results"], report["improvement_pct"]
            label = f"{rep}{' (default)' if rep == 'relative' else ''}"
            for name in ("model", "hold", "zero", "mean"):
                better = "" if name == "model" else f"{imp[name]['total']:+.1f}%"
                print(f"{label if name == 'model' else '':15s} {name:6s} {res[name]['mse']:12.5f} "
                      f"{res[name]['per_step'][0]:10.5f} {better:>16s}")
            worst = min(imp[b]["total"] for b in ("hold", "zero", "mean"))
            print(f"{'':15s} smallest improvement over hold / zero / mean: {worst:+.1f}% (target >= +30%); "
                  f"trained in {t_train:.0f} s; held-out episodes {report['split']['evaluated_episodes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
