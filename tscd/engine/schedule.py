"""AdamW over the model's parameter groups, linear warm-up then poly decay (spec §9)."""
from __future__ import annotations

import torch


def lr_factor(step: int, max_iters: int, warmup_iters: int, warmup_ratio: float, power: float) -> float:
    """Multiplier of the base lr for the update that follows ``step`` completed updates."""
    poly = (1 - min(step, max_iters) / max_iters) ** power
    if step < warmup_iters:
        k = step / warmup_iters
        return poly * (warmup_ratio + (1 - warmup_ratio) * k)
    return poly


def build_optimizer(model, cfg) -> torch.optim.AdamW:
    """AdamW on ``model.param_groups`` (each group keeps its ``lr_mult``)."""
    o = cfg.optim
    groups = [g for g in model.param_groups(lr=o.lr, weight_decay=o.weight_decay) if g["params"]]
    mults = {"heads": o.head_lr_mult, "decoder": o.head_lr_mult, "encoder_norm": o.norm_lr_mult}
    for g in groups:
        if g.get("name") in mults:  # spec §1: heads 10× the encoder's lr, encoder norms frozen
            g["lr_mult"] = mults[g["name"]]
            g["lr"] = o.lr * g["lr_mult"]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    o, t = cfg.optim, cfg.train
    fn = lambda step: lr_factor(step, t.max_iters, o.warmup_iters, o.warmup_ratio, o.power)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
