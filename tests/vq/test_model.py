"""VQ-VAE model and its configs: round trips, validation, shapes, gradients."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vq.model import (
    FSQ_RECOMMENDED_LEVELS,
    VQVAE,
    FSQConfig,
    QuantizerConfig,
    VQVAEConfig,
    VQVAEOutput,
    build_quantizer,
)
from vq.types import Quantizer

# One tiny quantizer config per method named in the design notes.
QUANTIZERS = {
    "ste": QuantizerConfig(kind="vq", codebook_size=16),
    "rotation": QuantizerConfig(kind="vq", codebook_size=16, grad_estimator="rotation"),
    "simvq": QuantizerConfig(kind="vq", codebook_size=16, codebook="linear"),
    "ste-data-init": QuantizerConfig(kind="vq", codebook_size=16, codebook_init="data"),
    "fsq": QuantizerConfig(kind="fsq", codebook_size=15, levels=(5, 3)),
}


def tiny_config(f: int = 4, quantizer: str = "ste", **overrides: object) -> VQVAEConfig:
    n_levels = int(math.log2(f)) + 1
    widths = tuple([8] + [16] * (n_levels - 1))
    kwargs: dict[str, object] = dict(
        f=f, widths=widths, num_res_blocks=1, quantizer=QUANTIZERS[quantizer]
    )
    kwargs.update(overrides)
    return VQVAEConfig(**kwargs)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --- configs -------------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_config_json_round_trip(quantizer: str) -> None:
    cfg = tiny_config(8, quantizer, code_dim=6)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert VQVAEConfig.from_dict(data) == cfg
    assert VQVAEConfig.from_dict(data).to_dict() == cfg.to_dict()


def test_default_config_resolves_widths_and_code_dim() -> None:
    cfg = VQVAEConfig()
    assert cfg.f == 8
    assert len(cfg.widths) == 4
    assert cfg.code_dim == 32
    fsq = VQVAEConfig(quantizer=QuantizerConfig(kind="fsq", codebook_size=1024))
    assert fsq.quantizer.levels == FSQ_RECOMMENDED_LEVELS[1024]
    assert fsq.code_dim == len(FSQ_RECOMMENDED_LEVELS[1024])
    assert len(VQVAEConfig(f=16).widths) == 5


def test_quantizer_given_as_mapping_is_converted() -> None:
    cfg = VQVAEConfig(quantizer={"kind": "fsq", "codebook_size": 256})  # type: ignore[arg-type]
    assert isinstance(cfg.quantizer, FSQConfig)
    assert cfg.quantizer.levels == (8, 6, 5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"f": 2}, r"f=2 .*\[4, 8, 16\]"),
        ({"f": 32}, r"f=32 .*\[4, 8, 16\]"),
        ({"f": 8, "widths": (8, 16)}, r"widths=\[8, 16\].*f=8.*4"),
        ({"widths": (8, 0, 16, 16)}, r"widths"),
        ({"num_res_blocks": -1}, r"num_res_blocks=-1"),
        ({"code_dim": 0}, r"code_dim=0"),
        ({"in_channels": 0}, r"in_channels=0"),
    ],
)
def test_model_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VQVAEConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lfq"}, r"kind='lfq'.*\['vq', 'fsq'\]"),
        ({"codebook": "cosine"}, r"codebook='cosine'.*\['plain', 'linear'\]"),
        ({"grad_estimator": "gumbel"}, r"grad_estimator='gumbel'.*\['ste', 'rotation'\]"),
        ({"codebook_update": "kmeans"}, r"codebook_update='kmeans'"),
        ({"codebook_size": 1}, r"codebook_size=1"),
        ({"beta": -0.1}, r"beta=-0.1"),
        ({"ema_decay": 1.5}, r"ema_decay=1.5"),
        ({"dead_code_threshold": -1.0}, r"dead_code_threshold=-1.0"),
        ({"codebook": "linear", "codebook_update": "ema"}, r"ema.*plain"),
        (
            {"codebook_init": "kmeans"},
            r"codebook_init='kmeans'.*\['uniform', 'data', 'kaiming'\]",
        ),
        ({"codebook": "linear", "codebook_init": "data"}, r"codebook_init='data' needs.*plain"),
        (
            {"kind": "fsq", "codebook_size": 256, "codebook_init": "data"},
            r"codebook_init='data' has no meaning for kind='fsq'",
        ),
        ({"levels": (8, 5)}, r"unknown VQConfig field\(s\) \['levels'\]"),
        ({"kind": "fsq", "codebook_size": 1000}, r"codebook_size=1000.*\[256, 1024"),
        ({"kind": "fsq", "codebook_size": 1024, "levels": (8, 6, 5)}, r"set codebook_size=240"),
        ({"kind": "fsq", "codebook_size": 1, "levels": (1,)}, r"codebook_size=1"),
        ({"kind": "fsq", "codebook_size": 8, "levels": (8, 1)}, r"levels=\[8, 1\]"),
        (
            {"kind": "fsq", "codebook_size": 256, "grad_estimator": "rotation"},
            r"no meaning for kind='fsq'",
        ),
    ],
)
def test_quantizer_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**kwargs)  # type: ignore[arg-type]


def test_from_dict_rejects_unknown_fields() -> None:
    data = tiny_config().to_dict()
    data["dropout"] = 0.1
    with pytest.raises(ValueError, match=r"unknown VQVAEConfig field\(s\) \['dropout'\]"):
        VQVAEConfig.from_dict(data)
    data = tiny_config().to_dict()
    data["quantizer"]["temperature"] = 1.0
    with pytest.raises(ValueError, match=r"unknown VQConfig field\(s\) \['temperature'\]"):
        VQVAEConfig.from_dict(data)


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_build_quantizer_matches_config(quantizer: str) -> None:
    cfg = QUANTIZERS[quantizer]
    q = build_quantizer(cfg, 6)
    assert isinstance(q, Quantizer)
    assert q.codebook_size == cfg.codebook_size
    assert q.dim == 6


# --- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
@pytest.mark.parametrize("f", [4, 8, 16])
def test_shapes_and_code_range(f: int, quantizer: str) -> None:
    model = VQVAE(tiny_config(f, quantizer))
    images = torch.rand(2, 3, 2 * f, 3 * f) * 2 - 1
    out = model(images)
    assert isinstance(out, VQVAEOutput)
    assert out.recon.shape == images.shape
    assert out.z.shape == (2, model.code_dim, 2, 3)
    assert out.quantizer.quantized.shape == out.z.shape
    assert out.quantizer.loss.ndim == 0

    codes = model.encode(images)
    assert codes.dtype == torch.int64 and codes.shape == (2, 2, 3)
    assert int(codes.min()) >= 0 and int(codes.max()) < model.codebook_size
    assert torch.equal(codes, out.quantizer.indices)

    decoded = model.decode(codes)
    assert decoded.shape == images.shape
    # decode(encode(x)) is what forward reconstructs: the quantizer's decode equals its forward.
    torch.testing.assert_close(decoded, out.recon, rtol=1e-3, atol=1e-3)


def test_fsq_with_code_dim_projects() -> None:
    model = VQVAE(tiny_config(4, "fsq", code_dim=8))
    out = model(torch.rand(1, 3, 8, 8) * 2 - 1)
    assert out.z.shape[1] == 8
    assert model.quantizer.dim == 8


@pytest.mark.parametrize("f", [4, 8, 16])
@pytest.mark.parametrize(("h", "w"), [(1, 0), (0, 1), (1, 1)])
def test_size_not_divisible_by_f_names_f(f: int, h: int, w: int) -> None:
    model = VQVAE(tiny_config(f))
    images = torch.zeros(1, 3, 2 * f + h * 2, 2 * f + w * 2)
    with pytest.raises(ValueError, match=rf"multiples of f={f}"):
        model(images)
    with pytest.raises(ValueError, match=rf"multiples of f={f}"):
        model.encode(images)


def test_wrong_image_rank_or_channels() -> None:
    model = VQVAE(tiny_config())
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.zeros(1, 1, 8, 8))


def test_decode_rejects_bad_codes() -> None:
    model = VQVAE(tiny_config())
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        model.decode(torch.full((1, 2, 2), -1))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        model.decode(torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("quantizer", sorted(QUANTIZERS))
def test_gradients_reach_encoder_and_decoder(quantizer: str) -> None:
    model = VQVAE(tiny_config(4, quantizer))
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    out = model(images)
    loss = (out.recon - images).pow(2).mean() + out.quantizer.loss
    loss.backward()
    for name, module in (("encoder", model.encoder), ("decoder", model.decoder)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), f"{name} has parameters without gradient"
        assert any(float(g.abs().sum()) > 0 for g in grads if g is not None), name
    # The stem is the encoder's first layer: the reconstruction loss must reach it through
    # the quantizer's gradient estimator.
    assert model.encoder.stem.weight.grad is not None
    assert float(model.encoder.stem.weight.grad.abs().sum()) > 0


def test_fully_convolutional_any_multiple_of_f() -> None:
    model = VQVAE(tiny_config(8)).eval()
    for h, w in [(8, 8), (16, 40), (24, 8)]:  # (8, 8) gives a 1x1 code grid
        assert model.encode(torch.zeros(1, 3, h, w)).shape == (1, h // 8, w // 8)


def test_default_model_is_small() -> None:
    model = VQVAE(VQVAEConfig())
    n_params = sum(p.numel() for p in model.parameters())
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert n_params < 2_500_000
    assert n_bytes < 10 * 2**20
