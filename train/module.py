"""The LightningModule that trains a ``vq.model.VQVAE``: the one training loop, as glue.

The recipe's terms are ``train.recipe.RecipeLoss``'s (docs/training.md, "The recipe"); this
module runs the VQ-VAE, the optimizer steps, the weight average and evaluation.

AdamW for the VQ-VAE with a step-based schedule (linear warmup, then cosine to
``min_lr_ratio · lr``; 1.0 keeps it constant) and Adam for the discriminator on the same
schedule. Without the adversarial term the optimization is Lightning's automatic one
(gradient clipping from ``trainer.gradient_clip_val``); with it, a generator step and a
discriminator step run in ``training_step`` (manual optimization) and ``vq-train`` hands the
trainer's clipping value to the module. ``ema_decay`` keeps a moving average of the weights
that validation, predict and export use. ``trainable="decoder"`` freezes the encoder and
quantizer: codes stay bit-identical while the decoder is fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from train.gan import AdversarialConfig
from train.objective import ema_update_, parameter_groups, warmup_cosine
from train.perceptual import PerceptualConfig
from train.recipe import Losses, RecipeLoss
from vq.artifact import load_tokenizer
from vq.model import VQVAE, VQVAEConfig, VQVAEOutput
from vq.pixels import float_to_unit
from vq.tokenizer import in_chunks
from vqio import center_crop, format_size


def center_crop_to_multiple(images: torch.Tensor, f: int) -> torch.Tensor:
    """Crop (B, C, H, W) centrally to the largest H', W' that are multiples of f (the
    service's ``fit=crop`` crops the same pixels: both use ``vqio.center_crop``)."""
    rows, cols = center_crop(images.shape[-2], images.shape[-1], f)
    return images[..., rows, cols]


__all__ = ["VQVAEModule", "center_crop_to_multiple", "warmup_cosine"]

Trainable = Literal["all", "decoder"]


def _config(value: Any, cls: type, name: str) -> Any:
    """A dataclass config from YAML (a mapping), an instance, or None."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls(**value)
        except TypeError as exc:
            raise ValueError(f"model.{name}: {exc}") from None
    raise ValueError(f"model.{name} must be a mapping, got {type(value).__name__}")


def _schedule(scale: float, warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    def multiplier(step: int) -> float:
        return scale * warmup_cosine(step, warmup, total, min_ratio)

    return multiplier


class VQVAEModule(L.LightningModule):
    """Args:
    vqvae: the architecture and quantizer (``vq.model.VQVAEConfig``; in YAML a nested
        mapping under ``model.vqvae``).
    lr: peak learning rate of AdamW. 3e-4: at 2e-3 the latent collapsed to ~1 dimension
        within 100 steps and codebook usage with it (docs/benchmarks/quality.md, "Learning rate").
    weight_decay: AdamW weight decay, applied to conv/linear weights only (not to norms,
        biases or codebooks: decaying a codebook pulls codes to the origin).
    betas: AdamW betas.
    warmup_steps: linear warmup length in optimizer steps.
    min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine (1.0: constant).
    total_steps: length of the schedule; None = ``trainer.max_steps`` (or the estimated
        stepping batches when max_steps is -1).
    l1_weight: weight of the L1 reconstruction term (0 disables it).
    l2_weight: weight of the MSE reconstruction term (0 disables it).
    quantizer_lr_scale: the quantizer parameters' learning rate as a multiple of ``lr``
        (SimVQ's W needs more than the encoder: docs/training.md, "SimVQ").
    perceptual: the perceptual term (``train.perceptual.PerceptualConfig``; None = none).
    adversarial: the PatchGAN term (``train.gan.AdversarialConfig``; None = none).
    ema_decay: keep an exponential moving average of the VQ-VAE's weights with this decay and
        validate, predict and export with it (None = off; the field uses 0.999-0.9999).
    init_from: a tokenizer artifact (directory or Hub id) whose weights the run starts from;
        ``vqvae`` may then be left out (the artifact's own config is used) or must equal it.
    trainable: "all", or "decoder" to freeze the encoder and quantizer (codes stay
        bit-identical; the decoder is fine-tuned, as Stable Diffusion's ft-EMA/ft-MSE VAEs).
    channels_last: run the convolutions in channels_last memory format (oneDNN's and cuDNN's
        fast layout; docs/benchmarks/throughput.md).
    compile: ``torch.compile`` the encoder and decoder (in place: checkpoint keys unchanged).
        Pays off only for long runs at one crop size: compilation takes a minute or more.
    gradient_clip_val: the VQ-VAE's gradient-norm clip under the adversarial recipe's manual
        optimization, where Lightning does not clip (``vq-train`` moves
        ``trainer.gradient_clip_val`` here); a setting of the run's mechanics, not saved as a
        hyper-parameter.
    """

    def __init__(
        self,
        # None = VQVAEConfig(): a default instance would pin the quantizer's kind for the CLI
        # (jsonargparse merges YAML onto it), so `quantizer.kind: fsq` would not parse.
        vqvae: VQVAEConfig | None = None,
        lr: float = 3e-4,
        weight_decay: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        total_steps: int | None = None,
        l1_weight: float = 0.0,
        l2_weight: float = 1.0,
        quantizer_lr_scale: float = 1.0,
        perceptual: PerceptualConfig | None = None,
        adversarial: AdversarialConfig | None = None,
        ema_decay: float | None = None,
        init_from: str | None = None,
        trainable: Trainable = "all",
        channels_last: bool = True,
        compile: bool = False,
        gradient_clip_val: float | None = None,
    ) -> None:
        super().__init__()
        start = None if init_from is None else load_tokenizer(init_from, precision="fp32").model
        if vqvae is None:
            vqvae = VQVAEConfig() if start is None else start.config
        if isinstance(vqvae, Mapping):
            vqvae = VQVAEConfig.from_dict(vqvae)
        if not isinstance(vqvae, VQVAEConfig):
            raise ValueError(
                f"vqvae must be a VQVAEConfig or a mapping, got {type(vqvae).__name__}"
            )
        if start is not None and start.config.to_dict() != vqvae.to_dict():
            raise ValueError(
                f"model.init_from={init_from!r} holds a {start.config.to_dict()} network, "
                f"not model.vqvae={vqvae.to_dict()}; leave model.vqvae out to use the artifact's"
            )
        perceptual = _config(perceptual, PerceptualConfig, "perceptual")
        adversarial = _config(adversarial, AdversarialConfig, "adversarial")
        if not lr > 0:
            raise ValueError(f"model.lr={lr!r} is not allowed; expected > 0")
        if warmup_steps < 0:
            raise ValueError(f"model.warmup_steps={warmup_steps!r} is not allowed; expected >= 0")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio={min_lr_ratio!r} is not allowed; expected [0, 1]")
        for name, value in (("l1_weight", l1_weight), ("l2_weight", l2_weight)):
            if not value >= 0:
                raise ValueError(f"model.{name}={value!r} is not allowed; expected >= 0")
        if not quantizer_lr_scale > 0:
            raise ValueError(
                f"model.quantizer_lr_scale={quantizer_lr_scale!r} is not allowed; expected > 0"
            )
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(
                f"model.ema_decay={ema_decay!r} is not allowed; expected (0, 1) or null (off)"
            )
        if gradient_clip_val is not None and adversarial is None:
            raise ValueError(
                "model.gradient_clip_val clips the adversarial recipe's generator step; "
                "without model.adversarial use trainer.gradient_clip_val"
            )
        if trainable not in ("all", "decoder"):
            raise ValueError(
                f"model.trainable={trainable!r} is not allowed; choose one of ['all', 'decoder']"
            )
        # Hyper-parameters as plain values (configs as dicts, no pickled classes): the
        # checkpoint then loads with torch.load(weights_only=True), and
        # `load_from_checkpoint` / `vq-export` rebuild the configs from the dicts.
        self.save_hyperparameters(
            {
                "vqvae": vqvae.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "betas": tuple(betas),
                "warmup_steps": warmup_steps,
                "min_lr_ratio": min_lr_ratio,
                "total_steps": total_steps,
                "l1_weight": l1_weight,
                "l2_weight": l2_weight,
                "quantizer_lr_scale": quantizer_lr_scale,
                "perceptual": None if perceptual is None else perceptual.to_dict(),
                "adversarial": None if adversarial is None else adversarial.to_dict(),
                "ema_decay": ema_decay,
                "init_from": init_from,
                "trainable": trainable,
                "channels_last": channels_last,
                "compile": compile,
            }
        )
        self.model = VQVAE(vqvae)
        if start is not None:
            self.model.load_state_dict(start.state_dict())
        self.ema: VQVAE | None = None
        if ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        # The one place trainable="decoder" is decided: these parts get no gradients, run in
        # eval mode (no codebook statistics move) and their loss leaves the objective.
        self.frozen: tuple[torch.nn.Module, ...] = ()
        if trainable == "decoder":
            self.frozen = (self.model.encoder, self.model.quantizer)
        for part in self.frozen:
            part.requires_grad_(False).eval()  # train() keeps them so
        self.recipe = RecipeLoss(
            vqvae.in_channels, l1_weight, l2_weight, perceptual, adversarial, self.memory_format
        )
        # Two optimizers step in training_step; see the module docstring.
        self.automatic_optimization = adversarial is None
        self.gradient_clip_val = gradient_clip_val
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.test_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.test_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    @property
    def config(self) -> VQVAEConfig:
        return self.model.config

    @property
    def f(self) -> int:
        return self.model.f

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def inference_model(self) -> VQVAE:
        """The weights that validate, predict and export: the EMA copy when ``ema_decay`` is set."""
        return self.ema if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float (B, 3, H, W) in [-1, 1] -> int64 codes (B, H/f, W/f)."""
        return self.inference_model.encode(images)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.hparams["channels_last"] else torch.contiguous_format

    def train(self, mode: bool = True) -> VQVAEModule:
        super().train(mode)
        for part in self.frozen:
            part.eval()
        return self

    def setup(self, stage: str) -> None:
        # State dicts stay layout-agnostic (save_tokenizer makes them contiguous).
        for net in (self.model, self.ema, self.recipe.discriminator):
            if net is not None:
                net.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # stubs lack it
        if self.hparams["compile"] and stage == "fit":
            self.model.encoder.compile()
            self.model.decoder.compile()

    def compute_losses(
        self, images: torch.Tensor, model: VQVAE | None = None
    ) -> tuple[Losses, VQVAEOutput]:
        """images float (B, 3, H, W) in [-1, 1] -> (the reconstruction, quantizer and
        perceptual terms, the model's ``VQVAEOutput``); "loss" is their weighted sum, what the
        VQ-VAE minimizes apart from the adversarial term."""
        model = model if model is not None else self.model
        out = model(images.contiguous(memory_format=self.memory_format))
        return self.recipe.reconstruction(out, images, quantizer_loss=not self.frozen), out

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.automatic_optimization:
            losses, out = self.compute_losses(batch)
        else:
            adversarial = self.recipe.adversarial_on(self.global_step)
            losses, out = self._generator_step(batch, adversarial)
            if adversarial:
                losses.update(self._discriminator_step(batch, out.recon))
            self.lr_schedulers()[1].step()  # type: ignore[index,union-attr]  # a list of two
        if self.ema is not None:
            decay = float(self.hparams["ema_decay"])
            ema_update_(
                list(self.ema.state_dict().values()), list(self.model.state_dict().values()), decay
            )
        n = batch.shape[0]
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, on_step=True, on_epoch=False, batch_size=n
        )
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=n)
        # indices go to CodebookMonitor (on_train_batch_end receives this dict).
        return {"loss": losses["loss"], "indices": out.quantizer.indices.detach()}

    def _generator_step(self, batch: torch.Tensor, adversarial: bool) -> tuple[Losses, VQVAEOutput]:
        """The VQ-VAE's step: the recipe's generator loss, clipped, one AdamW step."""
        opt_g = self.optimizers()[0]  # type: ignore[index]  # a list of two
        with self.toggled_optimizer(opt_g):  # the discriminator's gradients stay alone
            losses, out = self.compute_losses(batch)
            if adversarial:
                losses = self.recipe.generator(losses, out.recon, self._last_layer())
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(losses["loss"])
            if self.gradient_clip_val:
                self.clip_gradients(
                    opt_g.optimizer,
                    gradient_clip_val=self.gradient_clip_val,
                    gradient_clip_algorithm="norm",
                )
            opt_g.step()
        self.lr_schedulers()[0].step()  # type: ignore[index,union-attr]  # a list of two
        return {**losses, "loss": losses["loss"].detach()}, out

    def _discriminator_step(self, batch: torch.Tensor, recon: torch.Tensor) -> Losses:
        """The discriminator's step on the batch and its (detached) reconstructions."""
        opt_d = self.optimizers()[1]  # type: ignore[index]  # a list of two
        with self.toggled_optimizer(opt_d):
            losses = self.recipe.discriminator_step_loss(batch, recon)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(losses.pop("d_total"))
            # The raw optimizer: Lightning counts every LightningOptimizer step as a global
            # step, and one batch is one step of the run (max_steps, checkpoints, schedule).
            opt_d.optimizer.step()
        return losses

    def _last_layer(self) -> torch.Tensor:
        """The weight where reconstruction and adversarial gradients meet (both decoders
        end in ``conv_out``)."""
        weight = self.model.decoder.get_submodule("conv_out").weight
        assert isinstance(weight, torch.Tensor)
        return weight

    def _eval_step(self, batch: torch.Tensor, stage: str) -> dict[str, torch.Tensor]:
        losses, out = self.compute_losses(batch, self.inference_model)
        pred, target = float_to_unit(out.recon), float_to_unit(batch)
        psnr, ssim = (
            (self.val_psnr, self.val_ssim) if stage == "val" else (self.test_psnr, self.test_ssim)
        )
        psnr(pred, target)
        ssim(pred, target)
        n = batch.shape[0]
        self.log_dict(
            {f"{stage}/{k}": v for k, v in losses.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=n,
        )
        self.log(f"{stage}/psnr", psnr, on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        self.log(f"{stage}/ssim", ssim, on_step=False, on_epoch=True, batch_size=n)
        return {"indices": out.quantizer.indices.detach(), "recon": out.recon.detach()}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A batch from ``ImageDataModule.predict_dataloader`` -> codes for its images.

        Images whose sides are not multiples of f are centre-cropped to the largest
        multiples (a 375x500 (HxW) image at f=8 is tokenized as its central 368x496).
        """
        images: torch.Tensor = batch["images"]
        paths: list[str] = list(batch["paths"])
        errors: list[dict[str, str]] = list(batch["errors"])
        codes = torch.empty(0, 0, 0, dtype=torch.long)
        if images.shape[0] > 0:
            cropped = center_crop_to_multiple(images, self.f)
            if cropped.shape[-1] == 0 or cropped.shape[-2] == 0:
                h, w = images.shape[-2:]
                errors += [
                    {"path": p, "error": f"image {format_size(h, w)} is smaller than f={self.f}"}
                    for p in paths
                ]
                paths = []
            else:
                # The Tokenizer's chunking, so predict runs the same passes as the library.
                pixels = cropped.shape[2] * cropped.shape[3]
                codes = in_chunks(
                    self.inference_model.encode, cropped, pixels, self.device
                ).cpu()  # (B, h, w)
        return {"codes": codes, "paths": paths, "errors": errors}

    def _total_steps(self) -> int:
        total = self.hparams["total_steps"]
        if total is None:
            max_steps = self.trainer.max_steps
            total = (
                max_steps
                if max_steps and max_steps > 0
                else self.trainer.estimated_stepping_batches
            )
        return int(total)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        warmup, min_ratio, total = hp["warmup_steps"], hp["min_lr_ratio"], self._total_steps()
        groups = parameter_groups(
            self.model.named_parameters(), hp["weight_decay"], hp["quantizer_lr_scale"]
        )
        optimizer = torch.optim.AdamW(groups, lr=hp["lr"], betas=tuple(hp["betas"]))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            [_schedule(g["lr_scale"], warmup, total, min_ratio) for g in groups],
        )
        gen = {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
        adv, disc = self.recipe.adversarial, self.recipe.discriminator
        if adv is None or disc is None:
            return gen
        d_opt = torch.optim.Adam(
            disc.parameters(),
            lr=adv.lr if adv.lr is not None else hp["lr"],
            betas=tuple(adv.betas if adv.betas is not None else hp["betas"]),
        )
        d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, _schedule(1.0, warmup, total, min_ratio))
        return [
            gen,
            {
                "optimizer": d_opt,
                "lr_scheduler": {"scheduler": d_sched, "interval": "step", "frequency": 1},
            },
        ]

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and str(self.trainer.precision) in ("16-mixed", "16"):
            raise ValueError(
                "the adversarial term steps the discriminator outside Lightning's loss "
                f"scaling: trainer.precision={self.trainer.precision!r} is not supported; use "
                "bf16-mixed or 32-true"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The latest validation figures travel with the checkpoint so that export (at the
        # end of fit or via vq-export) can write them into the artifact's config.json.
        metrics = {}
        if self._trainer is not None:
            for key, value in self.trainer.callback_metrics.items():
                if key.startswith("val/"):
                    metrics[key.removeprefix("val/")] = float(value)
        checkpoint["val_metrics"] = metrics
