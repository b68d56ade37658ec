"""The Tokenizer's inputs (tensors, numpy arrays, PIL images) and its precision choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vq import precision as P
from vq.model import VQVAE, QuantizerConfig, VQVAEConfig
from vq.tokenizer import CPU_CHUNK_PIXELS, Tokenizer, as_image_batch, chunk_size, resolve_precision


def tiny_tokenizer(quantizer: QuantizerConfig, precision: str | None = "fp32") -> Tokenizer:
    torch.manual_seed(0)
    cfg = VQVAEConfig(f=4, widths=(8, 16, 16), num_res_blocks=1, quantizer=quantizer)
    return Tokenizer(VQVAE(cfg), {}, precision=precision)


FSQ = QuantizerConfig(kind="fsq", codebook_size=15, levels=(5, 3))
VQ = QuantizerConfig(kind="vq", codebook_size=16)


def photo_like(h: int = 16, w: int = 24, seed: int = 0) -> np.ndarray:
    """Smooth uint8 (H, W, 3): gradients plus mild noise, like a photo's statistics."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def test_numpy_pil_and_tensor_inputs_give_the_same_codes() -> None:
    tok = tiny_tokenizer(FSQ)
    array = photo_like()  # (H, W, 3)
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]  # (1, 3, H, W)
    expected = tok.encode(tensor)
    assert expected.shape == (1, 4, 6)
    assert torch.equal(tok.encode(array), expected)
    assert torch.equal(tok.encode(array[None]), expected)  # (B, H, W, 3)
    assert torch.equal(tok.encode(Image.fromarray(array)), expected)
    assert torch.equal(tok.encode(tensor[0]), expected)  # (3, H, W)
    pair = tok.encode([array, Image.fromarray(photo_like(seed=1))])
    assert pair.shape == (2, 4, 6) and torch.equal(pair[:1], expected)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (Image.new("L", (8, 8)), r"mode 'L'.*convert\('RGB'\)"),
        (Image.new("RGBA", (8, 8)), r"mode 'RGBA'"),
        (np.zeros((8, 8, 3), dtype=np.float32), r"uint8.*float32.*astype\(np.uint8\)"),
        (np.zeros((8, 8), dtype=np.uint8), r"grayscale.*np\.stack\(\[x, x, x\], axis=-1\)"),
        (
            [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 12, 3), np.uint8)],
            "share a size.*own call, or crop or resize",
        ),
        ([], "empty list"),
        ("image.png", "has type str"),
        (torch.zeros(2, 3, 8, 8), r"uint8.*float32.*round\(\)"),
    ],
)
def test_bad_inputs_say_how_to_convert(images: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_image_batch(images)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((8, 8, 4), np.uint8), r"4 channel.*RGBA: drop the alpha.*x\[\.\.\., :3\]"),
        (np.zeros((8, 8, 1), np.uint8), r"1 channel.*grayscale: repeat it to RGB"),
        (torch.zeros(1, 2, 8, 8, dtype=torch.uint8), r"2 channel.*convert it to RGB"),
        (np.zeros((10, 12, 3), np.uint8), r"multiples of f=4, got 10x12; crop to 8x12"),
    ],
)
def test_encode_says_how_to_fix_channels_and_sizes(images: object, message: str) -> None:
    """The README promises that what ``encode`` refuses gets a ValueError saying how to fix it."""
    with pytest.raises(ValueError, match=message):
        tiny_tokenizer(FSQ).encode(images)


def test_precision_is_validated_naming_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"precision='fp16' is not allowed.*\['fp32', 'bf16'\]"):
        tiny_tokenizer(FSQ, precision="fp16")
    assert P.check_precision("bf16") == "bf16"


def test_default_precision_follows_the_hardware_and_the_artifact() -> None:
    cpu = torch.device("cpu")
    native = P.bf16_native(cpu)
    assert resolve_precision(None, cpu, {}) == ("bf16" if native else "fp32")
    assert resolve_precision(None, cpu, {"recommended_precision": "fp32"}) == "fp32"
    assert resolve_precision("bf16", cpu, {"recommended_precision": "fp32"}) == "bf16"
    tok = tiny_tokenizer(FSQ, precision=None)
    assert tok.precision == resolve_precision(None, cpu, {})
    assert f"precision={tok.precision!r}" in repr(tok)


