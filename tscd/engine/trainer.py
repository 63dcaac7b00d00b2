"""The training job: a thin loop around ``TSCDObjective`` (no loss math here).

Writes under the work dir: ``checkpoints/last.pth`` (+ ``iter_<n>.pth`` every
``train.ckpt_interval``; last.pth also every ``train.ckpt_minutes`` of training; a resumed run
continues from the newest of them),
``metrics.json`` (latest evaluation and the whole history), ``vis/iter_<n>.png`` grids,
``config.yaml`` and TensorBoard events when tensorboard is installed. Under torchrun, only rank 0
logs, evaluates, holds the work dir and writes.

Nothing is lost, nothing half-done is kept:

* one run at a time in a work dir, and a run already there is continued or replaced only when
  asked (:func:`~tscd.engine.workdir.claim_work_dir`, with ``resume`` / ``overwrite``);
* checkpoints hold the state between two iterations. SIGINT / SIGTERM let the iteration under
  way finish, save last.pth and raise :class:`TrainingInterrupted` (a second signal stops at
  once), also when the signal went to every process of the run, loader workers included
  (Ctrl-C in a terminal, ``kill -- -PGID``, a scheduler cancelling the job: :mod:`.signals`); any other
  failure in the loop saves last.pth as it was when the last iteration ended
  (:meth:`Trainer._keep_last_good_state`). Resuming either gives an uninterrupted run's
  weights, bit for bit;
* a non-finite loss stops the run naming the term and the iteration (:class:`NonFiniteLossError`);
  non-finite weights are never saved (:class:`NonFiniteWeightsError`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..config import config_from_dict, to_dict
from ..data import StreamSampler, build_dataset, collate, resolve_num_classes
from ..data.summary import describe_data
from ..models.pretrained import is_remote
from . import checkpoint
from .builders import build_model, build_objective, build_pseudo_labeler, check_crop_size, eval_loader
from .checkpoint import check_config_compatible
from .distributed import init_distributed
from .eta import RunClock, format_duration
from .evaluator import Evaluator
from .io import atomic_write, write_json
from .runtime import check_backend, out_of_memory, pick_device, prepare_backends, setup_runtime
from .schedule import build_optimizer, build_scheduler
from .signals import (
    StopSignals,
    TrainingInterrupted,
    leave_interrupts_to_the_main_process,
    shut_down_workers,
)
from .visualize import save_grid
from .workdir import (
    WorkDirLock,
    check_run_inputs,
    claim_work_dir,
    existing_run,
    periodic_checkpoints,
    remove_run,
)

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class NonFiniteLossError(FloatingPointError):
    """The loss of ``iteration`` is not finite; ``terms`` names the non-finite terms (cls, seg,
    dense, aff, scd, er; empty when only their weighted sum overflowed, or on another rank)."""

    def __init__(self, iteration: int, values: dict[str, float], elsewhere: bool = False):
        self.iteration = iteration
        self.terms = [name for name, value in values.items() if not math.isfinite(value)]
        if elsewhere:
            what = "on another rank"
        else:
            finite = ", ".join(f"{name} {value:.4g}" for name, value in values.items() if math.isfinite(value))
            what = (": " + ", ".join(f"{name} is {values[name]}" for name in self.terms) if self.terms
                    else ": the weighted sum of the terms is not finite") + (f" ({finite})" if finite else "")
        super().__init__(f"non-finite loss at iteration {iteration}{what}")


class NonFiniteWeightsError(FloatingPointError):
    """A checkpoint refused: the weights are not finite."""


@contextlib.contextmanager
def _deterministic_algorithms(enabled: bool):
    """``torch.use_deterministic_algorithms(True)`` inside when ``enabled`` (``train.deterministic``);
    the process's setting again after."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


