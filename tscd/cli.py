"""Command line: ``tscd train | eval | infer | demo`` (also ``python -m tscd``).

Every failure prints one line ``tscd: error: ...`` and exits non-zero; ``--debug`` shows the
traceback instead. Subcommands live in :data:`COMMANDS` (name -> (add_arguments, run)).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

BACKEND_CHOICES = ("auto", "torch", "triton", "cpp")


# ---- shared helpers ----------------------------------------------------------------------
def _config_overrides(args) -> list[str]:
    """The ``key=value`` list of a command line, flags included (``--data-root`` etc.)."""
    overrides = list(args.overrides or [])
    if getattr(args, "data_root", None):
        overrides.append(f"data.root={args.data_root}")
    if getattr(args, "max_iters", None) is not None:
        overrides.append(f"train.max_iters={args.max_iters}")
    if getattr(args, "backend", None):
        overrides.append(f"train.backend={args.backend}")
    from .engine.eval_args import protocol_overrides

    return overrides + protocol_overrides(args)


def _config(args):
    from .config import load_config

    return load_config(args.config, _config_overrides(args))


def _apply_backend(cfg) -> None:
    """Every op's ``auto`` follows ``train.backend`` (through TSCD_BACKEND)."""
    if cfg.train.backend != "auto":
        os.environ["TSCD_BACKEND"] = cfg.train.backend
    if cfg.train.backend == "triton" and not _cuda():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if cfg.train.num_threads:
        import torch

        torch.set_num_threads(int(cfg.train.num_threads))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _print_metrics(m: dict) -> None:
    keys = ("seg_miou", "seg_msf_miou", "seg_crf_miou", "seg_msf_crf_miou", "cam_miou", "pseudo_miou", "aff_miou",
            "cls_f1")
    print("  ".join(f"{k}={m[k]:.4f}" for k in keys if k in m))
    per_class = m.get("per_class_iou", {})
    if per_class:
        print("per-class IoU: " + ", ".join(f"{n} {v:.3f}" if v is not None else f"{n} -"
                                            for n, v in per_class.items()))


def _load_trained(checkpoint: str, cfg=None):
    """(model, cfg, class_names) from one of our checkpoints; ``cfg`` (if given) must agree."""
    from .config import config_from_dict
    from .engine import checkpoint as ckpt_io
    from .engine.trainer import build_model

    state = ckpt_io.load(checkpoint)
    stored = config_from_dict(state["config"]) if "config" in state else None
    if cfg is None:
        if stored is None:
            raise ckpt_io.CheckpointError(f"{checkpoint} carries no config: pass --config")
        cfg = stored
    elif stored is not None:
        for section, key in (("data", "num_classes"), ("model", "backbone"), ("model", "stride")):
            a, b = stored[section][key], cfg[section][key]
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                raise ckpt_io.CheckpointError(f"{checkpoint} was trained with {section}.{key}={a}, "
                                              f"the config says {b}")
    model = build_model(cfg)
    from .models import load_checkpoint

    try:
        load_checkpoint(model, {k: v for k, v in state["model"].items()})
    except ValueError as err:
        raise ckpt_io.CheckpointError(f"{checkpoint} does not fit the model: {str(err).splitlines()[0]}") from None
    names = state.get("class_names") or [f"class_{i}" for i in range(cfg.data.num_classes)]
    return model, cfg, names


# ---- train / demo ----------------------------------------------------------------------
def _add_train_args(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="YAML file or built-in name (synthetic, voc, coco)")
    p.add_argument("--work-dir", help="output folder (default: the config's work_dir)")
    p.add_argument("--data-root", help="dataset root folder (sets data.root)")
    p.add_argument("--max-iters", type=int, help="sets train.max_iters")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="tscd.ops backend for every op (TSCD_BACKEND)")
    p.add_argument("--resume", action="store_true", help="continue from WORK_DIR/checkpoints/last.pth")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=4e-4")


