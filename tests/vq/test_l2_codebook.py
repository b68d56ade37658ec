"""The l2-normalised codebook (``codebook_norm="l2"``): artifacts written before it became a
codebook component load and compute as they did, and the module follows the paper's formula.

``tests/fixtures/l2_artifact/`` (config.json + model.safetensors) and
``l2_artifact_expected.safetensors`` were written by the code before the refactor (commit
637a17d, ``vq.normalized.L2NormVectorQuantizer``): ``torch.manual_seed(0)``, the config in the
artifact, the codebook at construction (``init_codebook``), five Adam steps (lr 0.05) on random
images so the stored rows are far from unit norm, ``vq.save_tokenizer``; then the tokenizer's
codes and images of ``images``, and the quantizer's training-mode output and gradients on
``z`` with the downstream loss ``sum(quantized * w) + loss``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch

import vq
from vq.pixels import uint8_to_float

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ARTIFACT = FIXTURES / "l2_artifact"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(FIXTURES / "l2_artifact_expected.safetensors")


@pytest.fixture
def tok() -> vq.Tokenizer:
    return vq.load_tokenizer(ARTIFACT, precision="fp32")


def test_an_old_l2_artifact_loads_with_the_same_tensor_names_and_values(tok: vq.Tokenizer) -> None:
    saved = safetensors.torch.load_file(ARTIFACT / "model.safetensors")
    state = tok.model.state_dict()
    assert sorted(state) == sorted(saved)
    assert "quantizer.codebook" in state
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert tok.config.resolved_quantizer.codebook_norm == "l2"


def test_an_old_l2_artifact_gives_the_same_codes_and_images(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    codes = tok.encode(expected["images"])
    assert torch.equal(codes, expected["codes"])
    assert torch.equal(tok.decode(codes), expected["decoded"])
    with torch.no_grad():
        torch.testing.assert_close(tok.model.decode(codes), expected["decoded_float"])
        recon = tok.model(uint8_to_float(expected["images"])).recon
    torch.testing.assert_close(recon, expected["recon"])


def test_the_l2_quantizer_trains_as_before(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    q = tok.model.quantizer.train()
    (table,) = q.parameters()  # the stored (K, D) rows, the only learned tensor
    z = expected["z"].clone().requires_grad_(True)
    out = q(z)
    ((out.quantized * expected["w"]).sum() + out.loss).backward()
    assert torch.equal(out.indices, expected["train_indices"])
    torch.testing.assert_close(out.quantized, expected["train_quantized"])
    torch.testing.assert_close(out.loss, expected["train_loss"])
    torch.testing.assert_close(z.grad, expected["grad_z"])
    torch.testing.assert_close(table.grad, expected["grad_codebook"])
    q.eval()
    with torch.no_grad():
        out = q(z)
    assert torch.equal(out.indices, expected["eval_indices"])
    torch.testing.assert_close(out.quantized, expected["eval_quantized"])
    torch.testing.assert_close(q.decode(out.indices), expected["decode"])
    torch.testing.assert_close(q.get_codebook(), expected["get_codebook"])


def test_a_seeded_l2_model_starts_from_the_same_codebook(
    tok: vq.Tokenizer, expected: dict[str, torch.Tensor]
) -> None:
    torch.manual_seed(0)
    model = vq.VQVAE(tok.config)
    assert torch.equal(model.state_dict()["quantizer.codebook"], expected["init_codebook"])
