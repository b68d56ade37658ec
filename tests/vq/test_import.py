"""vq-import: the upstream fixtures reproduce, the fixture's catchable mistakes are caught,
hyper-parameters are inferred for other shapes, and bad checkpoints fail clearly.

tests/fixtures/ holds the tiny taming / LlamaGen checkpoints and the outputs the upstream code
produced on a fixed input (see ``*_reference.safetensors`` metadata for their provenance).
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

import vq
import vq.vqgan
from vq.importer import (
    CheckpointImportError,
    convert,
    import_checkpoint,
    main,
    read_checkpoint,
)
from vq.model import VQVAE
from vq.pixels import float_to_uint8, uint8_to_float
from vq.quantizers import L2Codebook

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CHECKPOINTS = {"taming": "taming_vqgan_tiny.ckpt", "llamagen": "llamagen_vq_tiny.pt"}
REFERENCES = {
    "taming": "taming_vqgan_tiny_reference.safetensors",
    "llamagen": "llamagen_vq_tiny_reference.safetensors",
}
# The fixture README's suggested checks (reconstruction decoded from the looked-up rows).
TOLERANCES = {"pre_quant": 1e-5, "quantized": 1e-6, "reconstruction": 1e-4}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(fmt: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / REFERENCES[fmt]))


def converted(fmt: str) -> VQVAE:
    return convert(fmt, read_checkpoint(FIXTURES / CHECKPOINTS[fmt], fmt))


@torch.no_grad()
def errors(model: VQVAE, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs differences to the upstream outputs, and the count of differing indices."""
    z = model.encoder(ref["input"])
    indices = model.quantizer(z).indices
    quantized = model.quantizer.decode(ref["indices"])
    recon = model.decoder(quantized)
    return {
        "pre_quant": float((z - ref["pre_quant"]).abs().max()),
        "indices": float((indices != ref["indices"]).sum()),
        "quantized": float((quantized - ref["quantized"]).abs().max()),
        "reconstruction": float((recon - ref["reconstruction"]).abs().max()),
    }


def matches(err: dict[str, float]) -> bool:
    return err["indices"] == 0 and all(err[k] <= tol for k, tol in TOLERANCES.items())


# ------------------------------------------------------------------ the fixtures reproduce


@pytest.mark.parametrize("fmt", ["taming", "llamagen"])
def test_converted_fixture_reproduces_upstream_outputs(fmt: str, tmp_path: Path) -> None:
    out = import_checkpoint(fmt, FIXTURES / CHECKPOINTS[fmt], tmp_path / fmt)
    tok = vq.load_tokenizer(out, precision="fp32")
    ref = reference(fmt)
    err = errors(tok.model, ref)
    assert err["indices"] == 0, err
    for key, tol in TOLERANCES.items():
        assert err[key] <= tol, (key, err)
    # End to end through the uint8 API: codes and images as the model path gives them.
    images = float_to_uint8(ref["input"])
    codes = tok.encode(images)
    with torch.no_grad():
        expected = tok.model.quantizer(tok.model.encoder(uint8_to_float(images))).indices
    assert torch.equal(codes, expected)
    decoded = tok.decode(ref["indices"])
    upstream = float_to_uint8(ref["reconstruction"])
    diff = (decoded.int() - upstream.int()).abs()
    assert int(diff.max()) <= 1 and float((diff == 0).float().mean()) > 0.99
    assert tok.metadata["recommended_precision"] == "fp32"
    assert tok.metadata["extra"]["imported_from"] == fmt


def test_converted_fixtures_infer_their_configs() -> None:
    taming, llamagen = converted("taming").config, converted("llamagen").config
    # ddconfig ch 32, ch_mult [1, 2, 2], num_res_blocks 1, attn_resolutions [16] at res 64.
    assert (taming.widths, taming.num_res_blocks, taming.attn_levels) == ((32, 64, 64), 1, (2,))
    assert (taming.z_channels, taming.code_dim, taming.f) == (32, 16, 4)
    assert taming.quantizer == vq.VQConfig(codebook_size=256)
    # ch 32, ch_mult [1, 1, 2], num_res_blocks 2, attention on the last level.
    assert (llamagen.widths, llamagen.num_res_blocks, llamagen.attn_levels) == (
        (32, 32, 64),
        2,
        (2,),
    )
    assert llamagen.quantizer == vq.VQConfig(codebook_size=256, codebook_norm="l2")


# ------------------------------------------------------ the mistakes the fixture catches


