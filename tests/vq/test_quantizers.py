"""Behaviour of VectorQuantizer (plain / l2 / SimVQ, STE / rotation, gradient / EMA) and FSQ."""

from __future__ import annotations

import itertools
import math
import os
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from vq import FSQ, Quantizer, VectorQuantizer
from vq import functional as VF

D, K = 8, 32

VQ_OPTIONS: list[dict[str, Any]] = [
    dict(codebook=c, grad_estimator=g)
    for c, g in itertools.product(["plain", "linear"], ["ste", "rotation"])
] + [
    dict(codebook="plain", codebook_update="ema"),
    dict(
        codebook="plain", codebook_update="ema", grad_estimator="rotation", dead_code_threshold=0.5
    ),
    dict(codebook="plain", dead_code_threshold=0.5),
    dict(codebook="plain", codebook_init="data"),
    dict(codebook="plain", codebook_init="kaiming"),
    dict(codebook_norm="l2"),
    dict(codebook_norm="l2", grad_estimator="rotation"),
    # the rotation-trick paper's VQ-VAE: cosine EMA codebook, decay 0.8, β = 1, kaiming init
    dict(
        codebook_norm="l2",
        grad_estimator="rotation",
        codebook_update="ema",
        ema_decay=0.8,
        beta=1.0,
        codebook_init="kaiming",
    ),
    dict(codebook_norm="l2", codebook_init="data", dead_code_threshold=0.5),
]


def _ids(options: dict[str, Any]) -> str:
    return "-".join(f"{k}={v}" for k, v in options.items())


def _make(kind: str) -> Quantizer:
    if kind == "fsq":
        return FSQ([8, 5, 5, 5])
    if kind == "fsq-proj":
        return FSQ([8, 5, 3], dim=D)
    return VectorQuantizer(D, K)


SPATIAL = [(), (7,), (3, 5)]


