"""The optimizers of a run and their settings: AdamW for the VQ-VAE with a step-based
schedule (linear warmup, then cosine to ``min_lr_ratio · lr``; 1.0 keeps it constant), Adam
for the discriminator on the same schedule, and the moving average of the weights that
validation, predict and export use."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from train.gan import AdversarialConfig
from train.objective import parameter_groups, warmup_cosine
from vq.config import check_float, check_int


@dataclass(frozen=True)
class OptimizerConfig:
    """The VQ-VAE's optimizer (``model.optimizer`` in YAML).

    lr: peak learning rate of AdamW. 3e-4: higher rates collapsed the latent and codebook
        usage with it (docs/benchmarks/quality.md, "Learning rate").
    weight_decay: AdamW weight decay, applied to conv/linear weights only (not to norms,
        biases or codebooks: decaying a codebook pulls codes to the origin).
    betas: AdamW betas.
    warmup_steps: linear warmup length in optimizer steps.
    min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine (1.0: constant).
    total_steps: length of the schedule; None = ``trainer.max_steps`` (or the estimated
        stepping batches when max_steps is -1).
    quantizer_lr_scale: the quantizer parameters' learning rate as a multiple of ``lr``
        (SimVQ's W needs more than the encoder: docs/training.md, "SimVQ").
    """

    lr: float = 3e-4
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    total_steps: int | None = None
    quantizer_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_float("model.optimizer.lr", self.lr, low=0.0, high=math.inf, open_low=True)
        check_float("model.optimizer.weight_decay", self.weight_decay, low=0.0, high=math.inf)
        check_int("model.optimizer.warmup_steps", self.warmup_steps, minimum=0)
        check_float("model.optimizer.min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)
        if self.total_steps is not None:
            check_int("model.optimizer.total_steps", self.total_steps, minimum=1)
        check_float(
            "model.optimizer.quantizer_lr_scale",
            self.quantizer_lr_scale,
            low=0.0,
            high=math.inf,
            open_low=True,
        )
        object.__setattr__(self, "betas", tuple(self.betas))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "betas": list(self.betas)}


@dataclass(frozen=True)
class EMAConfig:
    """The moving average of the VQ-VAE's weights (``model.ema``; absent = off) that
    validation, predict and export use.

    decay: per step (the field uses 0.999-0.9999).
    """

    decay: float = 0.999

    def __post_init__(self) -> None:
        check_float("model.ema.decay", self.decay, low=0.0, high=1.0, open_low=True, open_high=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _schedule(scale: float, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        return scale * warmup_cosine(step, warmup, total, min_ratio)

    return multiplier


def _stepwise(optimizer: torch.optim.Optimizer, lambdas: Any) -> dict[str, Any]:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
    }


def optimizers(
    model: torch.nn.Module,
    discriminator: torch.nn.Module | None,
    cfg: OptimizerConfig,
    adversarial: AdversarialConfig | None,
    total_steps: int,
) -> list[dict[str, Any]]:
    """Lightning's ``configure_optimizers`` answer: the VQ-VAE's AdamW (its parameter groups,
    ``train.objective.parameter_groups``), then the discriminator's Adam when there is one,
    each with its schedule stepped once per batch."""
    warmup, ratio = cfg.warmup_steps, cfg.min_lr_ratio
    groups = parameter_groups(model.named_parameters(), cfg.weight_decay, cfg.quantizer_lr_scale)
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    out = [_stepwise(adamw, [_schedule(g["lr_scale"], warmup, total_steps, ratio) for g in groups])]
    if discriminator is not None and adversarial is not None:
        betas = adversarial.betas if adversarial.betas is not None else cfg.betas
        adam = torch.optim.Adam(
            discriminator.parameters(),
            lr=adversarial.lr if adversarial.lr is not None else cfg.lr,
            betas=(betas[0], betas[1]),
        )
        out.append(_stepwise(adam, _schedule(1.0, warmup, total_steps, ratio)))
    return out
