"""bench/bench_gpu.py: the published architectures build at their published sizes, and the CPU smoke runs end to end."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neon.backbones.loader import DENSE_MEMORY_SHARE, dense_weight_bytes
from neon.backbones.registry import BACKBONES, STATIC_FAMILIES, get_spec

BENCH = Path(__file__).resolve().parents[1] / "bench"
REAL = [k for k, v in BACKBONES.items() if not v.tiny]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.mark.parametrize("model_id", REAL)
def test_published_configs_build_the_published_models(model_id):
    """Each config dict, built by the real transformers class, has the width Neon's registry reads and, where a source
    states it, exactly the published number of parameters."""
    published, bench = _load("published_configs"), _load("bench_gpu")
    spec = BACKBONES[model_id]
    cls, config = bench.hf_model(spec.family, published.PUBLISHED[model_id])
    with torch.device("meta"):
        model = cls._from_config(config)
    thinker = getattr(config, "thinker_config", config)
    text = thinker.get_text_config()
    assert text.hidden_size == spec.hidden_size
    assert thinker.vision_config.out_hidden_size == spec.hidden_size  # image tokens land in the text stream
    if spec.native_audio:
        assert thinker.audio_config.output_dim == spec.hidden_size
    if model_id in published.PUBLISHED_PARAMS:
        assert sum(p.numel() for p in model.parameters()) == published.PUBLISHED_PARAMS[model_id]


def test_smoke_prints_every_row_with_finite_numbers(tmp_path):
    """--smoke runs the whole path (build, save, load through Backbone in nf4 and bf16, encode, heads, chunk, tick)
    on CPU for all six scaled-down architectures and prints one table row per backbone x precision x batch x encode
    path (static: the four Qwen2.5 builds; Cosmos-Reason2 has none)."""
    out = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two cores shared with the rest of the suite: no spinning threads
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--smoke", "--iters", "2", "--warmup", "0",
                           "--workdir", str(tmp_path), "--json", str(out), "--encode", "eager", "static"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    number = r"\s+([-\w.]+)"
    row = re.compile(r"^(\S+/\S+)\s+(nf4|bf16)\s+(\d+)\s+(\d+)" + number * 2 + r"((?:\s+[\d.]+/\s*[\d.]+){4})\s+(\S+)\s*$")
    rows = {}
    for line in proc.stdout.splitlines():
        m = row.match(line)
        if m:
            pairs = [tuple(map(float, p.split("/"))) for p in re.findall(r"[\d.]+/\s*[\d.]+", m.group(7))]
            rows[(m.group(1), m.group(2), int(m.group(3)), m.group(8))] = (int(m.group(4)), pairs)
    static = [mid for mid in REAL if get_spec(mid).family in STATIC_FAMILIES]  # Cosmos-Reason2 runs eager only
    expected = {(mid, prec, b, "eager") for mid in REAL for prec in ("nf4", "bf16") for b in (1, 8)}
    expected |= {(mid, prec, b, "static") for mid in static for prec in ("nf4", "bf16") for b in (1, 8)}
    assert len(static) == 4
    assert set(rows) == expected, proc.stdout
    for key, (tokens, pairs) in rows.items():
        assert tokens > 64, key  # 64 image tokens for 224x224, plus the prompt
        assert len(pairs) == 4, key
        for p50, p99 in pairs:
            assert math.isfinite(p50) and math.isfinite(p99) and 0 < p50 <= p99, (key, pairs)
    assert "n/a (smoke)" in proc.stdout
    data = json.loads(out.read_text())
    assert {(r["model_id"], r["precision"], r["batch"], r["encode"]) for r in data["rows"]} == expected
    for r in data["rows"]:  # nf4 really is 4-bit, bf16 really is not
        assert (r["nf4_linears"] > 0) == (r["precision"] == "nf4"), r
    assert not any(tmp_path.glob("neon-bench-gpu-*")), "the random-weight builds must be deleted"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_full_run_without_a_gpu_exits_2_and_says_why():
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--backbones", "vl3b"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs a CUDA GPU" in proc.stderr and "--smoke" in proc.stderr


def test_truncation_table_counts_what_the_loader_keeps(capsys):
    """bench/bench_truncation.py: for every published backbone, the language-model parameters it counts as kept are
    exactly those of the model built with its text config cut to the default feature layer (as the loader does)."""
    bench, published, gpu = _load("bench_truncation"), _load("published_configs"), _load("bench_gpu")
    assert bench.main() == 0
    out = capsys.readouterr().out
    for model_id in REAL:
        spec = BACKBONES[model_id]
        r = bench.row(model_id)
        assert (r["layer"], r["depth"]) == (spec.feature_layer, spec.num_layers)
        assert 0 < r["saved_nf4"] < r["saved_bf16"] < r["total_bf16"] and r["lm_kept"] < r["lm_total"]
        cls, config = gpu.hf_model(spec.family, published.PUBLISHED[model_id])
        getattr(config, "thinker_config", config).get_text_config().num_hidden_layers = spec.feature_layer
        with torch.device("meta"):
            cut = cls._from_config(config)
        lm = getattr(cut, "thinker", cut).model.language_model
        assert sum(p.numel() for p in lm.parameters()) - lm.norm.weight.numel() == r["lm_kept"]
        # the "auto" column is the loader's own rule on the cut backbone's bf16 weights (the norm it drops aside)
        dense = dense_weight_bytes(spec.family, getattr(config, "thinker_config", config), torch.bfloat16)
        assert bench.auto_dense_from_gib(r) * 2**30 * DENSE_MEMORY_SHARE == pytest.approx(dense, rel=1e-3)
        assert re.search(rf"^{re.escape(model_id)}\s+{spec.feature_layer}/{spec.num_layers}\s", out, re.M), out