# --- interface -----------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", SPATIAL, ids=["0d", "1d", "2d"])
@pytest.mark.parametrize("options", VQ_OPTIONS, ids=_ids)
def test_vq_forward_shapes_and_decode(options: dict[str, Any], spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    quantizer = VectorQuantizer(D, K, **options)
    z = torch.randn(2, D, *spatial, requires_grad=True)
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert out.indices.shape == (2, *spatial)
    assert out.indices.dtype == torch.int64
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < K
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    (out.quantized.sum() + out.loss).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # decode reproduces forward's values (eval mode: an EMA step would move the codebook).
    quantizer.eval()
    out = quantizer(z)
    torch.testing.assert_close(
        quantizer.decode(out.indices), out.quantized.detach(), rtol=0, atol=1e-6
    )
    # Each quantized vector is its nearest code.
    rows = z.detach().movedim(1, -1).reshape(-1, D)
    dist = torch.cdist(rows, quantizer.get_codebook())
    assert torch.equal(out.indices.reshape(-1), dist.argmin(dim=1))


@pytest.mark.parametrize("spatial", SPATIAL, ids=["0d", "1d", "2d"])
@pytest.mark.parametrize("kind", ["fsq", "fsq-proj"])
def test_fsq_forward_shapes_and_decode(kind: str, spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    quantizer = _make(kind)
    z = torch.randn(2, quantizer.dim, *spatial) * 2
    out = quantizer(z)
    assert out.quantized.shape == z.shape
    assert out.indices.shape == (2, *spatial) and out.indices.dtype == torch.int64
    assert float(out.loss) == 0.0
    decoded = quantizer.decode(out.indices)
    if kind == "fsq":
        assert torch.equal(decoded, out.quantized)  # exact without projections
    else:
        torch.testing.assert_close(decoded, out.quantized.detach(), rtol=0, atol=1e-6)


def test_public_api_is_importable_from_vq() -> None:
    import vq

    for name in [
        "VectorQuantizer",
        "FSQ",
        "CodebookUsage",
        "QuantizerOutput",
        "Quantizer",
        "nearest_code",
    ]:
        assert hasattr(vq, name), name
    assert isinstance(VectorQuantizer(D, K), Quantizer) and isinstance(FSQ([5, 5]), Quantizer)


# --- input validation ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vq", "fsq"])
@pytest.mark.parametrize("case", ["rank1", "wrong-dim", "channel-last", "int-dtype"])
def test_forward_rejects_bad_input_naming_expected_shape(kind: str, case: str) -> None:
    quantizer = _make(kind)
    d = quantizer.dim
    bad = {
        "rank1": torch.randn(d),
        "wrong-dim": torch.randn(2, d + 1, 4),
        "channel-last": torch.randn(2, 3, 3, d),
        "int-dtype": torch.ones(2, d, 3, 3, dtype=torch.long),
    }[case]
    with pytest.raises(ValueError, match=rf"\(B, {d}, \*spatial\)"):
        quantizer(bad)


@pytest.mark.parametrize("kind", ["vq", "fsq"])
def test_forward_rejects_empty_input(kind: str) -> None:
    quantizer = _make(kind)
    with pytest.raises(ValueError, match="non-empty"):
        quantizer(torch.randn(0, quantizer.dim, 4))


@pytest.mark.parametrize("kind", ["vq", "fsq", "linear"])
@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.tensor([[0, -1]]), r"\[0, (32|1000)\).*\[-1, 0\]"),
        (torch.tensor([[0, 5000]]), r"\[0, (32|1000)\).*\[0, 5000\]"),
        (torch.tensor([[0.0, 1.0]]), "dtype torch.float32"),
        (torch.tensor([[True]]), "dtype torch.bool"),
        (torch.tensor(3), "scalar"),
    ],
    ids=["negative", "too-large", "float", "bool", "scalar"],
)
def test_decode_rejects_bad_ids(kind: str, bad: torch.Tensor, match: str) -> None:
    quantizer = VectorQuantizer(D, K, codebook="linear") if kind == "linear" else _make(kind)
    with pytest.raises(ValueError, match=match):
        quantizer.decode(bad)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(codebook="simvq"), r"codebook='simvq'.*\['plain', 'linear'\]"),
        (dict(grad_estimator="rotate"), r"grad_estimator='rotate'.*'ste', 'rotation'"),
        (dict(codebook_update="kmeans"), r"codebook_update='kmeans'.*'gradient', 'ema'"),
        (dict(beta=-1.0), "beta"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(dead_code_threshold=-1.0), "dead_code_threshold"),
        (dict(codebook="linear", codebook_update="ema"), "codebook='plain'"),
        (dict(codebook="linear", dead_code_threshold=1.0), "codebook='plain'"),
        (
            dict(codebook_init="kmeans"),
            r"codebook_init='kmeans'.*\['uniform', 'data', 'kaiming'\]",
        ),
        (dict(codebook="linear", codebook_init="data"), "codebook='plain'"),
        (dict(codebook="linear", codebook_init="kaiming"), "codebook='plain'"),
        (dict(codebook="linear", codebook_norm="l2"), "codebook='plain'"),
        (dict(codebook_norm="cosine"), r"codebook_norm='cosine'.*\['none', 'l2'\]"),
        (dict(search_max_bytes=0), "search_max_bytes"),
    ],
)
def test_vq_rejects_bad_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(D, K, **kwargs)


@pytest.mark.parametrize("levels", [[], [1, 5], [5, 2.5], [True, 5]])
def test_fsq_rejects_bad_levels(levels: list[Any]) -> None:
    with pytest.raises(ValueError, match="levels must be a non-empty sequence of ints >= 2"):
        FSQ(levels)


# --- STE -----------------------------------------------------------------------------------


def test_ste_gradient_to_z_is_identity() -> None:
    quantizer = VectorQuantizer(D, K)
    z = torch.randn(3, D, 4, 4, requires_grad=True)
    out = quantizer(z)
    g = torch.randn_like(z)
    out.quantized.backward(g)
    assert torch.equal(z.grad, g)
    assert quantizer.book.codebook.grad is None  # nothing reaches the codebook through quantized


