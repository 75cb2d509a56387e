"""What reading a middle layer saves: the language-model layers Neon loads and runs per backbone (a table).

    .venv/bin/python bench/bench_truncation.py

Neon reads hidden layer L (`BackboneConfig.hidden_layer`, by default the registry's `feature_layer`, the middle)
and loads the language model only up to it (neon.backbones.loader). For every full-size backbone, built on the
`meta` device from its published configuration (bench/published_configs.py: nothing is downloaded, nothing is
allocated), this prints:

    layers      L / the language model's depth
    LM params   language-model parameters loaded (embeddings + layers 1..L) / all of them (+ the final norm)
    saved       weight memory of the dropped layers, bf16 and nf4, and as a share of the whole backbone's
    LM time     the language model's expected latency share, L / depth (every decoder layer costs the same)

nf4 counts each linear weight at 0.5 byte plus bitsandbytes' double-quantised block scales (one 8-bit absmax per
64 weights and one fp32 scale per 256 blocks); everything else (norms, biases, embeddings) stays bf16, as
bitsandbytes leaves it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gpu import hf_model
from published_configs import PUBLISHED

from neon.backbones.loader import DENSE_MEMORY_SHARE
from neon.backbones.registry import get_spec
from neon.config import BackboneConfig

NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # per quantised weight: 4 bits, its block's 8-bit absmax, nested fp32
GB = 1e9


def weight_bytes(modules: list[torch.nn.Module], nf4: bool, unquantised: tuple = ()) -> float:
    """Bytes of the modules' parameters (tied ones once) in bf16, or in nf4 where bitsandbytes quantises: linear
    weights, except the `unquantised` modules (the output head, which it leaves in bf16)."""
    total, seen = 0.0, set()
    for module in modules:
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                quantised = nf4 and isinstance(m, torch.nn.Linear) and name == "weight" and m not in unquantised
                total += p.numel() * (NF4_BYTES if quantised else 2)
    return total


def count(modules: list[torch.nn.Module]) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


def row(model_id: str) -> dict:
    """Kept and dropped parts of `model_id`'s language model at its default feature layer."""
    spec = get_spec(model_id)
    cfg = BackboneConfig(model_id=model_id)
    cfg.validate()
    cls, config = hf_model(spec.family, PUBLISHED[model_id])
    with torch.device("meta"):
        model = cls._from_config(config)
    vlm = getattr(model, "thinker", model)  # the Omni class holds the thinker
    lm = vlm.model.language_model
    keep = cfg.layers_run
    dropped = [*lm.layers[keep:], lm.norm]
    head = vlm.lm_head.weight  # dropped at load too (neon.backbones.loader.drop_output_head); freed unless tied
    head_bytes = 0 if head is vlm.get_input_embeddings().weight else head.numel() * 2
    return {
        "model_id": model_id, "layer": keep, "depth": len(lm.layers), "lm_total": count([lm]),
        "lm_kept": count([lm]) - count(dropped),
        "saved_bf16": weight_bytes(dropped, False), "saved_nf4": weight_bytes(dropped, True),
        "total_bf16": weight_bytes([model], False), "total_nf4": weight_bytes([model], True, (vlm.lm_head,)),
        "head": head_bytes,  # bf16 in both precisions: bitsandbytes leaves the output head unquantised
    }


def loaded(r: dict, precision: str) -> float:
    """Bytes of the backbone as Neon loads it: without the layers after the one read and the output head."""
    return r[f"total_{precision}"] - r[f"saved_{precision}"] - r["head"]


def auto_dense_from_gib(r: dict) -> float:
    """The smallest GPU memory (GiB) on which `load_in_4bit: "auto"` loads the cut backbone dense (bf16)."""
    return loaded(r, "bf16") / DENSE_MEMORY_SHARE / 2**30


def share(saved: float, total: float) -> str:
    return f"{saved / GB:6.2f} ({100 * saved / total:4.1f}%)"


def print_table(rows: list[dict]) -> None:
    print(f"{'backbone':28s} {'layers':>7s} {'LM params (M)':>17s} {'kept':>5s} {'saved bf16 GB':>16s} "
          f"{'saved nf4 GB':>15s} {'head GB':>7s} {'loaded bf16/nf4 GB':>18s} {'LM time':>7s} {'auto: bf16 from':>15s}")
    for r in rows:
        print(f"{r['model_id']:28s} {r['layer']:3d}/{r['depth']:<3d} {r['lm_kept'] / 1e6:8.0f}/{r['lm_total'] / 1e6:<8.0f} "
              f"{100 * r['lm_kept'] / r['lm_total']:4.0f}% {share(r['saved_bf16'], r['total_bf16']):>16s} "
              f"{share(r['saved_nf4'], r['total_nf4']):>15s} {r['head'] / GB:7.2f} "
              f"{loaded(r, 'bf16') / GB:9.2f}/{loaded(r, 'nf4') / GB:<8.2f} {r['layer'] / r['depth']:7.2f} "
              f"{auto_dense_from_gib(r):11.1f} GiB")


def main() -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the published configs trip warnings about generation ids
    rows = [row(model_id) for model_id in PUBLISHED]
    print("# language model loaded up to the default feature layer (the middle); saved = the dropped layers' "
          "weights, (% of the whole backbone's); head = the token output head, dropped too (0: tied to the input "
          "embeddings, nothing freed); loaded = what is left; auto: bf16 from = the GPU memory from which load_in_4bit \"auto\" "
          "loads the cut backbone in bf16 instead of nf4")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
