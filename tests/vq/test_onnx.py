"""ONNX export: onnxruntime's codes and images agree with the PyTorch Tokenizer for each
architecture and quantizer, at several batch sizes and image sizes (dynamic axes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

import vq
from vq.importer import convert, read_checkpoint
from vq.onnx_export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(n: int, h: int, w: int) -> torch.Tensor:
    """n uint8 (3, h, w) crops of scikit-image's bundled photographs."""
    sources = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    crops = []
    for i in range(n):
        im = sources[i % len(sources)]
        top, left = (37 * i) % (im.shape[0] - h), (53 * i) % (im.shape[1] - w)
        crops.append(torch.from_numpy(im[top : top + h, left : left + w].copy()).permute(2, 0, 1))
    return torch.stack(crops)


def small(quantizer: vq.AnyQuantizerConfig, **kw: object) -> Callable[[], vq.VQVAE]:
    def build() -> vq.VQVAE:
        torch.manual_seed(0)
        return vq.VQVAE(vq.VQVAEConfig(f=4, widths=(8, 16, 16), quantizer=quantizer, **kw))  # type: ignore[arg-type]

    return build


def fixture(fmt: str, name: str) -> Callable[[], vq.VQVAE]:
    return lambda: convert(fmt, read_checkpoint(FIXTURES / name, fmt))


MODELS: dict[str, Callable[[], vq.VQVAE]] = {
    "vqvae-plain": small(vq.VQConfig(codebook_size=64)),
    "vqvae-simvq": small(vq.VQConfig(codebook_size=64, codebook="linear")),
    # the l2 codebook trained by EMA from a kaiming init (the rotation-trick paper's setting)
    "vqvae-l2-ema": small(
        vq.VQConfig(
            codebook_size=64, codebook_norm="l2", codebook_update="ema", codebook_init="kaiming"
        )
    ),
    # an l2 artifact written before the l2 codebook became a codebook component
    "vqvae-l2-artifact": lambda: vq.load_tokenizer(FIXTURES / "l2_artifact").model,
    "vqvae-fsq-projected": small(vq.FSQConfig(codebook_size=240, levels=(8, 6, 5)), code_dim=8),
    "vqgan-taming": fixture("taming", "taming_vqgan_tiny.ckpt"),
    "vqgan-llamagen-l2": fixture("llamagen", "llamagen_vq_tiny.pt"),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_matches_the_pytorch_tokenizer(name: str, tmp_path: Path) -> None:
    model = MODELS[name]()
    tok = vq.Tokenizer(model, {}, precision="fp32")
    enc_path, dec_path = export_onnx(model, tmp_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    enc = ort.InferenceSession(str(enc_path), options)
    dec = ort.InferenceSession(str(dec_path), options)
    same, total = 0, 0
    for n, h, w in [(1, 64, 64), (3, 48, 80)]:  # two batch sizes and image sizes: dynamic axes
        images = photos(n, h, w)
        codes = enc.run(None, {"images": images.numpy()})[0]
        expected = tok.encode(images).numpy()
        assert codes.dtype == np.int64 and codes.shape == expected.shape
        same, total = same + int((codes == expected).sum()), total + codes.size
        decoded = dec.run(None, {"codes": expected})[0]
        reference = tok.decode(torch.from_numpy(expected)).numpy()
        assert decoded.dtype == np.uint8 and decoded.shape == reference.shape
        assert psnr(decoded, reference) >= 50.0
    assert same / total >= 0.999, (same, total)


def test_float_input_encoder(tmp_path: Path) -> None:
    model = MODELS["vqgan-taming"]()
    enc_path, _ = export_onnx(model, tmp_path, input_dtype="float")
    images = photos(2, 32, 32)
    x = (images.float() / 127.5 - 1.0).numpy()
    codes = ort.InferenceSession(str(enc_path)).run(None, {"images": x})[0]
    expected = vq.Tokenizer(model, {}, precision="fp32").encode(images).numpy()
    assert (codes == expected).mean() >= 0.999
    with pytest.raises(ValueError, match="input_dtype='int8'"):
        export_onnx(model, tmp_path, input_dtype="int8")  # type: ignore[arg-type]