@pytest.mark.parametrize("beta", [0.0, 0.25, 2.0])
def test_codebook_gradient_only_from_codebook_term_and_beta_weights_commitment(beta: float) -> None:
    torch.manual_seed(1)
    quantizer = VectorQuantizer(D, K, beta=beta)
    z = torch.randn(4, D, 3, requires_grad=True)
    out = quantizer(z)
    (out.quantized.sum() * 0 + out.loss).backward()
    rows = z.detach().movedim(1, -1).reshape(-1, D)
    q = quantizer.book.codebook.detach()[out.indices.reshape(-1)]
    n = rows.numel()
    # Codebook: d/dc mean((c - e)²) summed over the rows assigned to c; independent of β.
    expected_codebook = torch.zeros(K, D).index_add_(0, out.indices.reshape(-1), 2 * (q - rows) / n)
    torch.testing.assert_close(quantizer.book.codebook.grad, expected_codebook)
    # Encoder: β · d/de mean((e - q)²).
    expected_z = (beta * 2 * (rows - q) / n).reshape(4, 3, D).movedim(-1, 1)
    torch.testing.assert_close(z.grad, expected_z)


# --- rotation trick through the module -----------------------------------------------------


@pytest.mark.parametrize("codebook", ["plain", "linear"])
def test_rotation_gradient_through_module(codebook: str) -> None:
    torch.manual_seed(2)
    quantizer = VectorQuantizer(D, K, codebook=codebook, grad_estimator="rotation")
    with torch.no_grad():  # codes of a sensible scale so the rotation is far from the identity
        if codebook == "plain":
            quantizer.book.codebook.normal_()
    z = torch.randn(2, D, 5, requires_grad=True)
    out = quantizer(z)
    g = torch.randn_like(z)
    out.quantized.backward(g)
    rows = z.detach().movedim(1, -1).reshape(-1, D).requires_grad_(True)
    q = quantizer.get_codebook()[out.indices.reshape(-1)]
    VF.rotate_to(rows, q).backward(g.movedim(1, -1).reshape(-1, D))
    torch.testing.assert_close(z.grad.movedim(1, -1).reshape(-1, D), rows.grad)
    # Gradient norm per position is λ |g|.
    lam = q.norm(dim=1) / rows.detach().norm(dim=1)
    torch.testing.assert_close(
        rows.grad.norm(dim=1), lam * g.movedim(1, -1).reshape(-1, D).norm(dim=1)
    )


# --- SimVQ ---------------------------------------------------------------------------------


def test_simvq_frozen_C_in_state_dict_and_only_W_learns() -> None:
    torch.manual_seed(3)
    quantizer = VectorQuantizer(D, K, codebook="linear")
    state = quantizer.state_dict()
    assert set(state) == {"frozen_codebook", "proj.weight"}
    assert [name for name, _ in quantizer.named_parameters()] == ["book.proj.weight"]
    c0, w0 = quantizer.book.frozen_codebook.clone(), quantizer.book.proj.weight.detach().clone()
    torch.testing.assert_close(c0.var().item(), 1 / D, rtol=0.3, atol=0)  # C ~ N(0, 1/D)
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    out = quantizer(torch.randn(4, D, 6))
    out.loss.backward()
    optimizer.step()
    assert torch.equal(quantizer.book.frozen_codebook, c0)
    assert not torch.equal(quantizer.book.proj.weight, w0)
    # decode applies W: the codes are W(C), not C.
    ids = torch.arange(K)[None]
    torch.testing.assert_close(quantizer.decode(ids)[0].T, quantizer.book.proj(c0).detach())
    # A fresh module loads the saved C and W and decodes identically.
    clone = VectorQuantizer(D, K, codebook="linear")
    clone.load_state_dict(quantizer.state_dict())
    assert torch.equal(clone.decode(ids), quantizer.decode(ids))


def _train_usage(quantizer: VectorQuantizer, steps: int = 50) -> float:
    optimizer = torch.optim.Adam(quantizer.parameters(), lr=1e-2)
    for _ in range(steps):
        out = quantizer(torch.randn(256, D))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    quantizer.eval()
    return quantizer(torch.randn(8192, D)).indices.unique().numel() / K


def test_simvq_keeps_usage_high_where_a_badly_initialized_plain_codebook_collapses() -> None:
    torch.manual_seed(0)
    plain = VectorQuantizer(D, K)
    with torch.no_grad():  # bad init: a tight cluster far from the data
        plain.book.codebook.copy_(torch.randn(K, D) * 0.01 + 3.0)
    torch.manual_seed(0)
    simvq = VectorQuantizer(D, K, codebook="linear")
    plain_usage, simvq_usage = _train_usage(plain), _train_usage(simvq)
    assert plain_usage <= 0.1
    assert simvq_usage >= 0.9


