"""The LightningModule that trains a ``vq.model.VQVAE``: the one training loop, as glue.

The recipe's terms are ``train.recipe.RecipeLoss``'s and the optimizers and schedules
``train.optimization``'s (docs/training.md, "The recipe"). Without the adversarial term the
optimization is Lightning's automatic one (gradient clipping from
``trainer.gradient_clip_val``); with it, a generator step and a discriminator step run in
``training_step`` (manual optimization). ``ema`` keeps a moving average of the weights that
validation, predict and export use. ``trainable="decoder"`` freezes the encoder and quantizer:
codes stay bit-identical while the decoder is fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from train.checkpointing import upgrade_checkpoint
from train.gan import AdversarialConfig
from train.lpips import LPIPS, weights_file
from train.objective import ema_update_, warmup_cosine
from train.optimization import EMAConfig, OptimizerConfig, optimizers
from train.perceptual import PerceptualConfig
from train.predict_data import center_crop_to_multiple, predict_codes
from train.recipe import Losses, RecipeLoss, ReconstructionConfig
from vq.artifact import load_tokenizer
from vq.config import check_choice
from vq.model import VQVAE, VQVAEConfig, VQVAEOutput
from vq.pixels import float_to_unit

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


def _network(
    vqvae: VQVAEConfig | Mapping[str, Any] | None, start: VQVAE | None, init_from: str | None
) -> VQVAEConfig:
    """The network to train: ``vqvae``, or the ``init_from`` artifact's when left out."""
    if vqvae is None:
        return VQVAEConfig() if start is None else start.config
    if isinstance(vqvae, Mapping):
        vqvae = VQVAEConfig.from_dict(vqvae)
    if not isinstance(vqvae, VQVAEConfig):
        raise ValueError(f"vqvae must be a VQVAEConfig or a mapping, got {type(vqvae).__name__}")
    if start is not None and start.config.to_dict() != vqvae.to_dict():
        raise ValueError(
            f"model.init_from={init_from!r} holds a {start.config.to_dict()} network, not "
            f"model.vqvae={vqvae.to_dict()}; leave model.vqvae out to use the artifact's"
        )
    return vqvae


def _quality_metrics() -> tuple[PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure]:
    return PeakSignalNoiseRatio(data_range=1.0), StructuralSimilarityIndexMeasure(data_range=1.0)


# Defaults as names: the CLI shows and merges YAML onto them (B008: no calls in signatures).
DEFAULT_OPTIMIZER = OptimizerConfig()
DEFAULT_RECONSTRUCTION = ReconstructionConfig()