def _train(cfg, work_dir: str | None, resume: bool) -> tuple[dict, Path]:
    from .engine.trainer import Trainer

    _apply_backend(cfg)
    work = Path(work_dir or cfg.work_dir)
    if resume and not (work / "checkpoints" / "last.pth").is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {work / 'checkpoints' / 'last.pth'}")
    cfg.work_dir = str(work)
    trainer = Trainer(cfg, work, resume=resume)
    return trainer.train(), work


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def cmd_train(args) -> int:
    metrics, work = _train(_config(args), args.work_dir, args.resume)
    if not _is_main_process():
        return 0
    if metrics:
        _print_metrics(metrics)
    print(f"checkpoint: {work / 'checkpoints' / 'last.pth'}  metrics: {work / 'metrics.json'}")
    return 0


def _add_demo_args(p: argparse.ArgumentParser) -> None:
    _add_train_args(p, config_required=False)
    p.set_defaults(config="synthetic")


def cmd_demo(args) -> int:
    import time

    from .engine.visualize import save_curve

    start = time.time()
    cfg = _config(args)
    metrics, work = _train(cfg, args.work_dir or "runs/demo", args.resume)
    history = json.loads((work / "metrics.json").read_text())["history"]
    save_curve(history, work / "curve.png")
    grids = sorted((work / "vis").glob("iter_*.png"))
    print(f"demo finished in {time.time() - start:.0f} s")
    _print_metrics(metrics)
    print("mIoU by iteration: " + ", ".join(f"{h['iteration']}: seg {h['seg_miou']:.3f} / cam {h['cam_miou']:.3f}"
                                             f" / pseudo {h['pseudo_miou']:.3f}" for h in history))
    print(f"grid: {grids[-1] if grids else '-'}  curve: {work / 'curve.png'}  metrics: {work / 'metrics.json'}")
    return 0