# --- data initialization of a plain codebook -----------------------------------------------


@pytest.mark.parametrize("update", ["gradient", "ema"])
def test_data_init_sets_codes_to_batch_vectors_once(update: str) -> None:
    torch.manual_seed(1)
    quantizer = VectorQuantizer(D, K, codebook_init="data", codebook_update=update)
    assert not bool(quantizer.book.data_initialized)
    quantizer.eval()
    uniform = quantizer.book.codebook.detach().clone()
    quantizer(torch.randn(2, D, 40))  # eval mode: no initialization
    assert torch.equal(quantizer.book.codebook.detach(), uniform)
    assert uniform.abs().max() <= 1.0 / K  # the uniform(-1/K, 1/K) table before
    quantizer.train()
    z = torch.randn(2, D, 40) * 3 + 5  # 80 vectors >= K: sampled without replacement
    out = quantizer(z)
    rows = z.movedim(1, -1).reshape(-1, D)
    assert bool(quantizer.book.data_initialized)
    # The forward quantized against the new codes: every output is one of the batch vectors,
    # and the vectors that became codes are their own nearest code.
    q_rows = out.quantized.movedim(1, -1).reshape(-1, D)
    is_row = (q_rows[:, None, :] == rows[None, :, :]).all(dim=-1)  # (N, N)
    assert is_row.any(dim=1).all()
    assert out.indices.unique().numel() == K, "each of the K codes is a different batch vector"
    codes = quantizer.book.codebook.detach().clone()
    if update == "gradient":  # (EMA moved the table towards the batch means afterwards)
        match = (codes[:, None, :] == rows[None, :, :]).all(dim=-1)  # (K, N)
        assert match.any(dim=1).all() and (match.sum(dim=0) <= 1).all()
        # Later batches do not re-initialize: without an optimizer step the table stays put.
        quantizer(torch.randn(2, D, 40) - 5)
        assert torch.equal(quantizer.book.codebook.detach(), codes)


def test_data_init_with_fewer_vectors_than_codes_gives_distinct_codes_near_the_data() -> None:
    torch.manual_seed(2)
    quantizer = VectorQuantizer(D, K, codebook_init="data")
    z = torch.randn(1, D, 5) + 10  # 5 vectors for 32 codes: drawn with replacement + jitter
    quantizer(z)
    rows = z.movedim(1, -1).reshape(-1, D)
    codes = quantizer.book.codebook.detach()
    assert torch.unique(codes, dim=0).shape[0] == K
    nearest = torch.cdist(codes, rows).min(dim=1).values
    assert float(nearest.max()) < 0.2 * float(rows.std()) * math.sqrt(D)


def test_data_init_flag_survives_state_dict_so_a_loaded_model_is_not_reinitialized() -> None:
    torch.manual_seed(3)
    trained = VectorQuantizer(D, K, codebook_init="data")
    trained(torch.randn(2, D, 40))
    state = trained.state_dict()
    assert "data_initialized" in state
    loaded = VectorQuantizer(D, K, codebook_init="data")
    loaded.load_state_dict(state)
    loaded(torch.randn(2, D, 40) + 7)  # training mode, but already initialized
    assert torch.equal(loaded.book.codebook.detach(), trained.book.codebook.detach())
    assert "data_initialized" not in VectorQuantizer(D, K).state_dict()  # default: unchanged


def test_data_init_uses_the_codebook_where_a_uniform_init_collapses() -> None:
    """The failure measured in docs/benchmarks/quality.md, in miniature: encoder outputs far
    from the origin relative to the 1/K-sized uniform codes. Assignments then go by direction
    and a handful of codes take everything; codes started at data points are all in play."""
    torch.manual_seed(4)
    data = torch.randn(512, D) + 10.0
    usage = {}
    for init in ("uniform", "data"):
        quantizer = VectorQuantizer(D, K, codebook_init=init)
        quantizer(data[:256].T.unsqueeze(0))  # the first training batch
        quantizer.eval()
        usage[init] = quantizer(data[256:].T.unsqueeze(0)).indices.unique().numel() / K
    assert usage["uniform"] <= 0.25
    assert usage["data"] >= 0.75


# --- EMA and dead-code restart -------------------------------------------------------------


