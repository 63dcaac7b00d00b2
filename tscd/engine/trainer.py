"""The training job: a thin loop around ``TSCDObjective`` (no loss math here).

Writes under the work dir: ``checkpoints/last.pth`` (+ ``iter_<n>.pth`` every
``train.ckpt_interval``), ``metrics.json`` (latest evaluation and the whole history),
``vis/iter_<n>.png`` grids, ``config.yaml`` and TensorBoard events when tensorboard is
installed. Under torchrun, only rank 0 logs, evaluates and writes.
"""
from __future__ import annotations

import logging
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..config import to_dict
from ..data import StreamSampler, build_dataset, collate
from . import checkpoint as ckpt_io
from .builders import build_model, build_objective, build_pseudo_labeler, eval_loader, pick_device, setup_runtime
from .distributed import init_distributed
from .evaluator import Evaluator
from .io import atomic_write, write_json
from .schedule import build_optimizer, build_scheduler
from .visualize import save_grid

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _sigterm_as_interrupt():
    """Treat SIGTERM (a scheduler's pre-emption, ``kill``) like Ctrl-C: save, then stop.
    Returns the previous handler (None outside the main thread, where it cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


class Trainer:
    """``Trainer(cfg, work_dir, resume=False).train()`` -> the last metrics dict."""

    def __init__(self, cfg, work_dir, resume: bool = False, progress: bool = True):
        self.cfg, self.work_dir, self.progress = cfg, Path(work_dir), progress
        setup_runtime(cfg)
        self.rank, self.world, self.device = init_distributed(pick_device(cfg.train.device))
        self.distributed, self.main = self.world > 1, self.rank == 0
        seed_everything(cfg.seed + self.rank)

        self.model = build_model(cfg).to(self.device)
        self.pseudo_labeler = build_pseudo_labeler(cfg)
        self.objective = build_objective(cfg, self.pseudo_labeler).to(self.device)
        net = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
        self.net = net
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.train_set = build_dataset(cfg, cfg.data.train_split, train=True)
        self.val_set = build_dataset(cfg, cfg.data.val_split, train=False) if self.main else None
        self.step, self.history, self.wall_offset = 0, [], 0.0
        self._resume_state = None
        if resume:
            path = self.work_dir / "checkpoints" / "last.pth"
            state = ckpt_io.load(path)
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.history = state["step"], state.get("history", [])
            self.wall_offset = state.get("wall_time", 0.0)
            self._resume_state = state["rng"][self.rank] if self.rank < len(state["rng"]) else state["rng"][0]

    # ---- persistence -------------------------------------------------------------------
    def _gather_rng(self) -> list:
        state = ckpt_io.rng_state()
        if not self.distributed:
            return [state]
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def save(self, name: str = "last.pth") -> Path | None:
        rng = self._gather_rng()
        if not self.main:
            return None
        path = self.work_dir / "checkpoints" / name
        ckpt_io.atomic_save({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": rng,
            "history": self.history, "wall_time": self.wall_time(), "config": to_dict(self.cfg),
            "class_names": list(self.train_set.class_names),
        }, path)
        return path

    def wall_time(self) -> float:
        return self.wall_offset + (time.time() - self._t0)

    # ---- evaluation --------------------------------------------------------------------
    def evaluate(self) -> dict:
        e = self.cfg.eval
        evaluator = Evaluator(self.cfg, self.pseudo_labeler, self.val_set.class_names, self.device)
        metrics = evaluator.run(self.model, eval_loader(self.val_set, e.batch_size), e.max_images, e.num_vis)
        metrics.update(iteration=self.step, wall_time=round(self.wall_time(), 1))
        self.history = [h for h in self.history if h["iteration"] != self.step] + [metrics]
        write_json({"latest": metrics, "history": self.history}, self.work_dir / "metrics.json")
        grid = self.work_dir / "vis" / f"iter_{self.step:06d}.png"
        save_grid(evaluator.samples, grid)
        if self.writer is not None:
            for k in ("seg_miou", "cam_miou", "pseudo_miou", "aff_miou", "cls_f1"):
                self.writer.add_scalar(f"val/{k}", metrics[k], self.step)
            if grid.exists():
                from PIL import Image
                self.writer.add_image("val/grid", np.asarray(Image.open(grid)), self.step, dataformats="HWC")
        return metrics

    # ---- loop ----------------------------------------------------------------------------
    def _loader(self):
        c = self.cfg.data
        sampler = StreamSampler(len(self.train_set), self.cfg.seed, start=self.step * c.batch_size * self.world,
                                rank=self.rank, world_size=self.world)
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=c.batch_size, sampler=sampler,
                                             num_workers=c.num_workers, collate_fn=collate,
                                             persistent_workers=c.num_workers > 0, prefetch_factor=None
                                             if c.num_workers == 0 else 4)
        return iter(loader)

    def _open_writer(self):
        if not self.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.work_dir / "tb"))

    def train(self, stop_at: int | None = None) -> dict:
        """Train to ``train.max_iters`` (or pause after iteration ``stop_at``, saving last.pth)."""
        cfg, t = self.cfg, self.cfg.train
        end = t.max_iters if stop_at is None else min(stop_at, t.max_iters)
        if self.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            config_text = yaml.safe_dump(to_dict(cfg), sort_keys=False).encode()
            atomic_write(self.work_dir / "config.yaml", lambda f: f.write(config_text))
        self.writer = self._open_writer()
        self._t0 = time.time()
        batches = self._loader()  # creating the iterator draws from the RNG: restore after it
        if self._resume_state is not None:
            ckpt_io.set_rng_state(self._resume_state)
        metrics = self.history[-1] if self.history else {}
        bar = None
        if self.main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=t.max_iters, initial=self.step, desc="train", dynamic_ncols=True)
        amp = t.bf16 and self.device.type == "cuda"
        self.net.train()
        previous_sigterm = _sigterm_as_interrupt()
        try:
            while self.step < end:
                batch = next(batches)
                batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v
                         for k, v in batch.items()}
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    total, terms, _ = self.objective(self.net, self.model, batch, self.step + 1)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"loss is {total.item()} at iteration {self.step + 1} "
                                             f"({ {k: float(v) for k, v in terms.items()} })")
                self.optimizer.zero_grad(set_to_none=True)
                total.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self._log(bar, total, terms)
                if self.main and (self.step % t.eval_interval == 0 or self.step == t.max_iters):
                    metrics = self.evaluate()
                    logger.info(self._summary(metrics))
                if self.distributed and self.step % t.eval_interval == 0:
                    dist.barrier()
                if t.ckpt_interval and self.step % t.ckpt_interval == 0 and self.step != t.max_iters:
                    self.save(f"iter_{self.step:06d}.pth")
                    self.save()
        except KeyboardInterrupt:
            path = self.save()
            if bar is not None:
                bar.close()
            if self.main:
                logger.warning("interrupted at iteration %d; saved %s (continue with --resume)", self.step, path)
            raise
        finally:
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)
            if self.writer is not None:
                self.writer.close()
        if bar is not None:
            bar.close()
        self.save()
        if self.main and not metrics and self.step == t.max_iters:
            metrics = self.evaluate()
        return metrics

    def _log(self, bar, total, terms) -> None:
        if bar is not None:
            bar.update(self.step - bar.n)
        if not self.main or (self.step % self.cfg.train.log_interval and self.step != 1):
            return
        lr = self.optimizer.param_groups[0]["lr"]
        values = {k: float(v.detach()) for k, v in terms.items()}
        if bar is not None:
            bar.set_postfix({"loss": f"{float(total.detach()):.3f}", **{k: f"{v:.3g}" for k, v in values.items()},
                             "lr": f"{lr:.2e}"}, refresh=False)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", float(total.detach()), self.step)
            self.writer.add_scalar("train/lr", lr, self.step)
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, self.step)

    @staticmethod
    def _summary(m: dict) -> str:
        return (f"iter {m['iteration']}: seg mIoU {m['seg_miou']:.3f} | CAM {m['cam_miou']:.3f} | "
                f"pseudo {m['pseudo_miou']:.3f} | aff {m['aff_miou']:.3f} | cls F1 {m['cls_f1']:.3f} "
                f"| {m['wall_time']:.0f} s")



def run_training(cfg, work_dir=None, resume: bool = False) -> tuple[dict, Path]:
    """Train ``cfg`` into ``work_dir`` (default: ``cfg.work_dir``); (last metrics, work dir).

    ``resume`` continues from ``WORK_DIR/checkpoints/last.pth``, which must exist.
    """
    work = Path(work_dir or cfg.work_dir)
    if resume and not (work / "checkpoints" / "last.pth").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {work / 'checkpoints' / 'last.pth'}")
    cfg.work_dir = str(work)
    return Trainer(cfg, work, resume=resume).train(), work