class VQVAEModule(L.LightningModule):
    """Args (each group a validated dataclass; in YAML a nested mapping under ``model``):
    vqvae: the architecture and quantizer (``vq.model.VQVAEConfig``).
    optimizer: AdamW and its schedule (``train.optimization.OptimizerConfig``).
    reconstruction: the pixel terms' weights (``train.recipe.ReconstructionConfig``).
    perceptual: the perceptual term (``train.perceptual.PerceptualConfig``; None = none).
    adversarial: the PatchGAN term (``train.gan.AdversarialConfig``; None = none).
    ema: the moving average of the weights (``train.optimization.EMAConfig``; None = off).
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
        optimizer: OptimizerConfig = DEFAULT_OPTIMIZER,
        reconstruction: ReconstructionConfig = DEFAULT_RECONSTRUCTION,
        perceptual: PerceptualConfig | None = None,
        adversarial: AdversarialConfig | None = None,
        ema: EMAConfig | None = None,
        init_from: str | None = None,
        trainable: Trainable = "all",
        channels_last: bool = True,
        compile: bool = False,
        gradient_clip_val: float | None = None,
    ) -> None:
        super().__init__()
        start = None if init_from is None else load_tokenizer(init_from, precision="fp32").model
        vqvae = _network(vqvae, start, init_from)
        optimizer = _config(optimizer, OptimizerConfig, "optimizer")
        reconstruction = _config(reconstruction, ReconstructionConfig, "reconstruction")
        perceptual = _config(perceptual, PerceptualConfig, "perceptual")
        adversarial = _config(adversarial, AdversarialConfig, "adversarial")
        ema = _config(ema, EMAConfig, "ema")
        check_choice("model.trainable", trainable, ["all", "decoder"])
        if gradient_clip_val is not None and adversarial is None:
            raise ValueError(
                "model.gradient_clip_val clips the adversarial recipe's generator step; "
                "without model.adversarial use trainer.gradient_clip_val"
            )
        # Hyper-parameters as plain values (configs as dicts, no pickled classes): the
        # checkpoint then loads with torch.load(weights_only=True), and
        # `load_from_checkpoint` / `vq-export` rebuild the configs from the dicts.
        configs = (vqvae, optimizer, reconstruction, perceptual, adversarial, ema)
        names = ("vqvae", "optimizer", "reconstruction", "perceptual", "adversarial", "ema")
        self.save_hyperparameters(
            {k: None if c is None else c.to_dict() for k, c in zip(names, configs, strict=True)}
            | {"init_from": init_from, "trainable": trainable}
            | {"channels_last": channels_last, "compile": compile}
        )
        self.optimizer_config, self.ema_config = optimizer, ema
        self.model = VQVAE(vqvae)
        if start is not None:
            self.model.load_state_dict(start.state_dict())
        self.ema = None if ema is None else copy.deepcopy(self.model).requires_grad_(False)
        # The one place trainable="decoder" is decided: these parts get no gradients, run in
        # eval mode (no codebook statistics move) and their loss leaves the objective.
        decoder_only = trainable == "decoder"
        self.frozen = (self.model.encoder, self.model.quantizer) if decoder_only else ()
        for part in self.frozen:
            part.requires_grad_(False).eval()  # train() keeps them so
        self.recipe = RecipeLoss(
            vqvae.in_channels, reconstruction, perceptual, adversarial, self.memory_format
        )
        # Two optimizers step in training_step; see the module docstring.
        self.automatic_optimization = adversarial is None
        self.gradient_clip_val = gradient_clip_val
        self.val_psnr, self.val_ssim = _quality_metrics()
        # val/lpips's LPIPS (VGG), built at the first validation where the weights exist; a
        # list keeps it out of the checkpoint (not a registered submodule).
        self._val_lpips: list[LPIPS] | None = None
        self.test_psnr, self.test_ssim = _quality_metrics()

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
        """The weights that validate, predict and export: the EMA copy when ``ema`` is set."""
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
        if self.ema is not None and self.ema_config is not None:
            averaged, current = self.ema.state_dict().values(), self.model.state_dict().values()
            ema_update_(list(averaged), list(current), self.ema_config.decay)
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

    def _lpips_of(self, recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """Mean LPIPS (VGG) of a validation batch; None without the weights (vq-lpips-weights)
        or for images VGG's five taps cannot take (not RGB, under 16 px a side)."""
        if self._val_lpips is None:
            found = weights_file("vgg").is_file()
            self._val_lpips = [LPIPS("vgg").to(self.device)] if found else []
        if not self._val_lpips or images.shape[1] != 3 or min(images.shape[-2:]) < 16:
            return None
        return self._val_lpips[0](recon.clamp(-1, 1), images).mean()

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
        if stage == "val" and (lpips := self._lpips_of(out.recon, batch)) is not None:
            self.log("val/lpips", lpips, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        return {"indices": out.quantizer.indices.detach(), "recon": out.recon.detach()}

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """A batch from ``ImageDataModule.predict_dataloader`` -> codes for its images."""
        return predict_codes(batch, self.inference_model, self.device)

    def configure_optimizers(self) -> Any:
        total = self.optimizer_config.total_steps
        if total is None:
            max_steps = self.trainer.max_steps
            total = max_steps if max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        configs = optimizers(
            self.model,
            self.recipe.discriminator,
            self.optimizer_config,
            self.recipe.adversarial,
            total,
        )
        return configs if len(configs) > 1 else configs[0]

    def on_fit_start(self) -> None:
        if not self.automatic_optimization and str(self.trainer.precision) in ("16-mixed", "16"):
            raise ValueError(
                "the adversarial term steps the discriminator outside Lightning's loss "
                f"scaling: trainer.precision={self.trainer.precision!r} is not supported; use "
                "bf16-mixed or 32-true"
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint)  # a checkpoint of an earlier layout resumes too

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The latest validation figures travel with the checkpoint so that export (at the
        # end of fit or via vq-export) can write them into the artifact's config.json.
        try:
            metrics = self.trainer.callback_metrics
        except RuntimeError:  # saved by a bare strategy, no Trainer attached: no figures
            metrics = {}
        checkpoint["val_metrics"] = {
            key.removeprefix("val/"): float(value)
            for key, value in metrics.items()
            if key.startswith("val/")
        }
