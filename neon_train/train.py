"""NeonTrainer: the whole training step on one page.

    config = large_arms_config(); config.hub_model_id = "you/neon-g1-large"
    stats = NeonTrainer(config).train()      # {"best_loss": ..., "steps": ..., ...}

Per optimizer step: `gradient_accumulation` micro-batches of `batch_size`
samples drawn from the soup -> frozen backbone under no_grad (or the feature
cache) -> heads (bf16 autocast on GPUs that have it) -> masked MSE over the
action chunk (padding mask x per-group weights) + speech cross-entropy on voice
samples -> clip to `max_grad_norm` -> paged AdamW 8-bit (beta1 0.85) -> cosine
schedule with warmup. Held-out loss every `eval_steps`; best and last
checkpoints written atomically (weights, norm stats, action space, split,
and for `last` the optimizer and trainer state, so `resume` continues the same
step count and loss curve). The chunk rate comes from the data (the sources'
fps, or the soup's `fps` when it resamples) and is written into the checkpoint's
config, so `predict()`, the safety layer and the robot execute chunks at the
rate they were recorded at. Under torchrun / accelerate launch the heads run
in DistributedDataParallel (NCCL on GPUs, gloo on CPUs).

Prefix conditioning (`model.prefix_max_steps` > 0, training-time real-time
chunking): with probability `prefix_probability` a sample's heads are given
its first d ground-truth steps (d uniform in 1..prefix_max_steps, as
normalised targets) and the loss covers only steps d..T-1 (`draw_prefix`);
the draws are seeded by (seed, rank, micro-batch), so `resume` repeats them.
The held-out loss is always without a prefix: the whole chunk, comparable
from run to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from neon.checkpoint import CheckpointError, verified_manifest
from neon.data.lerobot import DatasetError
from neon.data.soup import DataSoup, collate
from neon.data.sources import LeRobotSource, VoiceCommandSource
from neon.data.stats import norm_stats_for
from neon.hub import push_folder
from neon.model import NeonVLA
from neon.paths import features_dir
from neon_train.augment import augment
from neon_train.config import TrainConfig
from neon_train.evaluate import SPLIT_FILE, seeded_split, split_rule_text
from neon_train.feature_cache import CachedFeatures, FeatureCache
from neon_train.hub import model_card
from neon_train.state_io import state_from_bytes, state_to_bytes

log = logging.getLogger(__name__)
# Expected on CPU-only machines: bitsandbytes keeps the 8-bit states in ordinary memory there.
warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")

TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAIN_CONFIG_FILE = "training_config.json"


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    d = _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
    return d


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed from the sample stream (per rank)
    best_loss: float = float("inf")
    best_step: int = -1
    history: list = field(default_factory=list)  # [step, train loss, lr]
    val_history: list = field(default_factory=list)  # [step, held-out loss]


class MicroBatchStream:
    """Batches of soup indices: epoch after epoch of the soup's seeded sampler, rank r taking every r-th batch."""

    def __init__(self, soup: DataSoup, batch_size: int, seed: int, dist: _Dist, skip: int = 0):
        self.soup, self.batch_size, self.seed, self.dist, self.skip = soup, batch_size, seed, dist, skip

    def __iter__(self):
        epoch, n = 0, 0
        while True:
            sampler = self.soup.sampler(len(self.soup))
            sampler.seed = self.seed
            sampler.set_epoch(epoch)
            idx = list(sampler)
            batches = [idx[i:i + self.batch_size] for i in range(0, len(idx) - self.batch_size + 1, self.batch_size)]
            for b in batches[self.dist.rank::self.dist.world]:
                if n >= self.skip:
                    yield b
                n += 1
            epoch += 1


def _newest_complete(out: Path) -> Path | None:
    """The `last` checkpoint to resume from: the newest whose files match its manifest (a crash while one
    replaced another can leave the previous one beside it, under a hidden name)."""
    found = []
    for d in (d for d in [out / "last", *out.glob(".last.*")] if d.is_dir()):
        try:
            verified_manifest(d)
            found.append((json.loads((d / TRAINER_STATE).read_text())["state"]["step"], str(d)))
        except (CheckpointError, OSError, KeyError, ValueError):
            log.warning("%s is not a complete checkpoint: not resuming from it", d)
    return Path(max(found)[1]) if found else None


