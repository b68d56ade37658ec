"""The quantizers: ``VectorQuantizer`` (a plain, l2-normalised or SimVQ codebook; STE or the
rotation trick) and FSQ.

Both take encoder output ``z`` of shape (B, D, *spatial), channel first, with any number of
spatial dims (0 for vectors, 1 for sequences, 2 for images), flatten it to (N, D) rows,
quantize the rows, and return a ``QuantizerOutput`` (docs/design.md,
"Architecture"). The math lives in ``vq.functional``; the nearest-code search in ``vq.search``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

from vq import functional as VF
from vq.config import (
    CodebookInit,
    CodebookKind,
    CodebookNorm,
    CodebookUpdate,
    GradEstimator,
    VQConfig,
)
from vq.search import nearest_code
from vq.types import Quantizer, QuantizerOutput


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _flatten(
    z: torch.Tensor, dim: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Validate z (B, D, *spatial) and return rows (N, D) plus the inverse reshape."""
    expected = f"(B, {dim}, *spatial)"
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a tensor of shape {expected}, got {type(z).__name__}")
    if z.ndim < 2 or z.shape[1] != dim:
        raise ValueError(f"z must have shape {expected}, got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(
            f"z must be a floating-point tensor of shape {expected}, got dtype {z.dtype}"
        )
    if z.numel() == 0:
        raise ValueError(f"z must be non-empty with shape {expected}, got {tuple(z.shape)}")
    lead = (z.shape[0], *z.shape[2:])  # (B, *spatial)
    rows = z.movedim(1, -1).reshape(-1, dim)  # (B, *spatial, D) -> (N, D)

    def unflatten(x: torch.Tensor) -> torch.Tensor:
        return (
            x.reshape(*lead, x.shape[-1]).movedim(-1, 1).contiguous()
        )  # (N, D) -> (B, D, *spatial)

    return rows, unflatten


def _check_indices(indices: torch.Tensor, codebook_size: int) -> None:
    allowed = f"an integer tensor of shape (B, *spatial) with values in [0, {codebook_size})"
    if not isinstance(indices, torch.Tensor):
        raise ValueError(f"indices must be {allowed}, got {type(indices).__name__}")
    if indices.dtype == torch.bool or indices.is_floating_point() or indices.is_complex():
        raise ValueError(f"indices must be {allowed}, got dtype {indices.dtype}")
    if indices.ndim < 1:
        raise ValueError(f"indices must be {allowed}, got a scalar")
    if indices.numel() > 0:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= codebook_size:
            raise ValueError(f"indices must be {allowed}; got values in [{lo}, {hi}]")


def _codes_to_channel_first(codes: torch.Tensor) -> torch.Tensor:
    return codes.movedim(-1, 1).contiguous()  # (B, *spatial, D) -> (B, D, *spatial)


