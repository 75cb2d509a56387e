"""Per-stage latency and peak GPU memory of the six full-size backbones, nf4 and bf16 (a benchmark, not a test).

    python bench/bench_gpu.py                                   # all six, nf4 and bf16, batch 1 and 8, on CUDA
    python bench/bench_gpu.py --backbones vl3b omni3b --iters 200
    .venv/bin/python bench/bench_gpu.py --smoke                 # CPU: the same code on scaled-down architectures

Every backbone is built from its published configuration (bench/published_configs.py) with random weights:
nothing is downloaded. The build is saved once (bf16 safetensors, an offline tokenizer and the family's image
processor) to a temporary folder and loaded back through Neon's own loader, `neon.backbones.loader.Backbone`,
so nf4 is exactly what the robot runs: transformers' BitsAndBytesConfig (nf4, double quantisation, bf16
compute) applied by `from_pretrained`. Each backbone needs its bf16 size on disk for a moment (18 GB for the
8B ones); the folder is deleted before the next backbone.

Stages, p50/p99 over --iters runs after --warmup, each timed between torch.cuda.synchronize() calls, for one
224x224 camera frame (batch 1, and 8 frames in one forward) and a typical instruction:

    backbone   Backbone.encode: Qwen processor, vision tower + language model up to the layer read, grid pooling
    heads      NeonVLA's fusion and action/speech heads on the encoded inputs (the preset's real sizes)
    chunk      NeonPolicy.predict_batch end to end: encode, heads, decode, clamp, to host
    tick       the two-rate loop's fast path: predict_batch on cached backbone features with a fresh state

and the peak of torch.cuda.max_memory_allocated per row. Targets (issue 24) on an H100-class GPU for
Qwen2.5-VL-3B, batch 1: chunk p50 <= 25 ms in bf16 and <= 35 ms in nf4 (GR00T N1.6: 36 ms with TensorRT), tick
p50 <= 1 ms, p99 <= 1.5 x p50.

--encode eager static runs each encode path as its own rows, side by side (static: neon/backbones/static.py, the
prompt, rope and window indices fixed once; Qwen2.5-VL and Qwen2.5-Omni), and --compile-mode reduce-overhead
captures the static path and the heads (`neon.predictor.compiled_heads`) as CUDA graphs (compiled during the
warm-up runs: keep --warmup >= 3):

    HF_HUB_OFFLINE=1 PYTHONPATH=. python bench/bench_gpu.py --backbones vl3b --batches 1 \
        --encode eager static --compile-mode reduce-overhead

Random weights change no shape and no kernel, so the timings stand for the trained models. The token count
per sample (printed) comes from an offline tokenizer, so the text part of the prompt is close to, not exactly,
the real tokenizer's length (the image part, 64 tokens for 224x224, is exact).

On a GPU machine without network the repository's .venv cannot be reused (its torch is the CPU build). Where
there is network, `pip download -d wheels` for the GPU machine's Python and platform (--python-version,
--platform manylinux_2_28_x86_64, --only-binary=:all:): torch, the CUDA variant for its driver from
https://download.pytorch.org/whl/; and from PyPI transformers>=5.20,<6, tokenizers, safetensors, accelerate,
bitsandbytes>=0.48, huggingface_hub, numpy, pillow, pyyaml, jinja2 (flash-attn is optional: without it
attention is SDPA). Carry wheels/ and the repository over, then, in the repository:

    python -m venv /tmp/venv
    /tmp/venv/bin/pip install --no-index --find-links wheels/ torch transformers tokenizers safetensors \\
        accelerate bitsandbytes huggingface_hub numpy pillow pyyaml jinja2
    HF_HUB_OFFLINE=1 PYTHONPATH=. /tmp/venv/bin/python bench/bench_gpu.py --workdir /a/disk/with/20/GB/free

Each backbone is built, saved and loaded twice; --backbones splits the run when one command's time is limited.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from published_configs import PIXELS, PUBLISHED

from neon.backbones import registry
from neon.backbones.registry import COMPILE_MODES, STATIC_FAMILIES
from neon.backbones.loader import Backbone
from neon.backbones.parts import model_parts
from neon.model import NeonVLA
from neon.observation import collate
from neon.policy import NeonPolicy
from neon.predictor import compiled_heads
from neon.presets import model_config

FULL = ("vl3b", "vl7b", "omni3b", "omni7b", "cosmos2b", "cosmos8b")
PRECISIONS = ("nf4", "bf16")
STAGES = ("backbone", "heads", "chunk", "tick")
INSTRUCTION = "pick up the red cup and place it on the table"
SMOKE_LAYERS = 2  # language-model depth of the scaled-down architectures
# Issue 24's targets on an H100-class GPU, Qwen2.5-VL-3B, batch 1, p50: chunk <= 25 ms bf16 / 35 ms nf4, tick <= 1 ms,
# every stage's p99 <= 1.5 x its p50.
TARGET = {"model_id": "Qwen/Qwen2.5-VL-3B-Instruct", "batch": 1, "chunk": {"bf16": 25.0, "nf4": 35.0}, "tick": 1.0,
          "p99_over_p50": 1.5}

# The families' chat layouts. Qwen2.5-VL's and the Omni thinker's templates open with a default system turn;
# Qwen3-VL's does not.
_SYSTEM = ("{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
           "{% endif %}")


# ---------------------------------------------------------------------------------------------- building
def scaled_down(family: str, arch: dict) -> dict:
    """The same architecture at toy size for --smoke: 2 layers, 128-wide text, 64-wide towers (multiples of 64,
    which bitsandbytes' CPU 4-bit kernels need), every structural feature kept (window and full attention,
    deepstack, mrope, the audio tower)."""
    text = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=SMOKE_LAYERS, num_attention_heads=4,
                num_key_value_heads=2, max_window_layers=SMOKE_LAYERS, vocab_size=1024)
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128)
    if family == "qwen2_5_vl":
        return {**arch, **text, "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
                "vision_config": {**arch["vision_config"], **vision, "fullatt_block_indexes": [1]}}
    if family == "qwen2_5_omni":
        return {"text_config": {**arch["text_config"], **text,
                                "rope_scaling": {"rope_type": "default", "mrope_section": [4, 6, 6]}},
                "vision_config": {**arch["vision_config"], **vision, "fullatt_block_indexes": [1]},
                "audio_config": {**arch["audio_config"], "d_model": 64, "encoder_layers": 2,
                                 "encoder_attention_heads": 2, "encoder_ffn_dim": 128, "output_dim": 128}}
    rope = {**arch["text_config"]["rope_scaling"], "mrope_section": [6, 5, 5]}
    return {**arch, "text_config": {**arch["text_config"], **text, "head_dim": 32, "rope_scaling": rope},
            "vision_config": {**arch["vision_config"], **vision, "deepstack_visual_indexes": [0, 1]}}


def hf_model(family: str, arch: dict, token_ids: dict | None = None):
    """(transformers model class, its config) for `arch`; `token_ids` points the config at a tokenizer's special
    tokens (None keeps the class defaults, which are Qwen's)."""
    import transformers as tf

    t = dict(token_ids or {})
    if family == "qwen2_5_vl":
        if t:
            t["bos_token_id"] = None  # the offline tokenizer has none
        return tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLConfig(**arch, **t)
    if family == "qwen3_vl":
        return tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLConfig(**arch, **t)
    # The thinker names three of its ids differently; the full Omni class holds only the thinker when audio output
    # is off, and saves it the way the Hub repos store it (under `thinker.`).
    rename = {"image_token_id": "image_token_index", "video_token_id": "video_token_index",
              "audio_token_id": "audio_token_index"}
    thinker = {**arch, **{rename.get(k, k): v for k, v in t.items()}}
    return tf.Qwen2_5OmniForConditionalGeneration, tf.Qwen2_5OmniConfig(thinker_config=thinker,
                                                                       enable_audio_output=False)


def build_folder(family: str, arch: dict, out: Path, device: torch.device) -> Path:
    """Write a random-weight checkpoint of `arch` (bf16 safetensors) with a working processor into `out`."""
    import transformers as tf

    from neon.backbones.processors import PROCESSOR_CLASSES
    from neon.backbones.tiny import _OMNI_TEMPLATE, _VL_TEMPLATE, _build_tokenizer

    omni = family == "qwen2_5_omni"
    names = dict(image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                 vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")
    if omni:
        names = dict(image_token_id="<|IMAGE|>", video_token_id="<|VIDEO|>", audio_token_id="<|AUDIO|>",
                     vision_start_token_id="<|vision_bos|>", vision_end_token_id="<|vision_eos|>",
                     audio_start_token_id="<|audio_bos|>", audio_end_token_id="<|audio_eos|>")
        tok = _build_tokenizer({"image_token": "<|IMAGE|>", "audio_token": "<|AUDIO|>", "video_token": "<|VIDEO|>",
                                "vision_bos_token": "<|vision_bos|>", "vision_eos_token": "<|vision_eos|>",
                                "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"})
    else:
        tok = _build_tokenizer({"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in names.items()}
    cls, config = hf_model(family, arch, {**ids, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id})
    torch.manual_seed(0)
    with torch.device(device):
        model = cls._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    del model
    px = PIXELS[family]
    image_processor = tf.Qwen2VLImageProcessorPil(patch_size=px["patch_size"], merge_size=px["merge_size"],
                                                  temporal_patch_size=2, min_pixels=px["min_pixels"],
                                                  max_pixels=px["max_pixels"])
    template = _SYSTEM + _OMNI_TEMPLATE if omni else _VL_TEMPLATE if family == "qwen3_vl" else _SYSTEM + _VL_TEMPLATE
    if omni:
        from neon.observation import AUDIO_SAMPLE_RATE

        fe = tf.WhisperFeatureExtractor(feature_size=arch["audio_config"]["num_mel_bins"],
                                        sampling_rate=AUDIO_SAMPLE_RATE)
        processor = PROCESSOR_CLASSES[family](image_processor, fe, tok, chat_template=template)
    else:
        processor = PROCESSOR_CLASSES[family](image_processor, tok, chat_template=template)
    processor.save_pretrained(out)
    return out


def smoke_spec(spec: registry.BackboneSpec) -> str:
    """Register a scaled-down twin of `spec` (same family, 128 wide, SMOKE_LAYERS deep, read in the middle) so
    NeonVLA's fusion reads the right width and the loader the right layer."""
    model_id = f"bench-smoke/{spec.model_id.split('/')[-1]}"
    audio_dim = 128 if spec.native_audio else registry.WHISPER_DIMS["neon-tiny/whisper"]
    registry.BACKBONES[model_id] = dataclasses.replace(spec, model_id=model_id, hidden_size=128, audio_dim=audio_dim,
                                                       params_b=0.0, vram_4bit_gb=0.0, num_layers=SMOKE_LAYERS,
                                                       feature_layer=SMOKE_LAYERS // 2, tiny=True)
    return model_id


# ---------------------------------------------------------------------------------------------- timing
class FrozenFeatures:
    """The two-rate loop's feature provider between backbone runs: the last features, whatever the batch says."""

    def __init__(self, vl: torch.Tensor, audio: torch.Tensor, audio_present: torch.Tensor):
        self.vl, self.audio, self.audio_present = vl, audio, audio_present

    def __call__(self, batch, keys=None):
        return self.vl, self.audio, self.audio_present


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Wall milliseconds of `fn`, each run bracketed by device synchronisation."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def measure(policy: NeonPolicy, device: torch.device, batch: int, rng: np.random.Generator, warmup: int,
            iters: int) -> dict:
    """One row: p50/p99 per stage, tokens per sample and peak memory for `batch` camera frames."""
    model, space = policy.model, policy.space
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(batch)]

    def observations():
        return [policy.observation(image=im, instruction=INSTRUCTION,
                                   state=rng.uniform(space.lower, space.upper).astype(np.float32)) for im in images]

    obs = observations()
    fresh = itertools.cycle([observations() for _ in range(4)])  # new joint states for every tick
    seen = {}

    def count_tokens(_module, _args, kwargs):  # the sequence the language model really gets, image tokens included
        seen["tokens"] = kwargs["inputs_embeds"].shape[1]

    _, _, language_model = model_parts(model.backbone.model)
    hook = language_model.register_forward_pre_hook(count_tokens, with_kwargs=True)
    features = model.features()
    inputs = model.inputs(collate(obs, space.dim), features)
    hook.remove()
    frozen = FrozenFeatures(inputs.vl_tokens, inputs.audio, inputs.audio_present)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fns = {
        "backbone": lambda: model.backbone.encode(images, [INSTRUCTION] * batch),
        "heads": lambda: policy.run_heads(inputs),
        "chunk": lambda: policy.predict_batch(obs),
        "tick": lambda: policy.predict_batch(next(fresh), frozen),
    }
    row = {"batch": batch, "tokens": seen.get("tokens", 0)}
    for stage, fn in fns.items():
        ms = timed(fn, device, warmup, iters)
        row[stage] = {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))}
    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return row


# ---------------------------------------------------------------------------------------------- report
def fmt(v: float | None, width: int = 6, digits: int = 2) -> str:
    return f"{'-':>{width}s}" if v is None else f"{v:{width}.{digits}f}"


def print_table(rows: list[dict]) -> None:
    head = f"{'backbone':28s} {'prec':4s} {'batch':>5s} {'tokens':>6s} {'weights':>7s} {'peak':>6s}"
    print(head + "".join(f" {s + ' p50/p99':>17s}" for s in STAGES) + "  encode")
    print(f"{'':28s} {'':4s} {'':>5s} {'':>6s} {'GiB':>7s} {'GiB':>6s}" + "".join(f" {'ms':>17s}" for _ in STAGES))
    for r in rows:
        cells = "".join(f" {fmt(r[s]['p50'], 8)}/{fmt(r[s]['p99'], 8)}" for s in STAGES)
        print(f"{r['model_id']:28s} {r['precision']:4s} {r['batch']:5d} {r['tokens']:6d} {fmt(r['weights_gib'], 7)} "
              f"{fmt(r['peak_gib'], 6)}{cells}  {r['encode']}")


def print_ratios(rows: list[dict]) -> None:
    """nf4 beside bf16, batch 8 beside batch 1, and each encode path beside eager, on the chunk latency."""
    by = {(r["model_id"], r["precision"], r["batch"], r["encode"]): r for r in rows}
    lines = []
    for (mid, prec, b, enc), r in by.items():
        if prec == "nf4" and (mid, "bf16", b, enc) in by:
            bf = by[(mid, "bf16", b, enc)]
            lines.append(f"{mid:28s} batch {b} {enc}: chunk nf4/bf16 {r['chunk']['p50'] / bf['chunk']['p50']:5.2f}x")
        if b == 8 and (mid, prec, 1, enc) in by:
            one = by[(mid, prec, 1, enc)]["chunk"]["p50"]
            lines.append(f"{mid:28s} {prec} {enc}: batch 8 gives {8 * one / r['chunk']['p50']:5.2f}x the frames/s of "
                         f"batch 1 ({8e3 / r['chunk']['p50']:.0f} vs {1e3 / one:.0f} frames/s)")
        if enc != "eager" and (mid, prec, b, "eager") in by:
            eager = by[(mid, prec, b, "eager")]["chunk"]["p50"]
            lines.append(f"{mid:28s} {prec} batch {b}: chunk {enc}/eager {r['chunk']['p50'] / eager:5.2f}x "
                         f"({r['chunk']['p50']:.2f} vs {eager:.2f} ms)")
    if lines:
        print("\n" + "\n".join(lines))


def print_targets(rows: list[dict], device_name: str, smoke: bool) -> None:
    t = TARGET
    verdict = (lambda ok: "n/a (smoke)") if smoke else (lambda ok: "PASS" if ok else "FAIL")
    chosen = [r for r in rows if (r["model_id"], r["batch"]) == (t["model_id"], t["batch"])]
    label = f"targets ({t['model_id']}, batch {t['batch']}, stated for an H100-class GPU)"
    if not chosen:
        print(f"\n{label}: not measured in this run")
        return
    print(f"\n{label}, measured on {device_name}:")
    for r in chosen:
        limit, chunk, tick = t["chunk"][r["precision"]], r["chunk"]["p50"], r["tick"]["p50"]
        tail = max(r[s]["p99"] / r[s]["p50"] for s in ("chunk", "tick"))
        print(f"  {r['precision']} {r['encode']}: chunk p50 {chunk:8.2f} ms <= {limit:.0f} ms {verdict(chunk <= limit)}; "
              f"tick p50 {tick:6.2f} ms <= {t['tick']:.0f} ms {verdict(tick <= t['tick'])}; "
              f"p99/p50 {tail:4.2f} <= {t['p99_over_p50']} {verdict(tail <= t['p99_over_p50'])}")


# ---------------------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(FULL), help=f"short names or ids (default: {' '.join(FULL)})")
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--iters", type=int, default=None, help="timed runs per stage (default 100; 3 with --smoke)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 10; 1 with --smoke)")
    ap.add_argument("--mode", default="arms_only", help="control mode of the heads preset (arms_only, whole_body)")
    ap.add_argument("--scale", default="standard", help="heads preset scale (standard, large)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="scaled-down architectures; runs on CPU (the test suite)")
    ap.add_argument("--workdir", default=None, help="where the random-weight builds are written (default: $TMPDIR)")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    ap.add_argument("--encode", nargs="+", default=["eager"], choices=("eager", "static"),
                    help="encode paths, each its own rows (static: neon/backbones/static.py; families without it "
                         "run eager only)")
    ap.add_argument("--compile-mode", default="none", choices=COMPILE_MODES,
                    help="torch.compile the static path (reduce-overhead: CUDA graphs); the first calls compile")
    args = ap.parse_args()
    args.iters = args.iters if args.iters is not None else 3 if args.smoke else 100
    args.warmup = args.warmup if args.warmup is not None else 1 if args.smoke else 10

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: --device cuda, but torch sees no CUDA device (is this torch a CPU build?)", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.smoke:
        why = (f"runs on CUDA, not --device {args.device}" if torch.cuda.is_available() else
               "needs a CUDA GPU and none is available here. Run it on a GPU machine (see this file's docstring "
               "for an offline install)")
        print(f"bench_gpu: the full-size benchmark {why}; or pass --smoke for the scaled-down CPU check of the "
              "same code.", file=sys.stderr)
        return 2
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # random builds trip warnings about unused generation ids
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    import bitsandbytes
    import transformers

    print(f"# bench_gpu{' --smoke (scaled-down architectures)' if args.smoke else ''}: {device_name}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}, bitsandbytes {bitsandbytes.__version__}")
    sizes = "scaled-down sizes" if args.smoke else "the published sizes"
    print(f"# random weights at {sizes}; one 224x224 camera + instruction per sample; heads: "
          f"{args.mode}/{args.scale} preset; ms p50/p99 over {args.iters} runs after {args.warmup} warm-up")

    rows, attn = [], set()
    workdir = Path(tempfile.mkdtemp(prefix="neon-bench-gpu-", dir=args.workdir))
    try:
        for name in args.backbones:
            spec = registry.get_spec(name)
            if spec.tiny:
                raise SystemExit(f"bench_gpu: {name} is a tiny backbone; pass one of {', '.join(FULL)}")
            arch = PUBLISHED[spec.model_id]
            model_id = spec.model_id
            if args.smoke:
                arch, model_id = scaled_down(spec.family, arch), smoke_spec(spec)
            folder = workdir / spec.model_id.replace("/", "--")
            t0 = time.perf_counter()
            build_folder(spec.family, arch, folder, device)
            print(f"# {spec.model_id}: built and saved in {time.perf_counter() - t0:.1f} s", flush=True)
            paths = [e for e in args.encode if e == "eager" or spec.family in STATIC_FAMILIES]
            if len(paths) < len(args.encode):
                print(f"# {spec.model_id}: {spec.family} has no static encode path; eager only", flush=True)
            for precision, encode in itertools.product(args.precisions, paths):
                cfg = model_config(model_id, args.mode, args.scale)
                cfg.backbone.load_in_4bit = precision == "nf4"
                cfg.backbone.encode = encode
                cfg.backbone.compile_mode = args.compile_mode if encode == "static" else "none"
                label = encode if cfg.backbone.compile_mode == "none" else f"{encode}+{args.compile_mode}"
                cfg.backbone.dtype = "bfloat16"
                if not spec.native_audio:  # camera only: the audio encoder is never run, so take the tiny one
                    cfg.backbone.audio_encoder_id = "neon-tiny/whisper"
                if device.type == "cuda":
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                model = NeonVLA(cfg.validate())
                model.backbone = Backbone(cfg.backbone, device, path=folder)
                model.to(model.backbone.device).eval()
                load_s = time.perf_counter() - t0
                weights = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
                attn.add(model.backbone.info.attn_implementation)
                n4 = sum(type(m).__name__ == "Linear4bit" for m in model.backbone.model.modules())
                print(f"# {spec.model_id} {precision} {label}: loaded in {load_s:.1f} s, {n4} nf4 linear layers",
                      flush=True)
                captured = cfg.backbone.compile_mode != "none"  # the heads are captured with the static encode
                policy = NeonPolicy(model, heads=compiled_heads(model, args.compile_mode) if captured else None)
                for batch in args.batches:
                    row = measure(policy, device, batch, rng, args.warmup, args.iters)
                    rows.append({"model_id": spec.model_id, "precision": precision, "encode": label,
                                 "weights_gib": weights, "load_s": load_s, "nf4_linears": n4, **row})
                    print(f"# {spec.model_id} {precision} {label} batch {batch}: chunk p50 "
                          f"{row['chunk']['p50']:.2f} ms", flush=True)
                del policy, model
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n# attention: {', '.join(sorted(attn))}; weights = allocated after loading backbone and heads; "
          "peak = max allocated while timing that row")
    print_table(rows)
    print_ratios(rows)
    print_targets(rows, device_name, args.smoke)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "smoke": args.smoke, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
