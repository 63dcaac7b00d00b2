"""Command line: ``tscd train | eval | infer | pseudo-labels | demo | data`` (also ``python -m tscd``).

Argument parsing only: each command builds its configuration — flags go into the config
tree as typed values, ``key=value`` overrides as the config module parses them — and calls
the job in ``tscd.engine``. Messages go through ``logging`` (``TSCD_LOG_LEVEL``). Every
failure prints one line ``tscd: error: ...`` and exits non-zero; ``--debug`` shows the
traceback instead. Subcommands live in :data:`COMMANDS` (name -> (add_arguments, run, help)).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from .constants import CRF_CHOICES, CRF_PRESETS, DEFAULT_CRF_PRESET, REFINE_MODES
from .log import configure_logging

BACKEND_CHOICES = ("auto", "torch", "triton", "cpp")
logger = logging.getLogger("tscd.cli")


# ---- configuration from the command line -------------------------------------------------
def _scales(text: str) -> list[float]:
    try:
        return [float(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--scales must be comma-separated numbers, got {text!r}") from None


#: flag attribute -> (config key, conversion of the parsed value)
_FLAG_KEYS = {
    "data_root": ("data.root", str),
    "max_iters": ("train.max_iters", int),
    "backend": ("train.backend", str),
    "scales": ("eval.scales", _scales),
    "flip": ("eval.flip", bool),
    "crf": ("eval.crf", str),
    "crf_preset": ("eval.crf_preset", str),
    "resize_long": ("eval.resize_long", int),
    "cam_metrics": ("eval.cam_metrics", bool),
}


def flag_values(args) -> dict:
    """The config values of the flags given on the command line, typed (never re-parsed)."""
    return {key: convert(getattr(args, flag)) for flag, (key, convert) in _FLAG_KEYS.items()
            if getattr(args, flag, None) is not None}


def _config(args):
    from .config import load_config

    return load_config(args.config, getattr(args, "overrides", None) or (), flag_values(args))


def _add_protocol_args(parser) -> None:
    """``--scales --flip/--no-flip --crf --crf-preset --resize-long`` (each sets its ``eval.*`` config key)."""
    parser.add_argument("--scales", help="comma-separated segmentation scales, e.g. 1.0,0.5,0.75 (eval.scales)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average every scale with its horizontal flip (eval.flip)")
    parser.add_argument("--crf", choices=CRF_CHOICES,
                        help="dense CRF: auto (exact on CUDA; on the CPU the permutohedral lattice, exact for "
                             "small images), exact, lattice, pydensecrf or none (eval.crf)")
    parser.add_argument("--crf-preset", choices=tuple(CRF_PRESETS),
                        help=f"the CRF's iterations, kernel widths and weights as each codebase evaluates: "
                             f"{', '.join(CRF_PRESETS)} (eval.crf_preset; default {DEFAULT_CRF_PRESET}, "
                             f"the published TSCD/AFA protocol)")
    parser.add_argument("--resize-long", type=int, help="long side of the network input, 0 = as is (eval.resize_long)")


def _log_metrics(m: dict) -> None:
    keys = ("seg_miou", "seg_msf_miou", "seg_crf_miou", "seg_msf_crf_miou", "cam_miou", "pseudo_miou", "aff_miou",
            "cls_f1")
    logger.info("  ".join(f"{k}={m[k]:.4f}" for k in keys if k in m))
    per_class = m.get("per_class_iou", {})
    if per_class:
        logger.info("per-class IoU: " + ", ".join(f"{n} {v:.3f}" if v is not None else f"{n} -"
                                                  for n, v in per_class.items()))


# ---- train / demo ----------------------------------------------------------------------
def _add_train_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="YAML file or built-in name (synthetic, voc, coco)")
    p.add_argument("--work-dir", help="output folder (default: the config's work_dir)")
    p.add_argument("--data-root", help="dataset root folder (sets data.root)")
    p.add_argument("--max-iters", type=int, help="sets train.max_iters")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="tscd.ops backend of every op (train.backend)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--resume", action="store_true", help="continue the run in WORK_DIR from checkpoints/last.pth")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run in WORK_DIR: first delete its checkpoints, metrics.json, config.yaml, "
                          "curve.png, vis/ and tb/ files (nothing else)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=4e-4")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args) -> int:
    from .engine.trainer import run_training

    metrics, work = run_training(_config(args), args.work_dir, args.resume, args.overwrite, _config_file(args))
    if not _is_main_process():
        return 0
    if metrics:
        _log_metrics(metrics)
    logger.info("checkpoint: %s  metrics: %s", work / "checkpoints" / "last.pth", work / "metrics.json")
    return 0


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    _add_train_args(p, config_required=False)
    p.set_defaults(config="synthetic")


#: ``tscd demo``'s train + evaluate time, which it announces: docs/demo.md, "Measured", rounded.
DEMO_MINUTES = 4


def cmd_demo(args) -> int:
    from .engine.eta import MEASURED_STEPS
    from .engine.trainer import run_training
    from .engine.visualize import save_curve

    start = time.time()
    cfg = _config(args)
    t, stage1 = cfg.train, min(cfg.loss.stage1_iters, cfg.train.max_iters)
    logger.info("demo: %d L_cls-only and %d full iterations, evaluated every %d; about %d min on a quiet 2-core "
                "CPU (measured, first C++ build included), longer on a busy one; the ETA measured here follows "
                "after %d iterations", stage1, t.max_iters - stage1, t.eval_interval, round(DEMO_MINUTES),
                MEASURED_STEPS)
    metrics, work = run_training(cfg, args.work_dir, args.resume, args.overwrite, _config_file(args))
    history = json.loads((work / "metrics.json").read_text())["history"]
    curve = work / "curve.png" if save_curve(history, work / "curve.png") else "-"
    grids = sorted((work / "vis").glob("iter_*.png"))
    logger.info("demo finished in %.0f s", time.time() - start)
    _log_metrics(metrics)
    logger.info("mIoU by iteration: " + ", ".join(f"{h['iteration']}: seg {h['seg_miou']:.3f} / cam "
                                                  f"{h['cam_miou']:.3f} / pseudo {h['pseudo_miou']:.3f}"
                                                  for h in history))
    logger.info("grid: %s  curve: %s  metrics: %s", grids[-1] if grids else "-", curve, work / "metrics.json")
    return 0


# ---- commands on a trained checkpoint ------------------------------------------------------
def _add_checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file or built-in name (default: the checkpoint's own config)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by tscd train")


def _add_split_args(p: argparse.ArgumentParser, split_help: str) -> None:
    """The arguments of the commands that run a trained checkpoint over a dataset split."""
    _add_checkpoint_args(p)
    p.add_argument("--data-root", help="dataset root folder (sets data.root)")
    p.add_argument("--split", help=split_help)


def _config_file(args) -> list[Path]:
    """[the file ``--config`` names], or [] without one: a file the command reads, which it must
    not write over."""
    from .config import resolve_config_path

    return [resolve_config_path(args.config)] if args.config else []


def _trained_for(args):
    """(model, cfg, class names) of ``--checkpoint``: with ``--config`` if given, else the
    checkpoint's own config; the command's overrides and flags applied; the runtime set up."""
    from .config import apply
    from .engine.checkpoint import load_trained
    from .engine.runtime import setup_runtime

    model, cfg, names = load_trained(args.checkpoint, _config(args) if args.config else None)
    if not args.config:
        cfg = apply(cfg, getattr(args, "overrides", None) or (), flag_values(args))
    setup_runtime(cfg)
    return model, cfg, names


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    _add_split_args(p, "split to evaluate (default: data.val_split)")
    p.add_argument("--out", help="metrics JSON path (default: next to the checkpoint); the grid goes next to it, "
                                 "with .png; never a file the command reads (checkpoint, config, the dataset's files)")
    p.add_argument("--backend", choices=BACKEND_CHOICES)
    _add_protocol_args(p)
    p.add_argument("--cam-metrics", action=argparse.BooleanOptionalAction, default=None,
                   help="also the CAM, refined-label and random-walk mIoUs, which run the multi-scale CAM "
                        "(eval.cam_metrics, default on); --no-cam-metrics: the segmentation alone")
    p.add_argument("--save-preds", metavar="DIR",
                   help="write the final predictions as palette PNGs DIR/<name>.png (never into the dataset's image "
                        "or mask folders)")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def cmd_eval(args) -> int:
    from .engine.evaluator import run_evaluation

    model, cfg, _ = _trained_for(args)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name(ckpt.stem + "_eval.json")
    metrics = run_evaluation(model, cfg, args.split or cfg.data.val_split, out, checkpoint=ckpt,
                             save_preds=args.save_preds, reads=_config_file(args))
    if metrics is not None:
        _log_metrics(metrics)
        logger.info("metrics: %s  grid: %s", out, out.with_suffix(".png"))
    return 0


def _add_pseudo_label_args(p: argparse.ArgumentParser) -> None:
    _add_split_args(p, "split to label (default: data.train_split)")
    p.add_argument("--out", required=True,
                   help="output folder for <name>.png and summary.json (existing labels are skipped; never the "
                        "dataset's image or mask folder, never over a file the command reads)")
    p.add_argument("--refine", choices=REFINE_MODES, help="refinement of method §4 (default: refine.mode)")
    p.add_argument("--crf", choices=CRF_CHOICES, default="none", dest="label_crf",
                   help="dense CRF on the confident pixels (default: none)")
    p.add_argument("--backend", choices=BACKEND_CHOICES)
    p.add_argument("overrides", nargs="*", metavar="key=value")


def cmd_pseudo_labels(args) -> int:
    from .engine.pseudo_labels import run_export

    model, cfg, _ = _trained_for(args)
    summary = run_export(model, cfg, args.split or cfg.data.train_split, args.out, refine=args.refine,
                         crf=args.label_crf, reads=[Path(args.checkpoint), *_config_file(args)])
    if _is_main_process():
        miou = summary["pseudo_miou"]
        logger.info(f"{summary['written']} written, {summary['skipped']} already there, to {args.out}; pseudo-label "
                    + (f"mIoU {miou:.4f}, {summary['ignore_fraction']:.1%} of pixels uncertain" if miou is not None
                       else "mIoU: no ground-truth masks"))
    return 0


def _add_infer_args(p: argparse.ArgumentParser) -> None:
    _add_checkpoint_args(p)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True,
                   help="output folder (made if missing; may be the images' folder) for NAME_mask.png and "
                        "NAME_overlay.png per image NAME.jpg, in the image's folder relative to the folder holding "
                        "every image, listed in OUT/tscd-infer.json; a rerun replaces only the files tscd infer "
                        "wrote there (unchanged since), never an input or any other file: such a file at an output "
                        "path, or two images of one name in one folder (x.jpg and x.png), is refused before "
                        "anything is written")
    _add_protocol_args(p)


def cmd_infer(args) -> int:
    from .engine.inference import EvalProtocol, infer_images
    from .engine.runtime import pick_device

    model, cfg, names = _trained_for(args)
    # The flags as given; without any, one plain forward pass (no flip, no CRF).
    protocol = EvalProtocol(tuple(_scales(args.scales)) if args.scales else (1.0,), bool(args.flip),
                            args.crf or "none", args.resize_long or None, args.crf_preset or DEFAULT_CRF_PRESET)
    device = pick_device(cfg.train.device)
    infer_images(model.to(device), args.images, args.out, protocol, names, cfg.data.mean, cfg.data.std, device,
                 reads=[Path(args.checkpoint), *_config_file(args)])
    return 0


# ---- data ----------------------------------------------------------------------------------
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=("voc", "coco"), help="voc: VOC 2012 + SBD (train_aug, val); coco: COCO 2014")
    p.add_argument("dir", metavar="DIR", help="folder to prepare the dataset in (made if missing; nothing in it is "
                                              "replaced)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--from", dest="source", metavar="FOLDER",
                        help="read the archives from FOLDER under their official names instead of downloading "
                             "them (nothing is contacted)")
    source.add_argument("--mirror", metavar="URL", help="download URL/<official name> instead of the official hosts")
    p.add_argument("--no-verify", action="store_true", help="skip the archives' size and MD5 checks (a mirror's copy)")


def cmd_data(args) -> int:
    from .data.prepare import UsageError, prepare

    try:
        root = prepare(args.dataset, args.dir, args.source, args.mirror, verify=not args.no_verify)
    except UsageError as err:  # exit 2, as argparse's usage errors
        if args.debug:
            raise
        logger.error("tscd: error: %s", err)
        return 2
    print(Path(root).resolve(), flush=True)  # the last line on stdout: the --data-root to pass
    return 0


COMMANDS = {
    "train": (_add_train_args, cmd_train, "train TSCD from image-level labels"),
    "eval": (_add_eval_args, cmd_eval, "evaluate a checkpoint (mIoU of seg, CAM, pseudo labels; cls F1)"),
    "infer": (_add_infer_args, cmd_infer, "segment images with a checkpoint"),
    "pseudo-labels": (_add_pseudo_label_args, cmd_pseudo_labels,
                      "write refined pseudo labels of a split as palette PNGs (for a second stage)"),
    "demo": (_add_demo_args, cmd_demo,
             f"train + evaluate on the built-in synthetic dataset (CPU, ~{DEMO_MINUTES:g} min)"),
    "data": (_add_data_args, cmd_data, "download and prepare VOC 2012 + SBD or COCO 2014 as --config voc/coco read "
                                       "them (docs/reproduce.md)"),
}


class _IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes its options and positionals (``key=value`` overrides, image
    files) in any order: ``tscd train optim.lr=1e-3 --config synthetic --max-iters 5 loss.seg=0.2``."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # parse_known_intermixed_args parses twice, through here (Python < 3.13)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tscd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_IntermixedParser)
    for name, (add_args, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(run=run)
    return parser


def _error_line(err: Exception) -> str:
    """The one line the CLI prints for ``err``: the first line of its message, or, where the
    message carries another error's traceback (what a DataLoader worker's error becomes in the
    main process: "Caught DatasetError in DataLoader worker process 0. Original Traceback ..."),
    the first line of that original error's message (which names the file)."""
    text = str(err).strip()
    _, traceback, original = text.rpartition("Traceback (most recent call last):")
    if traceback:  # the frames are indented; the first line that is not is "module.Error: message"
        line = next((line for line in original.splitlines() if line.strip() and not line[0].isspace()), "")
        name, _, message = line.partition(": ")
        if name:
            return message.strip() or name.rpartition(".")[2]
    return text.splitlines()[0] if text else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging()
    except ValueError as err:  # TSCD_LOG_LEVEL: nothing is logged yet
        print(f"tscd: error: {err}", file=sys.stderr)
        return 1
    try:
        return args.run(args)
    except KeyboardInterrupt as err:  # Ctrl-C, or training stopped by a signal (it carries signum)
        if args.debug:
            raise
        return 128 + getattr(err, "signum", signal.SIGINT)
    except Exception as err:  # noqa: BLE001 - the CLI turns every failure into one line
        if args.debug:
            raise
        logger.error("tscd: error: %s", _error_line(err))
        return 1


if __name__ == "__main__":
    sys.exit(main())