def test_ema_counts_and_sums_follow_the_formula() -> None:
    torch.manual_seed(4)
    decay, eps = 0.9, 1e-5
    quantizer = VectorQuantizer(D, K, codebook_update="ema", ema_decay=decay, ema_eps=eps)
    assert "book.codebook" not in dict(quantizer.named_parameters())
    codebook0 = quantizer.book.codebook.clone()
    count0, sum0 = quantizer.book.ema_count.clone(), quantizer.book.ema_sum.clone()
    z = torch.randn(3, D, 4)
    out = quantizer(z)
    rows = z.movedim(1, -1).reshape(-1, D)
    ids = out.indices.reshape(-1)
    n = torch.zeros(K).index_add_(0, ids, torch.ones(ids.numel()))
    s = torch.zeros(K, D).index_add_(0, ids, rows)
    count1 = decay * count0 + (1 - decay) * n
    sum1 = decay * sum0 + (1 - decay) * s
    torch.testing.assert_close(quantizer.book.ema_count, count1)
    torch.testing.assert_close(quantizer.book.ema_sum, sum1)
    smoothed = (count1 + eps) / (count1.sum() + K * eps) * count1.sum()
    torch.testing.assert_close(quantizer.book.codebook, sum1 / smoothed[:, None])
    # The output used the codebook from before the update; loss is the commitment term only.
    torch.testing.assert_close(out.quantized.movedim(1, -1).reshape(-1, D), codebook0[ids])
    torch.testing.assert_close(out.loss, 0.25 * ((rows - codebook0[ids]) ** 2).mean())
    # No update in eval mode.
    quantizer.eval()
    before = quantizer.book.codebook.clone()
    quantizer(z)
    assert torch.equal(quantizer.book.codebook, before)


@pytest.mark.parametrize("update", ["gradient", "ema"])
def test_dead_code_gets_restarted_from_batch_vectors(update: str) -> None:
    torch.manual_seed(5)
    quantizer = VectorQuantizer(
        D, K, codebook_update=update, ema_decay=0.5, dead_code_threshold=0.9
    )
    with torch.no_grad():
        quantizer.book.codebook.normal_()
        quantizer.book.codebook[7] = 1000.0  # never the nearest code
        quantizer.book.ema_count.fill_(1000.0)  # everyone else alive
        quantizer.book.ema_count[7] = 1.0
    z = torch.randn(2, D, 8)
    out = quantizer(z)
    assert 7 not in out.indices
    rows = z.movedim(1, -1).reshape(-1, D)
    # count 7: 0.5 · 1 + 0.5 · 0 = 0.5 < 0.9 -> restarted from a batch vector, count reset.
    assert (quantizer.book.codebook[7] == rows).all(dim=1).any()
    assert float(quantizer.book.ema_count[7]) == pytest.approx(0.9)
    assert (quantizer.book.ema_count[torch.arange(K) != 7] >= 0.9).all()
    if update == "ema":
        torch.testing.assert_close(quantizer.book.ema_sum[7], quantizer.book.codebook[7] * 0.9)