class Trainer:
    """``Trainer(cfg, work_dir, resume=False).train()`` -> the last metrics dict.

    ``resume`` continues the run in ``work_dir`` from its newest checkpoint (its config must
    agree on the model's shape; other changed settings are logged); ``overwrite`` replaces a run
    there, once everything is built and checked; ``reads``: files the run reads besides the
    dataset and ``model.pretrained`` (the config file), none of which it may write over or
    delete (:func:`~tscd.engine.workdir.check_run_inputs`). Rank 0 holds the work dir
    (:func:`~tscd.engine.workdir.claim_work_dir`) from construction until :meth:`train` returns
    or :meth:`close`.
    """

    def __init__(self, cfg, work_dir, resume: bool = False, progress: bool = True, overwrite: bool = False,
                 reads=()):
        self.work_dir, self.progress = Path(work_dir), progress
        # the run records its real work dir and class count (data.num_classes may be left to the dataset)
        self.cfg = cfg = resolve_num_classes(dataclasses.replace(cfg, work_dir=str(self.work_dir)))
        setup_runtime(cfg)
        if cfg.train.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        self.rank, self.world, self.device = init_distributed(pick_device(cfg.train.device))
        check_backend(cfg, self.device)
        self.distributed, self.main = self.world > 1, self.rank == 0
        self._lock = claim_work_dir(self.work_dir, resume, overwrite) if self.main else None
        try:
            self._build(resume)
            if self.main:
                pretrained = cfg.model.pretrained
                local = [Path(pretrained)] if pretrained and not resume and not is_remote(pretrained) else []
                check_run_inputs(self.work_dir, [*map(Path, reads), *local], [self.train_set, self.val_set], resume)
            if self.main and overwrite and existing_run(self.work_dir):
                logger.warning("--overwrite: deleted the %d files of the previous run in %s",
                               remove_run(self.work_dir), self.work_dir)
        except BaseException:
            self.close()
            raise

    def _resume_from(self) -> tuple[Path, dict]:
        """(path, state) of the checkpoint a resumed run continues from: ``last.pth``, or the
        ``iter_<n>.pth`` of a later iteration where there is one (saved when last.pth could not
        be, on a full disk say)."""
        path = self.work_dir / "checkpoints" / "last.pth"
        state = checkpoint.load(path) if path.is_file() else None
        later = {step: p for step, p in periodic_checkpoints(self.work_dir).items()
                 if state is None or step > state["step"]}
        if later:
            newest = max(later)
            if self.main:
                logger.warning("resuming from %s (iteration %d): %s", later[newest].name, newest,
                               "no last.pth" if state is None else f"last.pth holds iteration {state['step']}")
            path, state = later[newest], checkpoint.load(later[newest])
        return path, state

    def _build(self, resume: bool) -> None:
        cfg = self.cfg
        path, state = self._resume_from() if resume else (None, None)
        if state is not None and "config" in state:
            changed = check_config_compatible(config_from_dict(state["config"]), cfg, path, resuming=True)
            if changed and self.main:
                logger.warning("resuming %s with changed settings: %s", path,
                               ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items()))
        seed_everything(cfg.seed + self.rank)
        self.model = build_model(cfg, pretrained=state is None).to(self.device)
        check_crop_size(self.model, cfg, self.device)
        self.pseudo_labeler = build_pseudo_labeler(cfg)
        self.objective = build_objective(cfg, self.pseudo_labeler).to(self.device)
        prepare_backends(cfg, self.device)
        net = self.model
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)
        self.net = net
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.train_set = build_dataset(cfg, cfg.data.train_split, train=True)
        self.val_set = build_dataset(cfg, cfg.data.val_split, train=False) if self.main else None
        if self.val_set is not None:  # an image the evaluation cannot take is named now, not at the first one
            Evaluator(cfg, self.pseudo_labeler, self.val_set.class_names, self.device).check_sizes(
                self.model, self.val_set, cfg.eval.max_images)
        if self.main:
            logger.info(describe_data(cfg, self.train_set, self.val_set))
        self.step, self.history, self.wall_offset = 0, [], 0.0
        self._resume_rng = None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.step, self.history = state["step"], state.get("history", [])
            self.wall_offset = state.get("wall_time", 0.0)
            self._resume_rng = state["rng"][self.rank] if self.rank < len(state["rng"]) else state["rng"][0]
        self._saved_step = self.step  # the iteration last.pth holds (0: none worth keeping)
        self._periodic_step = None  # the iteration of the last iter_<n>.pth written
        self._boundary = None  # (random states, buffers) as the iteration under way found them
        self._updating = False  # inside the weights' update, which cannot be undone
        self.writer = None

    def close(self) -> None:
        """Let go of the work dir (done by :meth:`train` when it returns)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---- persistence -------------------------------------------------------------------
    def _gather_rng(self) -> list:
        state = checkpoint.rng_state()
        if not self.distributed:
            return [state]
        states = [None] * self.world
        dist.all_gather_object(states, state)
        return states

    def save(self, name: str = "last.pth") -> Path | None:
        """Write checkpoint ``name`` of the current state (every rank calls this; rank 0 writes)."""
        rng = self._gather_rng()
        path = self._write(name, rng) if self.main else None
        if name == "last.pth":
            self._saved_step, self._last_save = self.step, time.monotonic()
        else:
            self._periodic_step = self.step
        return path

    def _write(self, name: str, rng: list) -> Path:
        """Rank 0: checkpoint ``name`` of the model, optimiser, scheduler and step with the random
        states ``rng`` (one per rank); :class:`NonFiniteWeightsError` instead of non-finite weights."""
        model = self.model.state_dict()
        if not torch.stack([torch.isfinite(v).all() for v in model.values() if v.is_floating_point()]).all():
            kept = f"; last.pth keeps iteration {self._saved_step}" if self._saved_step else ""
            raise NonFiniteWeightsError(f"non-finite weights after iteration {self.step} (a non-finite gradient): "
                                        f"{name} not saved{kept}")
        path = self.work_dir / "checkpoints" / name
        checkpoint.atomic_save({
            "model": model, "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "step": self.step, "rng": rng,
            "history": self.history, "wall_time": self.wall_time(), "config": to_dict(self.cfg),
            "class_names": list(self.train_set.class_names),
        }, path)
        return path

    def _keep_last_good_state(self, err: BaseException) -> None:
        """After ``err`` in the loop: rank 0 saves last.pth as it was when the last iteration ended
        (no collective: with its own random state only). An iteration cut short gets its buffers
        (BatchNorm statistics) and random states back first; one cut short inside the weights'
        update cannot be undone, and last.pth stays as it was."""
        if not self.main:
            return
        last = self.work_dir / "checkpoints" / "last.pth"
        if self._updating:
            logger.error("stopped while updating the weights in iteration %d: %s not updated", self.step + 1, last)
            return
        rng = checkpoint.rng_state()
        if self._boundary is not None:
            rng, buffers = self._boundary
            with torch.no_grad():
                for name, buffer in self.model.named_buffers():
                    buffer.copy_(buffers[name])
        if self.step == self._saved_step or isinstance(err, NonFiniteWeightsError):
            return
        try:
            path = self._write("last.pth", [rng])
        except Exception as save_err:  # noqa: BLE001 - reported, the original error goes on
            logger.error("could not save iteration %d: %s", self.step, save_err)
            if self._periodic_step == self.step:
                logger.warning("%s holds iteration %d: continue with --resume", f"iter_{self.step:06d}.pth",
                               self.step)
            return
        if isinstance(err, KeyboardInterrupt):
            logger.warning("interrupted at iteration %d; saved %s (continue with --resume)", self.step, path)
        else:
            logger.warning("the run failed after iteration %d; saved %s (fix the cause, then continue with "
                           "--resume)", self.step, path)

    def wall_time(self) -> float:
        return self.wall_offset + (time.time() - self._t0)

    # ---- evaluation --------------------------------------------------------------------
    def evaluate(self) -> dict:
        eval_cfg = self.cfg.eval
        evaluator = Evaluator(self.cfg, self.pseudo_labeler, self.val_set.class_names, self.device)
        metrics = evaluator.run(self.model, eval_loader(self.val_set, eval_cfg.batch_size), eval_cfg.max_images,
                                eval_cfg.num_vis)
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
        data = self.cfg.data
        sampler = StreamSampler(len(self.train_set), self.cfg.seed, start=self.step * data.batch_size * self.world,
                                rank=self.rank, world_size=self.world)
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=data.batch_size, sampler=sampler,
                                             num_workers=data.num_workers, collate_fn=collate,
                                             persistent_workers=data.num_workers > 0, prefetch_factor=None
                                             if data.num_workers == 0 else 4,
                                             worker_init_fn=leave_interrupts_to_the_main_process)
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
        """Train to ``train.max_iters`` (or pause after iteration ``stop_at``, saving last.pth).

        A run already at its end trains nothing and writes nothing. Raises
        :class:`TrainingInterrupted` after a signal, once last.pth is saved.
        """
        train = self.cfg.train
        end = train.max_iters if stop_at is None else min(stop_at, train.max_iters)
        try:
            if self.step >= end:
                if self.main and self.step >= train.max_iters > 0:
                    logger.warning("%s: the run already finished at iteration %d (train.max_iters=%d): nothing to "
                                   "train (raise --max-iters to continue it, or start again with --overwrite)",
                                   self.work_dir, self.step, train.max_iters)
                return self.history[-1] if self.history else {}
            if self.main and self._lock is None:
                self._lock = WorkDirLock(self.work_dir).acquire()
            with StopSignals() as signals, _deterministic_algorithms(train.deterministic):
                return self._train(end, signals)
        finally:
            self.close()

    def _device_name(self) -> str:
        """The device the ETA holds for: ``cuda:0 (NVIDIA H100 …)`` or ``cpu (2 threads)``."""
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({torch.get_num_threads()} threads)"

    def _train(self, end: int, signals: StopSignals) -> dict:
        train = self.cfg.train
        if self.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            config_text = yaml.safe_dump(to_dict(self.cfg), sort_keys=False).encode()
            atomic_write(self.work_dir / "config.yaml", lambda f: f.write(config_text))
        self.writer = self._open_writer()
        self._t0, self._last_save = time.time(), time.monotonic()
        rng = self._resume_rng or checkpoint.rng_state()
        batches = self._loader()  # creating the iterator draws from the RNG (the workers' seeds): undone
        checkpoint.set_rng_state(rng)
        self._resume_rng = None
        metrics = self.history[-1] if self.history else {}
        bar = None
        if self.main and self.progress:
            from tqdm import tqdm
            bar = tqdm(total=train.max_iters, initial=self.step, desc="train", dynamic_ncols=True)
        self.net.train()
        clock = RunClock(self.step, end, train.max_iters, self.cfg.loss.stage1_iters, train.eval_interval)
        stop = 0
        try:
            while self.step < end and not stop:
                started = time.perf_counter()
                total, terms = self._step(batches)
                clock.step_done(self.step, time.perf_counter() - started)
                self._log(bar, total, terms)
                if self.main and (self.step % train.eval_interval == 0 or self.step == train.max_iters):
                    started = time.perf_counter()
                    metrics = self.evaluate()
                    clock.eval_done(time.perf_counter() - started)
                    logger.info(self._summary(metrics))
                if self.main and clock.report_due(self.step):
                    seconds, how = clock.remaining(self.step)
                    logger.info("ETA on %s: about %s left (%s)", self._device_name(), format_duration(seconds), how)
                if self.distributed and self.step % train.eval_interval == 0:
                    dist.barrier()
                if train.ckpt_interval and self.step % train.ckpt_interval == 0 and self.step != train.max_iters:
                    self.save(f"iter_{self.step:06d}.pth")
                    self.save()
                # the step boundary: a signal received, or last.pth due by wall time, on any rank
                due = train.ckpt_minutes > 0 and time.monotonic() - self._last_save >= 60 * train.ckpt_minutes
                stop, due = self._max_over_ranks(signals.signum, int(due))
                if due and self._saved_step != self.step:
                    self.save()
            shut_down_workers(batches)
        except BaseException as err:
            shut_down_workers(batches)
            interrupted = signals.interruption(err)
            if interrupted is not None:
                self._keep_last_good_state(interrupted)
                raise interrupted from err
            self._keep_last_good_state(err)
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.writer is not None:
                self.writer.close()
        path = self.save() if self._saved_step != self.step else self.work_dir / "checkpoints" / "last.pth"
        if stop and self.step < end:  # (a signal during the last iteration finds the run done)
            if self.main:
                logger.warning("interrupted at iteration %d; saved %s (continue with --resume)", self.step, path)
            raise TrainingInterrupted(stop)
        return metrics

    def _step(self, batches) -> tuple[torch.Tensor, dict]:
        """:meth:`_iteration`, where running out of memory is a ``MemoryError`` naming the settings
        that size a step."""
        try:
            return self._iteration(batches)
        except (RuntimeError, MemoryError) as err:
            if not out_of_memory(err):
                raise
            data = self.cfg.data
            lines = str(err).strip().splitlines()
            raise MemoryError(f"out of memory in training iteration {self.step + 1} with data.batch_size="
                              f"{data.batch_size} and data.crop_size={data.crop_size} (model.backbone="
                              f"{self.cfg.model.backbone}): lower either ({lines[0] if lines else type(err).__name__})"
                              ) from err

    def _iteration(self, batches) -> tuple[torch.Tensor, dict]:
        """One optimisation step: (total loss, its terms). Until the update, a failure can restore
        the state the step started from (:attr:`_boundary`); a non-finite loss on any rank raises
        :class:`NonFiniteLossError` before it."""
        train = self.cfg.train
        self._boundary = (checkpoint.rng_state(), {n: b.clone() for n, b in self.model.named_buffers()})
        batch = next(batches)
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=train.bf16 and self.device.type == "cuda"):
            total, terms, _ = self.objective(self.net, batch, self.step + 1)
        finite = bool(torch.isfinite(total))
        if self._max_over_ranks(int(not finite))[0]:
            raise NonFiniteLossError(self.step + 1, {k: float(v.detach()) for k, v in terms.items()}, finite)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self._updating = True
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self._updating, self._boundary = False, None
        return total, terms

    def _max_over_ranks(self, *flags: int) -> list[int]:
        """Each flag's maximum over the ranks (the flags themselves outside torchrun)."""
        if not self.distributed:
            return list(flags)
        values = torch.tensor(flags, device=self.device)
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return values.tolist()

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



def run_training(cfg, work_dir=None, resume: bool = False, overwrite: bool = False, reads=()) -> tuple[dict, Path]:
    """Train ``cfg`` into ``work_dir`` (default: ``cfg.work_dir``); (last metrics, work dir).

    ``resume`` continues from ``WORK_DIR/checkpoints/last.pth``, which must exist; ``overwrite``
    replaces a run already in ``work_dir`` (without either, such a run is an error); ``reads``:
    the config file, which the run must not write over (:class:`Trainer`).
    """
    work = Path(work_dir or cfg.work_dir)
    return Trainer(cfg, work, resume=resume, overwrite=overwrite, reads=reads).train(), work