class Codebook(nn.Module):
    """What ``VectorQuantizer`` asks of its codebook component.

    ``transform_input`` maps encoder rows e (N, D) into the space of the codes before the
    search (the identity, but unit rows for ``L2Codebook``); ``table`` is the (K, D) code
    vectors the search measures distances to and the lookup returns, differentiable w.r.t.
    the learned tensors; ``loss`` is the quantizer loss on (e, q); ``before_search`` and
    ``after_assignment`` are training-mode hooks (data init, EMA, restarts).
    """

    def transform_input(self, e: torch.Tensor) -> torch.Tensor:
        return e

    def table(self) -> torch.Tensor:
        raise NotImplementedError

    def codes(self) -> torch.Tensor:
        """The (K, D) codes, without gradient."""
        with torch.no_grad():
            return self.table().detach()

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of int64 ids (*shape) -> (*shape, D), differentiable w.r.t. the codebook."""
        return F.embedding(indices, self.table())

    def loss(self, e: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
        return VF.vq_loss(e, q, beta)

    def before_search(self, e: torch.Tensor) -> None:
        pass

    def after_assignment(self, e: torch.Tensor, indices: torch.Tensor) -> None:
        pass


class PlainCodebook(Codebook):
    """A learned (K, D) table that owns its init, its update rule and its dead-code restart.

    init ``"uniform"``: uniform(-1/K, 1/K), as the original VQ-VAE and taming-transformers'
    VQGAN: all codes start near the origin and the first assignments go by direction.
    init ``"kaiming"``: ``nn.init.kaiming_uniform_`` of the (K, D) table (He et al. 2015,
    "Delving Deep into Rectifiers", §2.2; fan_in = D, so uniform(±sqrt(6/D)) and rows of
    squared norm 2 on average): codes at the scale of unit-variance encoder outputs rather
    than 1/K, where the rotation trick's λ = ||q||/||e|| would shrink the encoder's gradient.
    vector_quantize_pytorch, whose codebook the rotation-trick paper's VQ-VAE runs use,
    applies the same function to a (1, K, D) tensor (fan_in = K·D); under ``L2Codebook`` the
    scale divides out and both give the same distribution of directions.
    init ``"data"``: at the first training forward pass the codes are set to encoder vectors
    of that batch (without replacement when the batch has at least K vectors, otherwise with
    replacement plus a little noise so the copies differ), as SoundStream/Jukebox-style data
    initialization does without the k-means: the codes start where the encoder outputs are,
    instead of 1/K from the origin where only the few codes that win early ever get a
    gradient (the collapse measured in docs/benchmarks/quality.md). A persistent
    ``data_initialized`` flag keeps a loaded or resumed model from being re-initialized.

    update ``"gradient"``: a Parameter trained by the loss ``||sg(e) - q||² + β ||e - sg(q)||²``.
    update ``"ema"``: a buffer set from exponential moving averages of the assigned encoder
    vectors (VQ-VAE Appendix A.1, Laplace smoothing ``ema_eps``); the loss keeps only the
    commitment term ``β ||e - sg(q)||²``.

    ``dead_code_threshold`` > 0: an EMA of per-code hit counts (``ema_count``, decay
    ``ema_decay``, starts at 1) is kept in training mode, and after each step codes whose
    count is below the threshold are replaced by vectors sampled from the current batch (their
    count reset to the threshold, as vector_quantize_pytorch does, to give them a few steps).

    Under torch.distributed the per-batch counts and sums are all-reduced before the EMA step,
    and rank 0 samples the init and restart vectors and broadcasts them, so every rank keeps
    the same codebook.
    """

    codebook: torch.Tensor  # (K, D) Parameter, or a buffer when updated by EMA
    ema_count: torch.Tensor  # with EMA or dead-code restart: (K,) EMA of hit counts
    ema_sum: torch.Tensor  # with EMA: (K, D) EMA of assigned vector sums
    data_initialized: torch.Tensor  # with init "data": () bool

    def __init__(self, dim: int, config: VQConfig) -> None:
        super().__init__()
        # The options (and their defaults) are the validated VQConfig's: defined once there.
        codebook_size = config.codebook_size
        self.dim, self.size = dim, codebook_size
        self.update: CodebookUpdate = config.codebook_update
        self.init: CodebookInit = config.codebook_init
        self.ema_decay = float(config.ema_decay)
        self.ema_eps = float(config.ema_eps)
        self.dead_code_threshold = float(config.dead_code_threshold)
        table = torch.empty(codebook_size, dim)
        if self.init == "kaiming":
            nn.init.kaiming_uniform_(table)
        else:  # "uniform", and "data" until the first batch
            table.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if self.update == "ema":
            self.register_buffer("codebook", table)
            self.register_buffer("ema_sum", table.clone())
        else:
            self.codebook = nn.Parameter(table)
        if self._tracks_counts:
            self.register_buffer("ema_count", torch.ones(codebook_size))
        if self.init == "data":
            self.register_buffer("data_initialized", torch.zeros((), dtype=torch.bool))

    @property
    def _tracks_counts(self) -> bool:
        return self.update == "ema" or self.dead_code_threshold > 0

    def extra_repr(self) -> str:
        return (
            f"update={self.update!r}, init={self.init!r}, "
            f"dead_code_threshold={self.dead_code_threshold}, ema_decay={self.ema_decay}"
        )

    def table(self) -> torch.Tensor:
        return self.codebook

    def loss(self, e: torch.Tensor, q: torch.Tensor, beta: float) -> torch.Tensor:
        if self.update == "ema":  # the EMA moves the codes; only the encoder is pulled
            return beta * VF.commitment_loss(e, q)
        return VF.vq_loss(e, q, beta)

    def before_search(self, e: torch.Tensor) -> None:
        """Training mode, encoder rows e (N, D): data init on the first batch."""
        if self.init == "data" and not bool(self.data_initialized):
            self._init_from_data(e.detach())

    def after_assignment(self, e: torch.Tensor, indices: torch.Tensor) -> None:
        """Training mode: EMA statistics, EMA codes and dead-code restart for this batch."""
        if self._tracks_counts:
            self._update_statistics(e.detach(), indices)

    @torch.no_grad()
    def _init_from_data(self, e: torch.Tensor) -> None:
        """Set every code to an encoder vector of this batch e (N, D)."""
        k = self.size
        if not _distributed() or dist.get_rank() == 0:
            n = e.shape[0]
            if n >= k:
                fresh = e[torch.randperm(n, device=e.device)[:k]]
            else:  # copies of the same vector would tie forever: jitter them apart
                fresh = e[torch.randint(n, (k,), device=e.device)]
                fresh = fresh + 0.01 * e.std() * torch.randn_like(fresh)
            fresh = fresh.to(self.codebook.dtype)
        else:
            fresh = torch.empty(k, self.dim, dtype=self.codebook.dtype, device=e.device)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebook.data.copy_(fresh)
        if self.update == "ema":
            self.ema_sum.copy_(fresh * self.ema_count.unsqueeze(1))
        self.data_initialized.fill_(True)

    @torch.no_grad()
    def _update_statistics(self, e: torch.Tensor, indices: torch.Tensor) -> None:
        """EMA step on hit counts (and sums, for the EMA codebook), then dead-code restart."""
        counts, sums = VF.assignment_stats(e, indices, self.size)  # (K,), (K, D)
        if _distributed():
            dist.all_reduce(counts)
            if self.update == "ema":
                dist.all_reduce(sums)
        self.ema_count.copy_(VF.ema(self.ema_count, counts, self.ema_decay))
        if self.update == "ema":
            self.ema_sum.copy_(VF.ema(self.ema_sum, sums, self.ema_decay))
            self.codebook.copy_(VF.ema_codebook(self.ema_count, self.ema_sum, self.ema_eps))
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(e)

    @torch.no_grad()
    def _restart_dead_codes(self, e: torch.Tensor) -> None:
        """Replace codes whose EMA hit count is below the threshold by batch vectors e (N, D)."""
        dead = self.ema_count < self.dead_code_threshold  # (K,), identical on every rank
        num_dead = int(dead.sum())
        if num_dead == 0:
            return
        if not _distributed() or dist.get_rank() == 0:
            n = e.shape[0]
            # Without replacement when the batch is large enough, so restarted codes differ.
            pick = (
                torch.randperm(n, device=e.device)[:num_dead]
                if n >= num_dead
                else torch.randint(n, (num_dead,), device=e.device)
            )
            fresh = e[pick].to(self.codebook.dtype)  # (num_dead, D)
        else:
            fresh = torch.empty(num_dead, self.dim, dtype=self.codebook.dtype, device=e.device)
        if _distributed():
            dist.broadcast(fresh, src=0)
        self.codebook.data[dead] = fresh
        self.ema_count[dead] = self.dead_code_threshold
        if self.update == "ema":
            self.ema_sum[dead] = fresh * self.dead_code_threshold


class L2Codebook(PlainCodebook):
    """A plain table searched and looked up on the unit sphere: the l2-normalised codes of
    ViT-VQGAN (Yu et al. 2022, "Vector-quantized Image Modeling with Improved VQGAN", §3.2).

    Encoder rows and table rows are scaled to unit norm before the search, so the nearest code
    is the one of highest cosine similarity (||ê - ĉ||² = 2 - 2 cos). The quantized output,
    the lookup and ``decode`` give the normalised row, and the loss compares unit vectors
    (LlamaGen's ``codebook_l2_norm``); the stored rows need not be unit-norm (in released
    checkpoints they are not). Every plain option works on the unit vectors: data init and
    restarts copy normalised encoder rows and the EMA averages them, as the cosine codebook
    of the rotation-trick paper's VQ-VAE runs (Fifty et al. 2025; vector_quantize_pytorch's
    ``CosineSimCodebook``) does.
    """

    def transform_input(self, e: torch.Tensor) -> torch.Tensor:
        return VF.unit_rows(e)

    def table(self) -> torch.Tensor:
        return VF.unit_rows(self.codebook.float())


class LinearCodebook(Codebook):
    """SimVQ's codebook (Zhu et al. 2024, arXiv 2411.02038, §3): a frozen C ~ N(0, 1/D),
    registered as a buffer (so it is saved: it is random), and a learned
    W = ``nn.Linear(D, D, bias=False)``; code k is ``W(C[k])``. Every update of W moves all K
    codes. Nothing to initialize from data, no per-code statistics, nothing to restart."""

    frozen_codebook: torch.Tensor  # (K, D)

    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) / math.sqrt(dim))
        self.proj = nn.Linear(dim, dim, bias=False)

    def table(self) -> torch.Tensor:
        return self.proj(self.frozen_codebook)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.proj(self.frozen_codebook[indices])  # (*shape, D): only the rows needed


# The codebook's tensors sit at the quantizer's level of the state dict ("codebook",
# "ema_count", "frozen_codebook", "proj.weight", ...), as before the codebook was a component,
# so artifacts and checkpoints keep loading.
_BOOK = "book."


def _flatten_book_keys(
    module: nn.Module, state: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    for key in [k for k in state if k.startswith(prefix + _BOOK)]:
        state[prefix + key[len(prefix + _BOOK) :]] = state.pop(key)


def _nest_book_keys(module: nn.Module, state: dict[str, Any], prefix: str, *args: Any) -> None:
    book = module.get_submodule("book")
    own = set(book.state_dict().keys())
    for key in [k for k in state if k.startswith(prefix) and k[len(prefix) :] in own]:
        state[prefix + _BOOK + key[len(prefix) :]] = state.pop(key)


class VectorQuantizer(Quantizer):
    """Nearest-code vector quantizer: a codebook component and a gradient estimator.

    codebook:
      - ``"plain"``: a learned (K, D) table, ``PlainCodebook`` (van den Oord et al. 2017,
        "Neural Discrete Representation Learning", §3), with ``codebook_init``
        (``"uniform"``/``"data"``/``"kaiming"``), ``codebook_update`` (``"gradient"``/``"ema"``,
        with ``ema_decay``, ``ema_eps``) and ``dead_code_threshold`` (0 = no restart).
      - ``"plain"`` with ``codebook_norm="l2"``: ``L2Codebook``, the same table searched by
        cosine similarity (ViT-VQGAN §3.2), with the same options.
      - ``"linear"``: SimVQ, ``LinearCodebook``; the plain-only options must stay at their
        defaults.
    grad_estimator:
      - ``"ste"``: straight-through (identity gradient to the encoder).
      - ``"rotation"``: the rotation trick (Fifty et al., ICLR 2025, §4.2).

    Options: the fields of ``vq.config.VQConfig`` as keywords (``codebook``,
    ``grad_estimator``, ``beta``, ``codebook_update``, ``ema_decay``, ``ema_eps``,
    ``dead_code_threshold``, ``codebook_init``, ``codebook_norm``, ``search_max_bytes``): their
    defaults and allowed values are defined there, once, and ``self.config`` is the resolved
    config.

    ``self.book`` is the codebook; its tensors keep their flat state-dict keys.
    All quantization math runs in float32 (autocast is disabled inside), so bf16/fp16 encoder
    outputs work; ``quantized`` is returned in z's dtype, ``loss`` in float32.
    """

    book: Codebook

    def __init__(self, dim: int, codebook_size: int, **options: Any) -> None:
        # Validated once, in vq.config (which also rejects the plain-table options for a
        # linear codebook); options left out take the config's defaults, and an unknown
        # option is a ValueError naming the allowed ones.
        config = VQConfig.from_dict({**options, "codebook_size": codebook_size})
        super().__init__(dim, config.codebook_size)
        self.config = config
        self.codebook_kind: CodebookKind = config.codebook
        self.codebook_norm: CodebookNorm = config.codebook_norm
        self.grad_estimator: GradEstimator = config.grad_estimator
        self.beta = float(config.beta)
        self.search_max_bytes = int(config.search_max_bytes)
        if config.codebook == "linear":
            self.book = LinearCodebook(dim, config.codebook_size)
        elif config.codebook_norm == "l2":
            self.book = L2Codebook(dim, config)
        else:
            self.book = PlainCodebook(dim, config)
        self.register_state_dict_post_hook(_flatten_book_keys)
        self.register_load_state_dict_pre_hook(_nest_book_keys)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, codebook={self.codebook_kind!r}, "
            f"codebook_norm={self.codebook_norm!r}, "
            f"grad_estimator={self.grad_estimator!r}, beta={self.beta}"
        )

    def get_codebook(self) -> torch.Tensor:
        """The effective (K, D) codebook the search uses (no grad): the plain table, its unit
        rows for l2, or ``W(C)`` for SimVQ."""
        return self.book.codes()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, D, *spatial) -> QuantizerOutput(quantized (B, D, *spatial), indices (B, *spatial), loss)."""
        rows, unflatten = _flatten(z, self.dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            e = self.book.transform_input(rows.float())  # (N, D); unit rows for l2
            if self.training:
                self.book.before_search(e)
            indices = nearest_code(e, self.book.codes(), max_bytes=self.search_max_bytes)  # (N,)
            q = self.book.lookup(indices)  # (N, D)
            loss = self.book.loss(e, q, self.beta)
            estimator = VF.rotate_to if self.grad_estimator == "rotation" else VF.ste
            out = estimator(e, q)  # value q, gradient to e per the estimator
            if self.training:
                self.book.after_assignment(e, indices)
        quantized = unflatten(out).to(z.dtype)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), loss)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) integer ids -> (B, D, *spatial) float32 codes (SimVQ: W applied; l2:
        unit rows)."""
        _check_indices(indices, self.codebook_size)
        with torch.no_grad():
            return _codes_to_channel_first(self.book.lookup(indices.long()))


class FSQ(Quantizer):
    """Finite Scalar Quantization (Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made
    Simple", ICLR 2024, §3).

    Each of ``d = len(levels)`` channels is bounded with a shifted tanh and rounded
    (straight-through) to one of L_i values in [-1, 1]; the code id is the mixed-radix number
    of the per-channel levels (channel 0 least significant, as in vector_quantize_pytorch), so
    ``codebook_size = prod(levels)`` and ``decode`` is the exact inverse of the ids.
    If ``dim`` is given and differs from d, 1x1 projections (``nn.Linear`` over channels)
    map D -> d before and d -> D after quantization.

    Bound: we follow vector_quantize_pytorch (``(1 + eps)`` scale, ``atanh`` shift), not the
    paper's Appendix A.1 code (``(1 - eps)``, ``tan``); see ``vq.functional.fsq_bound``.
    The two differ only next to rounding edges. No codebook, no auxiliary loss (loss = 0).
    """

    _levels: torch.Tensor  # (d,) int64 buffer
    _basis: torch.Tensor  # (d,) int64 buffer: mixed-radix place values

    def __init__(self, levels: Sequence[int], dim: int | None = None) -> None:
        levels = list(levels) if not isinstance(levels, (str, bytes)) else []
        if not levels or any(
            isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in levels
        ):
            raise ValueError(f"levels must be a non-empty sequence of ints >= 2, got {levels!r}")
        d = len(levels)
        super().__init__(d if dim is None else dim, math.prod(levels))  # dim None: d channels
        self.levels: list[int] = levels
        # Config, not learned state: not saved in the state dict.
        self.register_buffer("_levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("_basis", VF.fsq_basis(levels), persistent=False)
        self.project_in: nn.Linear | None = None
        self.project_out: nn.Linear | None = None
        if self._dim != d:
            self.project_in = nn.Linear(self._dim, d)
            self.project_out = nn.Linear(d, self._dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, levels={self.levels}"

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """z (B, D, *spatial) -> QuantizerOutput(quantized (B, D, *spatial), indices (B, *spatial), 0)."""
        rows, unflatten = _flatten(z, self.dim)
        with torch.autocast(device_type=z.device.type, enabled=False):
            h = rows.float()  # (N, D)
            if self.project_in is not None:
                h = self.project_in(h)  # (N, d)
            codes, level_ids = VF.fsq_quantize(h, self._levels)  # (N, d), (N, d)
            indices = VF.fsq_levels_to_index(level_ids, self._basis)  # (N,)
            out = self.project_out(codes) if self.project_out is not None else codes  # (N, D)
        quantized = unflatten(out).to(z.dtype)
        loss = torch.zeros((), device=z.device)
        return QuantizerOutput(quantized, indices.reshape(z.shape[0], *z.shape[2:]), loss)

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) integer ids -> (B, D, *spatial) float32, the exact codes forward produced."""
        _check_indices(indices, self.codebook_size)
        with torch.no_grad():
            level_ids = VF.fsq_index_to_levels(
                indices, self._levels, self._basis
            )  # (B, *spatial, d)
            codes = VF.fsq_levels_to_codes(level_ids, self._levels)
            if self.project_out is not None:
                codes = self.project_out(codes)
            return _codes_to_channel_first(codes)

    def implicit_codebook(self) -> torch.Tensor:
        """All K codes, (K, D) float32, in id order (after the output projection, if any)."""
        ids = torch.arange(self.codebook_size, device=self._levels.device)
        return self.decode(ids[:, None]).squeeze(-1)  # (K, D, 1) -> (K, D)