def test_no_restart_when_threshold_is_zero() -> None:
    quantizer = VectorQuantizer(D, K)
    assert "book.ema_count" not in dict(quantizer.named_buffers())
    before = quantizer.book.codebook.detach().clone()
    quantizer(torch.randn(2, D, 3))
    assert torch.equal(quantizer.book.codebook.detach(), before)


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial codebook on every rank
    quantizer = VectorQuantizer(
        D, K, codebook_update="ema", dead_code_threshold=0.9, ema_decay=0.5, codebook_init="data"
    )
    torch.manual_seed(100 + rank)  # different data (and restart sampling) per rank
    for _ in range(3):
        quantizer(torch.randn(2, D, 8) + rank)
    torch.save(
        {k: v.clone() for k, v in quantizer.state_dict().items()},
        os.path.join(result_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


def test_ddp_ranks_keep_identical_codebooks(tmp_path: Any) -> None:
    world = 2
    mp.spawn(
        _ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True
    )
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


# --- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vq", "linear-rotation", "fsq"])
def test_bf16_encoder_output(kind: str) -> None:
    if kind == "fsq":
        quantizer: Quantizer = FSQ([8, 5, 5, 5], dim=D)
    elif kind == "linear-rotation":
        quantizer = VectorQuantizer(D, K, codebook="linear", grad_estimator="rotation")
    else:
        quantizer = VectorQuantizer(D, K)
    z32 = torch.randn(2, D, 4, 4)
    z = z32.to(torch.bfloat16).requires_grad_(True)
    out = quantizer(z)
    assert out.quantized.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32
    (out.quantized.float().sum() + out.loss).backward()
    assert (
        z.grad is not None
        and z.grad.dtype == torch.bfloat16
        and torch.isfinite(z.grad.float()).all()
    )
    # Same ids as the float32 computation on the same (bf16-rounded) values.
    assert torch.equal(out.indices, quantizer(z.detach().float()).indices)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer(z.detach().float()).indices, out.indices)


# --- FSQ -----------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [[8, 6, 5], [8, 5, 5, 5], [7, 5, 5, 5, 5], [2, 3], [4]])
def test_fsq_ids_codes_bijection_over_whole_codebook(levels: list[int]) -> None:
    quantizer = FSQ(levels)
    assert quantizer.codebook_size == math.prod(levels)
    ids = torch.arange(quantizer.codebook_size)
    codes = quantizer.decode(ids[:, None])  # (K, d, 1)
    assert codes.abs().max() <= 1
    assert torch.unique(codes.squeeze(-1), dim=0).shape[0] == quantizer.codebook_size
    # Inputs that the bound maps exactly onto each code quantize back to its id and value.
    lv = torch.tensor(levels, dtype=torch.float64)[:, None]  # (d, 1) against codes (K, d, 1)
    half_l = (lv - 1) * (1 + VF.FSQ_BOUND_EPS) / 2
    offset = (1 - lv % 2) * 0.5
    rounded = codes.double() * (lv // 2)
    z = (torch.atanh((rounded + offset) / half_l) - torch.atanh(offset / half_l)).float()
    out = quantizer(z)
    assert torch.equal(out.indices[:, 0], ids)
    assert torch.equal(out.quantized, codes)


def test_fsq_projection_is_a_1x1_linear() -> None:
    quantizer = FSQ([8, 5, 3], dim=16)
    assert quantizer.dim == 16 and quantizer.codebook_size == 120
    assert quantizer.project_in is not None and quantizer.project_in.in_features == 16
    assert quantizer.state_dict().keys() == {
        "project_in.weight",
        "project_in.bias",
        "project_out.weight",
        "project_out.bias",
    }
    assert quantizer.implicit_codebook().shape == (120, 16)
    assert FSQ([8, 5, 3], dim=3).project_in is None


@pytest.mark.parametrize(
    ("kwargs", "keys"),
    [
        ({}, {"codebook"}),
        ({"codebook_update": "ema"}, {"codebook", "ema_count", "ema_sum"}),
        (
            {"dead_code_threshold": 0.1, "codebook_init": "data"},
            {"codebook", "ema_count", "data_initialized"},
        ),
        ({"codebook": "linear"}, {"frozen_codebook", "proj.weight"}),
        ({"codebook_norm": "l2"}, {"codebook"}),
        ({"codebook_norm": "l2", "codebook_update": "ema"}, {"codebook", "ema_count", "ema_sum"}),
    ],
)
def test_codebook_component_keeps_flat_state_dict_keys(
    kwargs: dict[str, Any], keys: set[str]
) -> None:
    """The codebook is a component (``book``) but its tensors keep the keys artifacts were
    saved with; a state dict round-trips into a fresh quantizer, strictly, inside a parent."""
    from vq.quantizers import L2Codebook, LinearCodebook, PlainCodebook

    torch.manual_seed(0)
    quantizer = VectorQuantizer(D, K, **kwargs)
    expected = {"linear": LinearCodebook, "l2": L2Codebook}.get(
        kwargs.get("codebook", kwargs.get("codebook_norm")), PlainCodebook
    )
    assert type(quantizer.book) is expected
    assert set(quantizer.state_dict()) == keys
    parent = torch.nn.Sequential(quantizer)
    assert set(parent.state_dict()) == {f"0.{k}" for k in keys}
    torch.manual_seed(1)
    fresh = torch.nn.Sequential(VectorQuantizer(D, K, **kwargs))
    fresh.load_state_dict(parent.state_dict(), strict=True)
    torch.testing.assert_close(fresh[0].get_codebook(), quantizer.get_codebook())