# ---- eval ------------------------------------------------------------------------------
def _add_checkpoint_split_args(p: argparse.ArgumentParser, split_help: str) -> None:
    """The arguments of the commands that run a trained checkpoint over a dataset split."""
    p.add_argument("--config", help="YAML file or built-in name (default: the checkpoint's own config)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data-root", help="dataset root folder (sets data.root)")
    p.add_argument("--split", help=split_help)


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    _add_checkpoint_split_args(p, "split to evaluate (default: data.val_split)")
    p.add_argument("--out", help="metrics JSON path (default: next to the checkpoint)")
    p.add_argument("--backend", choices=BACKEND_CHOICES)
    from .engine.eval_args import add_protocol_args

    add_protocol_args(p)
    p.add_argument("--save-preds", metavar="DIR", help="write the final predictions as palette PNGs to DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def _trained_for(args):
    """(model, cfg) of ``--checkpoint``: with ``--config`` if given, else the checkpoint's own
    config; the command's overrides applied; backends set up."""
    cfg = _config(args) if args.config else None
    model, cfg, _ = _load_trained(args.checkpoint, cfg)
    if not args.config:  # the checkpoint's own config, with this command's overrides
        from .config import Config, parse_override, set_key

        tree = cfg.to_dict()
        for text in _config_overrides(args):
            set_key(tree, *parse_override(text))
        cfg = Config(tree)
    _apply_backend(cfg)
    return model, cfg


def cmd_eval(args) -> int:
    import torch

    from .data import build_dataset
    from .engine.evaluator import Evaluator
    from .engine.inference import EvalProtocol, init_distributed, shard
    from .engine.trainer import eval_loader, pick_device, write_json_atomic
    from .engine.visualize import save_grid
    from .losses.objective import TSCDObjective

    model, cfg = _trained_for(args)
    rank, world, device = init_distributed(pick_device(cfg.train.device))
    model.to(device)
    dataset = build_dataset(cfg, args.split or cfg.data.val_split, train=False)
    evaluator = Evaluator(cfg, TSCDObjective(cfg).to(device), dataset.class_names, device,
                          EvalProtocol.from_config(cfg), distributed=world > 1, progress=rank == 0,
                          save_preds=args.save_preds)
    with torch.no_grad():
        metrics = evaluator.run(model, eval_loader(shard(dataset, rank, world, cfg.eval.max_images),
                                                   cfg.eval.batch_size), None, cfg.eval.num_vis if rank == 0 else 0)
    if rank != 0:
        return 0
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else ckpt.with_name(ckpt.stem + "_eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics["checkpoint"] = str(ckpt)
    write_json_atomic(metrics, out)
    save_grid(evaluator.samples, out.with_suffix(".png"))
    _print_metrics(metrics)
    print(f"metrics: {out}  grid: {out.with_suffix('.png')}")
    return 0


# ---- pseudo-labels -----------------------------------------------------------------------
def _add_pseudo_label_args(p: argparse.ArgumentParser) -> None:
    _add_checkpoint_split_args(p, "split to label (default: data.train_split)")
    p.add_argument("--out", required=True, help="output folder for <name>.png (existing files are skipped)")
    from .engine.eval_args import CRF_CHOICES, REFINE_CHOICES

    p.add_argument("--refine", choices=REFINE_CHOICES, help="refinement of spec §4 (default: refine.mode)")
    p.add_argument("--crf", choices=CRF_CHOICES, default="none",
                   help="dense CRF on the confident pixels (default: none)")
    p.add_argument("--backend", choices=BACKEND_CHOICES)
    p.add_argument("overrides", nargs="*", metavar="key=value")


def cmd_pseudo_labels(args) -> int:
    from .data import build_dataset
    from .engine.inference import init_distributed
    from .engine.pseudo_labels import export_pseudo_labels
    from .engine.trainer import pick_device

    model, cfg = _trained_for(args)
    rank, world, device = init_distributed(pick_device(cfg.train.device))
    dataset = build_dataset(cfg, args.split or cfg.data.train_split, train=False)
    summary = export_pseudo_labels(model.to(device), dataset, args.out, cfg, refine=args.refine or cfg.refine.mode,
                                   crf=args.crf, device=device, batch_size=cfg.eval.batch_size,
                                   num_workers=cfg.data.num_workers, rank=rank, world=world)
    if rank == 0:
        miou = summary["pseudo_miou"]
        print(f"{summary['written']} written, {summary['skipped']} already there, to {args.out}; pseudo-label "
              + (f"mIoU {miou:.4f}, {summary['ignore_fraction']:.1%} of pixels uncertain" if miou is not None
                 else "mIoU: no ground-truth masks"))
    return 0



# ---- infer -----------------------------------------------------------------------------
def _add_infer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder for <name>.png masks and <name>_overlay.png")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")


def cmd_infer(args) -> int:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from .data.base import load_image
    from .data.transforms import normalize
    from .engine.trainer import pick_device
    from .engine.visualize import overlay, save_palette_png

    model, cfg, names = _load_trained(args.checkpoint)
    device = pick_device(cfg.train.device)
    model.to(device).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.images):
        img = load_image(path)
        x = normalize(torch.from_numpy(img).permute(2, 0, 1), cfg.data.mean, cfg.data.std)[None].to(device)
        with torch.no_grad():
            logits = model(x)[1]
            if args.flip:
                logits = logits + model(x.flip(-1))[1].flip(-1)
            logits = F.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False)
        mask = logits.argmax(1)[0].cpu().numpy().astype(np.uint8)
        save_palette_png(mask, out / f"{path.stem}.png")
        Image.fromarray(overlay(img, mask)).save(out / f"{path.stem}_overlay.png")
        present = [names[c] for c in np.unique(mask) if c != 0 and c < len(names)]
        print(f"{path}: {', '.join(present) or 'background only'}")
    return 0


COMMANDS = {
    "train": (_add_train_args, cmd_train, "train TSCD from image-level labels"),
    "eval": (_add_eval_args, cmd_eval, "evaluate a checkpoint (mIoU of seg, CAM, pseudo labels; cls F1)"),
    "infer": (_add_infer_args, cmd_infer, "segment images with a checkpoint"),
    "pseudo-labels": (_add_pseudo_label_args, cmd_pseudo_labels,
                      "write refined pseudo labels of a split as palette PNGs (for a second stage)"),
    "demo": (_add_demo_args, cmd_demo, "train + evaluate on the built-in synthetic dataset (CPU, ~12 min)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tscd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.add_argument("--debug", action="store_true", help="show tracebacks")
        p.set_defaults(run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI turns every failure into one line
        if args.debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"tscd: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