def _gn_eps_1e5(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            m.eps = 1e-5


def _symmetric_pad(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    def forward(self: vq.vqgan.Downsample, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1)))

    monkeypatch.setattr(vq.vqgan.Downsample, "forward", forward)


def _bilinear(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    def forward(self: vq.vqgan.Upsample, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="bilinear"))

    monkeypatch.setattr(vq.vqgan.Upsample, "forward", forward)


def _gelu(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vq.vqgan, "swish", F.gelu)


def _unscaled_attention(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, scale=1.0)

    monkeypatch.setattr(vq.vqgan, "attention", attention)


def _raw_codebook(model: VQVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    def raw(self: L2Codebook) -> torch.Tensor:
        return self.codebook.float()

    monkeypatch.setattr(L2Codebook, "table", raw)


Mutation = Callable[[VQVAE, pytest.MonkeyPatch], None]
MUTATIONS: dict[str, Mutation] = {
    "groupnorm-eps-1e-5": _gn_eps_1e5,
    "symmetric-pad-downsample": _symmetric_pad,
    "bilinear-upsample": _bilinear,
    "gelu-not-swish": _gelu,
    "no-attention-scaling": _unscaled_attention,
}


@pytest.mark.parametrize(
    ("fmt", "mutation"),
    [(fmt, name) for fmt in ("taming", "llamagen") for name in MUTATIONS]
    + [("llamagen", "codebook-not-renormalised")],
)
def test_each_known_mistake_breaks_the_comparison(
    fmt: str, mutation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, ref = converted(fmt), reference(fmt)
    assert matches(errors(model, ref))
    (MUTATIONS.get(mutation) or _raw_codebook)(model, monkeypatch)
    assert not matches(errors(model, ref))


# ------------------------------------------- other shapes: ours -> upstream layout -> ours


def to_taming_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our vqgan state dict under taming's ``VQModel`` keys (the importer's inverse)."""
    renames = {
        "encoder.quant_conv.": "quant_conv.",
        "decoder.post_quant_conv.": "post_quant_conv.",
        "quantizer.codebook": "quantize.embedding.weight",
    }
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value.clone()
    return out


def to_llamagen_layout(state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    mid = {"block_1": "0", "attn_1": "1", "block_2": "2"}
    out = {}
    for key, value in to_taming_layout(state).items():
        key = re.sub(
            r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.",
            lambda m: f"{m[1]}.mid.{mid[m[2]]}.",
            key,
        )
        key = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", key)
        key = re.sub(r"^encoder\.down\.(\d+)\.", r"encoder.conv_blocks.\1.", key)
        key = re.sub(
            r"^decoder\.up\.(\d+)\.",
            lambda m: f"decoder.conv_blocks.{num_levels - 1 - int(m[1])}.",
            key,
        )
        key = re.sub(r"^decoder\.conv_blocks\.(\d+)\.block\.", r"decoder.conv_blocks.\1.res.", key)
        out[key] = value
    out["quantize.codebook_used"] = torch.zeros(65536)
    return out


SHAPES: dict[str, dict[str, Any]] = {
    "f8-attn-mid-only": dict(f=8, widths=(32, 32, 64, 64), num_res_blocks=1, attn_levels=()),
    "f4-ch-mult-2-first": dict(
        f=4, widths=(64, 64, 96), stem_width=32, num_res_blocks=2, attn_levels=(0, 2)
    ),
    "f16-taming-f16-shape": dict(
        f=16, widths=(32, 32, 64, 64, 128), num_res_blocks=2, attn_levels=(4,), z_channels=48
    ),
    "f8-decoder-widths": dict(
        f=8,
        widths=(32, 64, 64, 96),
        decoder_widths=(64, 32, 96, 96),
        num_res_blocks=1,
        attn_levels=(1,),
        code_dim=4,
    ),
}


@pytest.mark.parametrize("fmt", ["taming", "llamagen"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_other_shapes_are_inferred_and_reproduced(fmt: str, shape: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    norm = "l2" if fmt == "llamagen" else "none"
    cfg = vq.VQVAEConfig(
        architecture="vqgan",
        quantizer=vq.VQConfig(codebook_size=64, codebook_norm=norm),
        **SHAPES[shape],
    )
    source = VQVAE(cfg).eval()
    state = source.state_dict()
    if fmt == "taming":
        upstream = to_taming_layout(state)
        upstream["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)  # must be dropped
        torch.save({"state_dict": upstream, "global_step": 7}, tmp_path / "m.ckpt")
    else:
        upstream = to_llamagen_layout(state, cfg.num_levels)
        torch.save({"model": upstream, "steps": 7}, tmp_path / "m.ckpt")
    assert main([fmt, str(tmp_path / "m.ckpt"), str(tmp_path / "out")]) == 0
    tok = vq.load_tokenizer(tmp_path / "out", precision="fp32")
    assert tok.config == cfg
    for key, value in state.items():
        assert torch.equal(tok.model.state_dict()[key], value), key
    images = torch.randint(0, 256, (1, 3, 2 * cfg.f, 3 * cfg.f), dtype=torch.uint8)
    with torch.no_grad():
        expected = source.encode(uint8_to_float(images))
    assert torch.equal(tok.encode(images), expected)


# ------------------------------------------------------------------ clear errors, safe load


def _fixture_state(fmt: str) -> dict[str, torch.Tensor]:
    return read_checkpoint(FIXTURES / CHECKPOINTS[fmt], fmt)


def test_shape_mismatch_names_the_key_and_both_shapes() -> None:
    state = _fixture_state("taming")
    state["encoder.down.1.block.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(
        CheckpointImportError,
        match=re.escape(
            "encoder.down.1.block.0.conv2.weight: checkpoint (64, 64, 1, 1) vs inferred model (64, 64, 3, 3)"
        ),
    ):
        convert("taming", state)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("quantize.embedding.weight"), r"no 'quantize.embedding.weight'"),
        (
            lambda s: s.__setitem__("extra.weight", torch.zeros(1)),
            r"unexpected keys \['extra.weight'\]",
        ),
        (
            lambda s: s.pop("decoder.up.2.attn.0.q.weight"),
            r"attention sits at encoder levels \[2\]",
        ),
        (lambda s: s.pop("encoder.mid.attn_1.k.bias"), r"missing keys .*encoder.mid.attn_1.k.bias"),
        (
            lambda s: s.__setitem__("quantize.used", torch.arange(10)),
            r"remaps code indices",
        ),
        (
            lambda s: s.__setitem__("quantize.embed.weight", s.pop("quantize.embedding.weight")),
            r"GumbelQuantize or EMA quantizer",
        ),
    ],
    ids=["no-codebook", "unknown-key", "attention-mismatch", "missing-key", "remap", "gumbel"],
)
def test_inconsistent_state_dicts_are_rejected(
    edit: Callable[[dict[str, Any]], Any], match: str
) -> None:
    state = _fixture_state("taming")
    edit(state)
    with pytest.raises(CheckpointImportError, match=match):
        convert("taming", state)


class NotAllowed:
    """A class a weights_only load must refuse to instantiate."""


def test_loading_allows_exactly_namespace_and_the_lightning_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Old CompVis checkpoints pickle Lightning's ModelCheckpoint class itself; a stand-in
    # module of that name keeps this test from importing Lightning.
    path = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint = type("ModelCheckpoint", (), {"__module__": path})
    for i, name in enumerate(["pytorch_lightning", "pytorch_lightning.callbacks", path]):
        module = types.ModuleType(name)
        if i == 2:
            module.ModelCheckpoint = ModelCheckpoint  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, module)
    state = _fixture_state("llamagen")
    path = tmp_path / "with_args.pt"
    torch.save(
        {"model": state, "args": argparse.Namespace(lr=1e-4), "callbacks": {ModelCheckpoint: {}}},
        path,
    )
    assert read_checkpoint(path, "llamagen").keys() == state.keys()

    torch.save({"model": state, "junk": NotAllowed()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointImportError, match="weights_only=True"):
        read_checkpoint(tmp_path / "unsafe.pt", "llamagen")


def test_cli_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["llamagen", str(tmp_path / "bad.pt"), str(tmp_path / "out")]) == 2
    assert "could not be read" in capsys.readouterr().err
    torch.save({"weights": {}}, tmp_path / "nokey.pt")
    assert main(["taming", str(tmp_path / "nokey.pt"), str(tmp_path / "out")]) == 2
    assert "no state dict under ['state_dict']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ddp_and_compile_prefixes_are_stripped(tmp_path: Path) -> None:
    state = _fixture_state("llamagen")
    wrapped = {f"module._orig_mod.{k}": v for k, v in state.items()}
    torch.save({"model": wrapped}, tmp_path / "ddp.pt")
    assert read_checkpoint(tmp_path / "ddp.pt", "llamagen").keys() == state.keys()