@pytest.mark.parametrize("quantizer", [FSQ, VQ], ids=["fsq", "vq"])
def test_bf16_path_agrees_with_float32(quantizer: QuantizerConfig) -> None:
    fp32 = tiny_tokenizer(quantizer, "fp32")
    bf16 = tiny_tokenizer(quantizer, "bf16")
    assert bf16.precision == "bf16"
    images = torch.stack(
        [torch.from_numpy(photo_like(32, 32, s)).permute(2, 0, 1) for s in range(4)]
    )
    codes32, codes16 = fp32.encode(images), bf16.encode(images)
    assert codes16.dtype == torch.int64 and codes16.shape == codes32.shape
    # bf16 moves the encoder output a little; the codes follow it, so most stay equal.
    assert (codes16 == codes32).float().mean() >= 0.8
    recon32 = fp32.decode(codes32).float()
    recon16 = bf16.decode(codes32).float()
    mse = (recon32 - recon16).pow(2).mean().item()
    assert 10 * math.log10(255**2 / max(mse, 1e-12)) > 30.0


@pytest.mark.parametrize("quantizer", [FSQ, VQ], ids=["fsq", "vq"])
def test_fp32_codes_do_not_depend_on_the_rest_of_the_batch(quantizer: QuantizerConfig) -> None:
    # Users pre-tokenize datasets in batches and compare with codes served one at a time.
    tok = tiny_tokenizer(quantizer, "fp32")
    images = [photo_like(32, 48, seed) for seed in range(6)]
    together = tok.encode(images)
    alone = torch.cat([tok.encode(image) for image in images])
    assert torch.equal(together, alone)
    assert torch.equal(tok.encode(images[2:5]), together[2:5])


def test_chunk_size_keeps_cpu_passes_near_the_pixel_budget() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert CPU_CHUNK_PIXELS == 256 * 256
    assert chunk_size(16, 256 * 256, cpu) == 1
    assert chunk_size(16, 128 * 128, cpu) == 4
    assert chunk_size(3, 64 * 64, cpu) == 3  # never more than the batch
    assert chunk_size(2, 1024 * 1024, cpu) == 1  # at least one image
    assert chunk_size(16, 256 * 256, gpu) == 16  # GPUs take the whole batch


def test_cpu_batches_of_large_images_run_one_image_per_pass() -> None:
    tok = tiny_tokenizer(FSQ, "fp32")
    images = torch.stack(
        [torch.from_numpy(photo_like(256, 256, s)).permute(2, 0, 1) for s in range(3)]
    )
    passes: list[int] = []
    encode, decode = tok.model.encode, tok.model.decode
    tok.model.encode = lambda x: passes.append(x.shape[0]) or encode(x)  # type: ignore[method-assign]
    tok.model.decode = lambda c: passes.append(c.shape[0]) or decode(c)  # type: ignore[method-assign]
    codes = tok.encode(images)
    recon = tok.decode(codes)
    assert passes == [1, 1, 1, 1, 1, 1]
    assert codes.shape == (3, 64, 64) and recon.shape == (3, 3, 256, 256)
    assert torch.equal(codes[1:2], tok.encode(images[1:2]))  # the chunks stay in order


def test_bf16_path_keeps_the_data_layers_in_float32() -> None:
    # Under bf16 autocast the encoder's first convolution sees unrounded pixels, its latent
    # and the decoder's pixels come out in float32; the layers in between run in bf16.
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(f=4, widths=(8, 16, 16), num_res_blocks=1, quantizer=FSQ)).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.encoder.stem.register_forward_hook(lambda m, i, o: seen.update(stem=o)),
        model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.update(block=o)),
        model.encoder.blocks[-1].register_forward_hook(lambda m, i, o: seen.update(last=o)),
    ]
    with torch.no_grad(), P.autocast("cpu", "bf16"):
        z = model.encoder(x)
        recon = model.decoder(model.quantizer(z).quantized)
    for hook in hooks:
        hook.remove()
    assert z.dtype == torch.float32 and recon.dtype == torch.float32
    assert seen["block"].dtype == torch.bfloat16  # the body still runs in bf16
    assert seen["last"].dtype == torch.float32  # the block before the latent does not
    with torch.no_grad():
        exact = model.encoder.stem(x)  # float32 from the unrounded pixels
    assert torch.equal(seen["stem"], exact)
    rounded = model.encoder.stem(x.bfloat16().float())  # what rounding the pixels would give
    assert not torch.equal(rounded, exact)
