"""How many CPU threads torch may use in one of Neon's processes.

A robot computer always runs other processes. On this 2-core machine with other jobs running, the tiny backbone's
encode of 8 frames took 4-7 s with two torch threads against 0.3-0.4 s with one (bench/bench_threads.py prints the
figures, idle and loaded, side by side): torch's worker threads spin waiting for each other when a core is taken.
So every Neon command defaults to one intra-op thread; `--threads N` (neon-ros: the `threads` parameter) asks for
more where the cores are free.
"""

from __future__ import annotations

DEFAULT_THREADS = 1


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (None: DEFAULT_THREADS); ValueError when it is not >= 1. -> the count."""
    n = DEFAULT_THREADS if n is None else n
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"threads must be a whole number >= 1, got {n!r}")
    import torch

    torch.set_num_threads(n)
    return n


THREADS_HELP = ("torch intra-op CPU threads (default 1: with other processes running, two were ~20x slower than one "
                "on 2 cores; see bench/bench_threads.py)")
