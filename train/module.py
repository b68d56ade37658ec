"""The LightningModule that trains a ``vq.model.VQVAE``: the one training loop.

The objective (``train.objective``, docs/training.md "The recipe"):

    L_G = l2_weight · MSE + l1_weight · L1 + quantizer loss
          [+ perceptual.weight · perceptual]                     (``model.perceptual``)
          [+ λ · adversarial.weight · L_G^adv from start_step]    (``model.adversarial``)
          [+ adversarial.feature_matching_weight · L_FM]
    L_D = hinge or non-saturating loss of a PatchGAN [+ LeCAM]

(MSE and L1 of the images' blur when ``adversarial.pixel_loss_lowpass``; D judges their
high-pass when ``adversarial.highpass_sigma``.)

AdamW for the VQ-VAE with a step-based schedule (linear warmup, then cosine to
``min_lr_ratio · lr``; 1.0 keeps it constant) and Adam for the discriminator on the same
schedule. Without the adversarial term the optimization is Lightning's automatic one
(gradient clipping from ``trainer.gradient_clip_val``); with it, two optimizers step in
``training_step`` (manual optimization) and ``vq-train`` hands the trainer's clipping value
to the module. ``ema_decay`` keeps a moving average of the weights that validation, predict
and export use. ``trainable="decoder"`` freezes the encoder and quantizer: codes stay
bit-identical while the decoder is fine-tuned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal

import lightning as L
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from train.gan import AdversarialConfig, PatchDiscriminator
from train.lpips import LPIPS, resolve_weights, weights_file
from train.objective import (
    adaptive_weight,
    adversarial_factor,
    discriminator_loss,
    ema_update_,
    feature_matching_loss,
    gaussian_blur,
    gaussian_highpass,
    generator_loss,
    lecam_regularizer,
    parameter_groups,
    reconstruction_losses,
    warmup_cosine,
)
from train.perceptual import PerceptualConfig, build_perceptual
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
    """

    lecam_ema_real: torch.Tensor
    lecam_ema_fake: torch.Tensor

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
        if perceptual is not None and perceptual.kind == "lpips":
            resolve_weights(perceptual.net, perceptual.weights)  # fail before any run starts
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
        self.adversarial: AdversarialConfig | None = adversarial
        self.perceptual_config: PerceptualConfig | None = perceptual
        # The perceptual network's weights are the user's files, not part of the run: kept
        # out of the checkpoint (a list is not a registered submodule) and built at setup.
        self._perceptual: list[torch.nn.Module] = []
        # The same for val/lpips's LPIPS (VGG), built at the first validation if the weights exist.
        self._val_lpips: list[LPIPS] | None = None
        self.ema: VQVAE | None = None
        if ema_decay is not None:
            self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.discriminator: PatchDiscriminator | None = None
        if adversarial is not None:
            self.discriminator = PatchDiscriminator(
                vqvae.in_channels, adversarial.channels, adversarial.layers
            )
            # LeCAM's moving averages of the logits (buffers: they resume with the run).
            self.register_buffer("lecam_ema_real", torch.zeros(()))
            self.register_buffer("lecam_ema_fake", torch.zeros(()))
            # Two optimizers step in training_step; see the module docstring.
            self.automatic_optimization = False
        # Set by vq-train from trainer.gradient_clip_val under manual optimization, where
        # Lightning refuses to clip by itself.
        self.gradient_clip_val: float | None = None
        if trainable == "decoder":
            self.model.encoder.requires_grad_(False)
            self.model.quantizer.requires_grad_(False)
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

    def setup(self, stage: str) -> None:
        # State dicts stay layout-agnostic (save_tokenizer makes them contiguous).
        for net in (self.model, self.ema, self.discriminator):
            if net is not None:
                net.to(memory_format=self.memory_format)  # type: ignore[call-overload]  # stubs lack it
        if self.hparams["compile"] and stage == "fit":
            self.model.encoder.compile()
            self.model.decoder.compile()
        if stage == "fit" and self.perceptual_config is not None and not self._perceptual:
            self._perceptual.append(build_perceptual(self.perceptual_config).to(self.device))

    @property
    def perceptual(self) -> torch.nn.Module | None:
        if self.perceptual_config is None:
            return None
        if not self._perceptual:  # outside fit (a test, a bench): build on first use
            self._perceptual.append(build_perceptual(self.perceptual_config).to(self.device))
        return self._perceptual[0]

    def _run(self, model: VQVAE, images: torch.Tensor) -> VQVAEOutput:
        """The forward pass; with ``trainable="decoder"`` the frozen encoder and quantizer run
        without a graph and in eval mode (no codebook statistics move)."""
        images = images.contiguous(memory_format=self.memory_format)
        if self.hparams["trainable"] != "decoder":
            return model(images)
        model.encoder.eval()
        model.quantizer.eval()
        with torch.no_grad():
            model.check_images(images)
            z = model.encoder(images)
            q = model.quantizer(z)
        return VQVAEOutput(recon=model.decoder(q.quantized), quantizer=q, z=z)

    def compute_losses(
        self, images: torch.Tensor, model: VQVAE | None = None
    ) -> tuple[dict[str, torch.Tensor], VQVAEOutput]:
        """images float (B, 3, H, W) in [-1, 1] -> (the reconstruction, quantizer and
        perceptual terms, the model's ``VQVAEOutput``); "loss" is their weighted sum, what the
        VQ-VAE minimizes apart from the adversarial term."""
        out = self._run(model if model is not None else self.model, images)
        recon, target = out.recon.float(), images.float()
        hp = self.hparams
        adv = self.adversarial
        if adv is not None and adv.pixel_loss_lowpass:
            assert adv.highpass_sigma is not None  # AdversarialConfig checks it
            recon = gaussian_blur(recon, adv.highpass_sigma)
            target = gaussian_blur(target, adv.highpass_sigma)
        losses = reconstruction_losses(recon, target)
        losses["quant_loss"] = out.quantizer.loss.float()
        total = hp["l2_weight"] * losses["mse"] + hp["l1_weight"] * losses["l1"]
        if hp["trainable"] != "decoder":
            total = total + losses["quant_loss"]
        perceptual = self.perceptual
        if perceptual is not None:
            assert self.perceptual_config is not None
            losses["perceptual"] = perceptual(out.recon, images)
            total = total + self.perceptual_config.weight * losses["perceptual"]
        losses["loss"] = total
        return losses, out

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.discriminator is None:
            losses, out = self.compute_losses(batch)
        else:
            losses, out = self._adversarial_step(batch)
        if self.ema is not None:
            decay = float(self.hparams["ema_decay"])
            ema_update_(
                list(self.ema.state_dict().values()), list(self.model.state_dict().values()), decay
            )
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()},
            prog_bar=False,
            on_step=True,
            on_epoch=False,
            batch_size=batch.shape[0],
        )
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=batch.shape[0])
        # indices go to CodebookMonitor (on_train_batch_end receives this dict).
        return {"loss": losses["loss"], "indices": out.quantizer.indices.detach()}

    def _adversarial_step(self, batch: torch.Tensor) -> tuple[dict[str, torch.Tensor], VQVAEOutput]:
        """One generator step and one discriminator step (manual optimization)."""
        adv, disc = self.adversarial, self.discriminator
        assert adv is not None and disc is not None
        optimizers, schedulers = self.optimizers(), self.lr_schedulers()
        assert isinstance(optimizers, list) and isinstance(schedulers, list)
        (opt_g, opt_d), (sched_g, sched_d) = optimizers, schedulers
        gan_on = adversarial_factor(self.global_step, adv.start_step) > 0

        # Generator.
        losses, out = self.compute_losses(batch)
        g_total = losses["loss"]
        if gan_on:
            # What D sees of both, computed once for the generator's and D's steps.
            real, fake = self._judged(batch), self._judged(out.recon)
            disc.requires_grad_(False)  # the generator's step leaves D's gradients alone
            feats_fake = disc.features(fake)
            logits_fake = feats_fake[-1].float()
            if adv.feature_matching_weight > 0:
                with torch.no_grad():
                    feats_real = disc.features(real)
                losses["feature_matching"] = feature_matching_loss(feats_real, feats_fake)
            disc.requires_grad_(True)
            losses["g_adv"] = generator_loss(logits_fake, adv.loss)
            weight = torch.tensor(adv.weight, device=batch.device)
            if adv.adaptive:
                weight = weight * adaptive_weight(
                    losses["loss"], losses["g_adv"], self._last_layer()
                )
            losses["adaptive_weight"] = weight.detach()
            g_total = g_total + weight * losses["g_adv"]
            if "feature_matching" in losses:
                g_total = g_total + adv.feature_matching_weight * losses["feature_matching"]
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_total)
        if self.gradient_clip_val:
            self.clip_gradients(
                opt_g.optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm="norm",
            )
        opt_g.step()
        sched_g.step()  # type: ignore[call-arg]  # LambdaLR, not ReduceLROnPlateau

        # Discriminator, on the same batch's real images and (detached) reconstructions.
        if gan_on:
            pair = torch.cat([real, fake.detach().to(real.dtype)])
            logits = disc(pair.contiguous(memory_format=self.memory_format)).float()
            logits_real, logits_fake = logits.chunk(2)
            d_loss = discriminator_loss(logits_real, logits_fake, adv.loss)
            losses["d_loss"] = d_loss.detach()
            if adv.lecam_weight > 0:
                lecam = lecam_regularizer(
                    logits_real, logits_fake, self.lecam_ema_real, self.lecam_ema_fake
                )
                losses["lecam"] = lecam.detach()
                d_loss = d_loss + adv.lecam_weight * lecam
                with torch.no_grad():
                    self.lecam_ema_real.lerp_(logits_real.mean(), 1 - adv.lecam_decay)
                    self.lecam_ema_fake.lerp_(logits_fake.mean(), 1 - adv.lecam_decay)
            losses["d_logits_real"] = logits_real.detach().mean()
            losses["d_logits_fake"] = logits_fake.detach().mean()
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            # The raw optimizer: Lightning counts every LightningOptimizer step as a global
            # step, and one batch is one step of the run (max_steps, checkpoints, schedule).
            opt_d.optimizer.step()
        sched_d.step()  # type: ignore[call-arg]
        losses["loss"] = g_total.detach()
        return losses, out

    def _judged(self, images: torch.Tensor) -> torch.Tensor:
        """What the discriminator sees of ``images``: all of them, or their high-pass."""
        assert self.adversarial is not None
        sigma = self.adversarial.highpass_sigma
        if sigma is not None:
            images = gaussian_highpass(images, sigma)
        return images.contiguous(memory_format=self.memory_format)

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
        if self.discriminator is None:
            return gen
        adv = self.adversarial
        assert adv is not None
        d_opt = torch.optim.Adam(
            self.discriminator.parameters(),
            lr=adv.lr if adv.lr is not None else hp["lr"],
            betas=tuple(adv.betas if adv.betas is not None else hp["betas"]),
        )
        d_sched = torch.optim.lr_scheduler.LambdaLR(d_opt, _schedule(1.0, warmup, total, min_ratio))
        disc = {
            "optimizer": d_opt,
            "lr_scheduler": {"scheduler": d_sched, "interval": "step", "frequency": 1},
        }
        return [gen, disc]

    def on_fit_start(self) -> None:
        if self.discriminator is not None and str(self.trainer.precision) in ("16-mixed", "16"):
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
