"""The optimiser and its schedule (method §1, §9): AdamW over the model's parameter groups with
their learning-rate multipliers and weight decay — the one owner of that policy — and linear
warm-up then poly decay."""
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
    """AdamW on the groups of ``model.param_groups()``.

    Per group (method §1, with the multipliers of ``optim``): encoder lr × 1; encoder norms
    lr × ``norm_lr_mult`` (0: frozen) without weight decay; heads and decoder lr ×
    ``head_lr_mult`` (10), the decoder × ``decoder_lr_mult`` instead when set. Each group
    carries its ``name`` and ``lr_mult``. Every group is kept, empty ones too (a frozen
    encoder's, ``model.freeze_backbone``), so that the groups are the same, in the same order,
    for every model: the first is always the encoder's, at the base lr.
    """
    optim = cfg.optim
    decoder_mult = optim.head_lr_mult if optim.decoder_lr_mult is None else optim.decoder_lr_mult
    policy = {"encoder": (1.0, optim.weight_decay), "encoder_norm": (optim.norm_lr_mult, 0.0),
              "heads": (optim.head_lr_mult, optim.weight_decay), "decoder": (decoder_mult, optim.weight_decay)}
    groups = [{"name": name, "params": params, "lr": optim.lr * policy[name][0], "lr_mult": policy[name][0],
               "weight_decay": policy[name][1]} for name, params in model.param_groups().items()]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                             weight_decay=optim.weight_decay)


def build_scheduler(optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    optim = cfg.optim
    fn = lambda step: lr_factor(step, cfg.train.max_iters, optim.warmup_iters, optim.warmup_ratio, optim.power)  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