def draw_prefix(target: torch.Tensor, max_steps: int, probability: float,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-time real-time chunking: which ground-truth steps each sample's heads are given.

    target: Float[(B, T, D)] normalised targets. Per sample, with `probability`, d is uniform in 1..max_steps,
    else 0. -> (Float[(B, max_steps, D)] the first d targets, zeros after; Long[(B,)] d; Bool[(B, T)] the steps
    given, which the loss must skip).
    """
    b, t = target.shape[:2]
    d = np.where(rng.random(b) < probability, rng.integers(1, max_steps + 1, b), 0)
    length = torch.from_numpy(d).to(target.device)
    given = torch.arange(t, device=target.device)[None, :] < length[:, None]
    prefix = (target[:, :max_steps] * given[:, :max_steps, None]).detach()
    return prefix, length, given


def progress_line(step: int, total: int, loss: float, samples_per_s: float, elapsed_s: float, steps_run: int) -> str:
    """One progress line for the log (tqdm's bar turns itself off without a terminal; this does not)."""
    eta = elapsed_s / max(1, steps_run) * (total - step)
    return (f"step {step}/{total} ({100 * step / max(1, total):.0f}%): loss {loss:.4f}, {samples_per_s:.1f} samples/s, "
            f"{elapsed_s:.0f} s so far, ETA {eta:.0f} s")


class NeonTrainer:
    def __init__(self, config: TrainConfig, device: str | None = None, backbone=None, resume: bool = False,
                 on_step=None):
        """`backbone` lets tests share an already loaded Backbone; `on_step(step, loss)` is called after each step."""
        self.config = config
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._backbone = backbone
        self.resume = resume
        self.on_step = on_step
        self.dist = _Dist()

    # ------------------------------------------------------------------ set-up
    def _prepare_model_config(self, probe: DataSoup) -> None:
        """Fold what the data decides into the model config: relative actions, speech responses, chunk rate."""
        cfg = self.config
        if probe.fps:  # the data's frame rate (or the soup's resampling rate): predict() and the robot execute at it
            cfg.model.fps = float(probe.fps)
        relative, scaler = cfg.data.action_representation()
        if relative:
            groups = cfg.model.action_space().groups
            cfg.model.representation = {g: "relative" for g in groups if g != "locomotion"}
            cfg.model.action_scaler = scaler
        responses = list(cfg.model.speech_responses)
        for src in probe.sources:
            if isinstance(src, VoiceCommandSource):
                responses += [r for r in src.responses if r not in responses]
        cfg.model.speech_responses = responses
        cfg.model.validate()

    def _split(self, probe: DataSoup) -> tuple[dict, dict]:
        cfg, train_eps, val_eps = self.config, {}, {}
        for s, src in zip(cfg.data.sources, probe.sources, strict=True):
            if not isinstance(src, LeRobotSource):
                continue
            n = len(src.episodes)
            if n < 2:
                log.warning("source %r has %d episode(s): it is used for training and held-out loss alike", s.name, n)
                train_eps[s.name] = val_eps[s.name] = list(range(n))
                continue
            held = seeded_split(n, cfg.seed, cfg.val_fraction)
            val_eps[s.name] = held
            train_eps[s.name] = [k for k in range(n) if k not in set(held)]
        return train_eps, val_eps

    def _split_json(self, probe: DataSoup, val_eps: dict) -> str:
        sources = {}
        for s, src in zip(self.config.data.sources, probe.sources, strict=True):
            if s.name in val_eps:
                sources[s.name] = {"path": s.path, "root": str(Path(src.root).resolve()),
                                   "val_episodes": [src.episodes[k].index for k in val_eps[s.name]]}
        return json.dumps({"rule": split_rule_text(self.config.seed, self.config.val_fraction), "seed": self.config.seed,
                           "val_fraction": self.config.val_fraction, "sources": sources}, indent=2) + "\n"

    def _optimizer(self, params):
        cfg = self.config
        if cfg.optim == "paged_adamw_8bit":
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                            weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                 weight_decay=cfg.weight_decay)

    def _lr_lambda(self, total: int):
        warm = min(self.config.warmup_steps, max(0, total - 1))

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return f

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict:
        from tqdm import tqdm

        run = self._setup()
        cfg, state = self.config, run.state
        bar = tqdm(total=run.total, initial=state.step, desc="training", unit="step", disable=not self.dist.main or None)
        t_start, run.samples_seen, interrupted, first = time.perf_counter(), 0, False, state.step
        try:
            while state.step < run.total:
                loss, grad_norm = self._step(run)
                lr = run.scheduler.get_last_lr()[0]
                state.history.append([state.step, loss, lr])
                rate = run.samples_seen / max(1e-9, time.perf_counter() - t_start)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
                bar.update(1)
                if self.dist.main and (state.step % cfg.progress_steps == 0 or state.step == run.total):
                    log.info("%s", progress_line(state.step, run.total, loss, rate, time.perf_counter() - t_start,
                                                 state.step - first))
                if run.writer and state.step % cfg.logging_steps == 0:
                    for name, value in (("loss", loss), ("lr", lr), ("grad_norm", grad_norm), ("samples_per_s", rate)):
                        run.writer.add_scalar(f"train/{name}", value, state.step)
                self._evaluate_and_save(run)
                if self.on_step is not None:
                    self.on_step(state.step, loss)
        except KeyboardInterrupt:
            interrupted = True
            if self.dist.main:
                log.warning("interrupted at step %d: saving %s so --resume can continue", state.step, run.out / "last")
                self._save(run, "last")
        finally:
            bar.close()
            if run.writer:
                run.writer.close()
        return self._summary(run, interrupted, time.perf_counter() - t_start)

    def _setup(self) -> SimpleNamespace:
        """Data, split, statistics, model (fresh or resumed), optimizer, schedule, loaders: one run's state."""
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.config.validate()
        self.dist = dist = _init_distributed()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        run = SimpleNamespace(out=Path(cfg.output_dir), hub=[], state=TrainState())

        probe = DataSoup(cfg.data, cfg.model.action_space(), cfg.model.num_action_steps)
        self._prepare_model_config(probe)
        space, steps = cfg.model.action_space(), cfg.model.num_action_steps
        train_eps, val_eps = self._split(probe)
        run.train_soup = DataSoup(cfg.data, space, steps, cfg.model.speech_responses, episodes=train_eps)
        run.val_soup = DataSoup(cfg.data, space, steps, cfg.model.speech_responses, episodes=val_eps, only=list(val_eps))
        stats, run.per_source = norm_stats_for(run.train_soup.sources, space, cfg.model.action_scaler)
        run.split_json = self._split_json(probe, val_eps)

        run.model = model = NeonVLA(cfg.model, stats)
        last, resumed_optimizer = _newest_complete(run.out) if self.resume else None, None
        if last is not None:
            model.load_state_dict(NeonVLA.from_pretrained(last).state_dict())
            run.state = TrainState(**json.loads((last / TRAINER_STATE).read_text())["state"])
            resumed_optimizer = state_from_bytes((last / OPTIMIZER_FILE).read_bytes())
            log.info("resuming from %s at step %d", last, run.state.step)
        elif self.resume:
            log.warning("--resume: no complete checkpoint in %s, starting from scratch", run.out)
        if self._backbone is not None:
            model.backbone = self._backbone
            model.to(self._backbone.device)
            model.record_backbone_precision()
        else:
            model.load_backbone(self.device)
        run.net = model
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            run.net = DDP(model, device_ids=[dist.local_rank] if model.device.type == "cuda" else None,
                          find_unused_parameters=True)

        samples_per_step = cfg.batch_size * cfg.gradient_accumulation * dist.world
        run.total = cfg.max_steps or cfg.epochs * max(1, math.ceil(len(run.train_soup) / samples_per_step))
        run.optimizer = self._optimizer(model.parameters())
        if resumed_optimizer is not None:
            run.optimizer.load_state_dict(resumed_optimizer)
        run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, self._lr_lambda(run.total))
        for _ in range(run.state.step):  # the schedule is a pure function of the step
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run.scheduler.step()

        run.cache = None
        run.features = run.val_features = live = model.features()
        if cfg.use_feature_cache:
            run.cache = FeatureCache(cfg.feature_cache_dir or features_dir(), cfg.model.backbone, model.audio is not None)
            run.features = CachedFeatures(run.cache, run.train_soup.sources, live)
            run.val_features = CachedFeatures(run.cache, run.val_soup.sources, live)
            for src in run.train_soup.sources + run.val_soup.sources:  # a cached frame is never decoded again
                if isinstance(src, LeRobotSource):
                    src.features_cached = run.cache.source(src).hit
        stream = MicroBatchStream(run.train_soup, cfg.batch_size, cfg.seed, dist, skip=run.state.micro_batches)
        run.batches = iter(DataLoader(run.train_soup, batch_sampler=stream, num_workers=cfg.num_workers,
                                      collate_fn=collate, persistent_workers=cfg.num_workers > 0))
        run.val_batches = self._val_batches(run.val_soup)
        run.group_w = torch.ones(space.dim)
        for g, w in cfg.group_loss_weights.items():
            run.group_w[space.group_slice(g)] = w
        run.group_w = run.group_w.to(model.device)
        run.autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                        if cfg.bf16 and model.device.type == "cuda" and torch.cuda.is_bf16_supported()
                        else contextlib.nullcontext())
        run.writer = SummaryWriter(str(run.out / "runs")) if dist.main else None
        if dist.main:
            log.info("training %s trainable parameters for %d steps (%d samples/step, world %d), chunks at %g fps",
                     f"{model.parameter_counts()['total']:,}", run.total, samples_per_step, dist.world, cfg.model.fps)
        return run

    def _step(self, run) -> tuple[float, float]:
        """One optimizer step over `gradient_accumulation` micro-batches; -> (loss, grad norm)."""
        cfg = self.config
        run.net.train()
        run.optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(cfg.gradient_accumulation):
            batch = next(run.batches)
            run.state.micro_batches += 1
            sync = micro == cfg.gradient_accumulation - 1 or self.dist.world == 1
            with contextlib.nullcontext() if sync else run.net.no_sync():
                loss = self._loss(run, batch)
                (loss / cfg.gradient_accumulation).backward()
            step_loss += loss.item() / cfg.gradient_accumulation
            run.samples_seen += len(batch["obs"]) * self.dist.world
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.state.step += 1
        return step_loss, float(grad_norm)

    def _evaluate_and_save(self, run) -> None:
        """Held-out loss every `eval_steps` (best checkpoint, Hub push); `last` every `save_steps`."""
        cfg, state = self.config, run.state
        if state.step % cfg.eval_steps == 0 or state.step == run.total:
            val = self._val_loss(run)
            state.val_history.append([state.step, val])
            if run.writer:
                run.writer.add_scalar("val/loss", val, state.step)
            if val < state.best_loss:
                state.best_loss, state.best_step = val, state.step
                if self.dist.main:
                    self._save(run, "best")
                    if cfg.push_to_hub:
                        run.hub.append(push_folder(run.out / "best", cfg.hub_model_id, cfg.hub_private,
                                                   f"step {state.step}: held-out loss {val:.5f}"))
        if self.dist.main and (state.step % cfg.save_steps == 0 or state.step == run.total):
            self._save(run, "last")

    def _summary(self, run, interrupted: bool, elapsed: float) -> dict:
        state, out = run.state, run.out
        in_sync = self._replicas_in_sync(run.model) if self.dist.world > 1 else True
        failed = [h for h in run.hub if not h["ok"]]
        if failed and self.dist.main:
            log.error("pushing to the Hub failed %d time(s); the local checkpoints in %s are complete. Last error: %s",
                      len(failed), out, failed[-1]["error"])
        return {
            "best_loss": state.best_loss, "best_step": state.best_step,
            "final_loss": state.history[-1][1] if state.history else float("nan"),
            "steps": state.step, "total_steps": run.total, "interrupted": interrupted,
            "samples_per_s": run.samples_seen / max(1e-9, elapsed), "seconds": elapsed,
            "history": state.history, "val_history": state.val_history,
            "best_checkpoint": str(out / "best"), "last_checkpoint": str(out / "last"),
            "world_size": self.dist.world, "replicas_in_sync": in_sync,
            "feature_cache": ({"hits": run.cache.stats.hits, "misses": run.cache.stats.misses} if run.cache else None),
            "hub": run.hub, "trainable_parameters": run.model.parameter_counts()["total"], "fps": self.config.model.fps,
        }

    # ------------------------------------------------------------------ pieces
    def _loss(self, run, batch: dict) -> torch.Tensor:
        if self.config.image_augmentation:
            rng = np.random.default_rng([self.config.seed, self.dist.rank, int(batch["row"].sum()), len(batch["row"])])
            batch["obs"].images = [augment(im, rng) for im in batch["obs"].images]
        prefix_rng = np.random.default_rng([self.config.seed, self.dist.rank, run.state.micro_batches])
        error, weight, speech = self._chunk_error(run, batch, run.features, run.net, prefix_rng)
        loss = error / weight.clamp(min=1.0)
        speech_target = batch["speech_target"].to(speech.device)
        has_speech = speech_target >= 0
        if has_speech.any():
            loss = loss + self.config.speech_loss_weight * F.cross_entropy(speech[has_speech].float(),
                                                                           speech_target[has_speech])
        else:
            loss = loss + 0.0 * speech.sum()  # keeps DDP's gradient buckets identical across ranks
        return loss

    @staticmethod
    def _chunk_error(run, batch: dict, features, net,
                     prefix_rng: np.random.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum of weighted squared errors over the chunk, sum of weights, speech logits) for a batch.

        With `prefix_rng` and a prefix-conditioned model, samples get ground-truth prefixes (`draw_prefix`) and
        the steps they were given carry no weight.
        """
        with torch.no_grad():
            inp = run.model.inputs(batch["obs"], features, (batch["source"], batch["row"]))
            target = run.model.transform.encode(batch["actions"].to(inp.state.device), inp.state)
        weight = batch["action_mask"].to(target.device).float() * run.group_w
        cfg = run.model.config
        if prefix_rng is not None and cfg.prefix_max_steps > 0:
            inp.prefix, inp.prefix_len, given = draw_prefix(target, cfg.prefix_max_steps, cfg.prefix_probability,
                                                            prefix_rng)
            weight = weight * (~given)[..., None]
        with run.autocast:
            pred, speech = net(inp)
        return (weight * (pred.float() - target) ** 2).sum(), weight.sum(), speech

    def _val_batches(self, soup: DataSoup) -> list[list[int]]:
        if len(soup) == 0:
            return []
        n = min(len(soup), self.config.val_max_samples)
        idx = np.linspace(0, len(soup) - 1, n).astype(int).tolist()  # spread over every held-out episode
        return [idx[i:i + self.config.batch_size * 4] for i in range(0, n, self.config.batch_size * 4)]

    @torch.no_grad()
    def _val_loss(self, run) -> float:
        run.net.eval()
        total, weight = 0.0, 0.0
        for b in run.val_batches:
            error, w, _ = self._chunk_error(run, collate([run.val_soup[i] for i in b]), run.val_features, run.model)
            total, weight = total + float(error), weight + float(w)
        return total / weight if weight else float("nan")

    def _save(self, run, which: str) -> None:
        """Write `best` or `last` (with optimizer and trainer state, so `resume` continues the same curve)."""
        cfg, state = self.config, run.state
        extra = {
            SPLIT_FILE: run.split_json,
            TRAIN_CONFIG_FILE: cfg.to_json(),
            "norm_stats_per_source.json": json.dumps({k: v.to_dict() for k, v in run.per_source.items()}, indent=2),
            "README.md": model_card(cfg, state.best_loss, state.best_step, state.step),
        }
        if which == "last":
            extra[OPTIMIZER_FILE] = state_to_bytes(run.optimizer.state_dict())
            extra[TRAINER_STATE] = json.dumps({"state": state.__dict__}, indent=2)
        run.model.trained_steps = state.step
        run.model.save_pretrained(run.out / which, extra)

    def _replicas_in_sync(self, model: NeonVLA) -> bool:
        import torch.distributed as dist

        h = hashlib.sha256()
        for p in model.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
        digest = torch.tensor(list(h.digest()[:8]), dtype=torch.int64)
        gathered = [torch.zeros_like(digest) for _ in range(self.dist.world)]
        dist.all_gather(gathered, digest)
        ok = all(torch.equal(g, gathered[0]) for g in gathered)
        if self.dist.main:
            log.warning("DDP replicas in sync: %s (world size %d)", ok, self.dist.world)
        return ok


__all__ = ["NeonTrainer", "TrainConfig", "DatasetError"]
