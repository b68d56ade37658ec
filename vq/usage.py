"""Codebook utilization statistics (docs/design.md, "Codebook usage: definitions").

Papers disagree on "usage"; each figure here has its own name:

- ``batch_usage``: fraction of codes hit by the last ``update`` (rotation-trick paper).
- ``window_usage``: fraction of codes hit at least once in the last ``window`` tokens
  (65,536 by default, as LlamaGen does).
- ``epoch_usage``: fraction hit at least once since ``reset_epoch()`` (FSQ, SimVQ papers).
- ``perplexity``: ``exp(H(p))`` of the window histogram; K when usage is uniform.
- ``dead_codes``: number of codes with zero hits in a full window (0 while it fills).
- ``unseen_codes``: number of codes with zero hits while the window is still filling (0
  once it is full): not yet seen is not dead, since a young window has seen few tokens.

The window is exact to the token: a ring buffer holds the last ``window`` token ids, and the
window histogram is kept incrementally (add the new tokens' bincount, subtract the evicted
ones'), so an update costs O(tokens + K) and no figure rescans the window.
"""

from __future__ import annotations

import math

import torch
from torch import distributed as dist


class CodebookUsage:
    """Running code-usage statistics over a token stream of ids in ``[0, codebook_size)``.

    ``update(indices)`` takes an integer tensor of any shape (e.g. (B, h, w) codes).
    State lives on ``device`` (keep it on the GPU in training to avoid copies).

    Combining trackers: ``a + b`` (or ``a.merge(b)``, ``sum([a, b, ...])``) is a tracker whose
    histograms (batch, window, epoch) and ``tokens_seen`` are the sums of the parts and whose
    window holds both windows' tokens (capacity ``a.window + b.window``), so as long as neither
    part has evicted tokens it equals one tracker fed both streams. Under DDP,
    ``all_reduce()`` does this across ranks: each figure then describes the global stream
    (the window is the last ``window`` tokens of every rank).

    Not thread-safe: ``update`` mutates several fields. A caller sharing one tracker between
    threads (the service) must hold a lock around ``update`` and reads. Reads return copies.
    """

    def __init__(
        self, codebook_size: int, window: int = 65536, *, device: torch.device | str = "cpu"
    ) -> None:
        if (
            isinstance(codebook_size, bool)
            or not isinstance(codebook_size, int)
            or codebook_size < 1
        ):
            raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive int (tokens), got {window!r}")
        self.codebook_size = codebook_size
        self.window = window
        self.device = torch.device(device)
        self.reset()

    # --- updating ------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything (window, epoch, last batch, token count)."""
        k, dev = self.codebook_size, self.device
        self._ring = torch.zeros(self.window, dtype=torch.long, device=dev)  # token ids, circular
        self._ring_pos = 0  # next write position
        self._ring_filled = 0  # valid entries, <= window
        self._window_hist = torch.zeros(k, dtype=torch.long, device=dev)
        self._batch_hist = torch.zeros(k, dtype=torch.long, device=dev)
        self._epoch_hist = torch.zeros(k, dtype=torch.long, device=dev)
        self._tokens_seen = 0

    def reset_epoch(self) -> None:
        """Start a new epoch (e.g. a validation pass); the window and totals are kept."""
        self._epoch_hist.zero_()

    def update(self, indices: torch.Tensor) -> None:
        """Count one batch of code ids (integer tensor of any shape, values in [0, K))."""
        k = self.codebook_size
        if not isinstance(indices, torch.Tensor) or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor with values in [0, {k})")
        if indices.is_floating_point() or indices.is_complex():
            raise ValueError(
                f"indices must be an integer tensor with values in [0, {k}), got dtype {indices.dtype}"
            )
        ids = indices.detach().reshape(-1).to(self.device, torch.long)  # (n,)
        n = ids.numel()
        if n > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= k:
                raise ValueError(f"indices must lie in [0, {k}); got values in [{lo}, {hi}]")
        counts = torch.bincount(ids, minlength=k)  # (K,)
        self._batch_hist = counts
        self._epoch_hist += counts
        self._tokens_seen += n
        self._push(ids, counts)

    def _push(self, ids: torch.Tensor, counts: torch.Tensor) -> None:
        """Append ids (n,) to the ring, evicting the oldest, and keep the window histogram."""
        w, n = self.window, ids.numel()
        if n >= w:
            # The batch alone fills the window: keep its last w tokens.
            keep = ids[-w:]
            self._ring.copy_(keep)
            self._ring_pos, self._ring_filled = 0, w
            self._window_hist = torch.bincount(keep, minlength=self.codebook_size)
            return
        overflow = self._ring_filled + n - w
        if overflow > 0:
            oldest = (self._ring_pos - self._ring_filled) % w
            evict = (oldest + torch.arange(overflow, device=self.device)) % w
            self._window_hist -= torch.bincount(self._ring[evict], minlength=self.codebook_size)
        write = (self._ring_pos + torch.arange(n, device=self.device)) % w
        self._ring[write] = ids
        self._window_hist += counts
        self._ring_pos = (self._ring_pos + n) % w
        self._ring_filled = min(w, self._ring_filled + n)

    def _window_tokens(self) -> torch.Tensor:
        """The ids in the window, oldest first: (window_tokens,)."""
        oldest = (self._ring_pos - self._ring_filled) % self.window
        return self._ring[
            (oldest + torch.arange(self._ring_filled, device=self.device)) % self.window
        ]

    # --- figures -------------------------------------------------------------------------

    @property
    def tokens_seen(self) -> int:
        """Total tokens counted since construction (or ``reset()``)."""
        return self._tokens_seen

    @property
    def window_tokens(self) -> int:
        """Tokens currently in the window (``min(tokens_seen, window)`` for one tracker)."""
        return self._ring_filled

    @property
    def histogram(self) -> torch.Tensor:
        """Hit counts per code over the window: int64 (K,)."""
        return self._window_hist.clone()

    @property
    def batch_histogram(self) -> torch.Tensor:
        """Hit counts per code in the last update: int64 (K,)."""
        return self._batch_hist.clone()

    @property
    def epoch_histogram(self) -> torch.Tensor:
        """Hit counts per code since ``reset_epoch()``: int64 (K,)."""
        return self._epoch_hist.clone()

    @property
    def batch_usage(self) -> float:
        """Fraction of codes hit by the last update."""
        return self._used_fraction(self._batch_hist)

    @property
    def window_usage(self) -> float:
        """Fraction of codes hit at least once in the window."""
        return self._used_fraction(self._window_hist)

    @property
    def epoch_usage(self) -> float:
        """Fraction of codes hit at least once since ``reset_epoch()``."""
        return self._used_fraction(self._epoch_hist)

    @property
    def perplexity(self) -> float:
        """``exp(H(p))`` of the window histogram (0.0 before any token)."""
        return histogram_perplexity(self._window_hist)

    @property
    def epoch_perplexity(self) -> float:
        """``exp(H(p))`` of the epoch histogram (0.0 before any token)."""
        return histogram_perplexity(self._epoch_hist)

    @property
    def window_full(self) -> bool:
        """Whether the window holds ``window`` tokens."""
        return self._ring_filled >= self.window

    @property
    def dead_codes(self) -> int:
        """Number of codes with zero hits in the window, once it is full (0 before)."""
        return int((self._window_hist == 0).sum()) if self.window_full else 0

    @property
    def unseen_codes(self) -> int:
        """Number of codes with zero hits while the window is filling (0 once it is full)."""
        return 0 if self.window_full else int((self._window_hist == 0).sum())

    def _used_fraction(self, hist: torch.Tensor) -> float:
        return int((hist > 0).sum()) / self.codebook_size

    # --- combining -----------------------------------------------------------------------

    def merge(self, other: CodebookUsage) -> CodebookUsage:
        """A new tracker over both streams (see the class docstring); neither input changes."""
        if not isinstance(other, CodebookUsage):
            raise ValueError(f"can only merge with a CodebookUsage, got {type(other).__name__}")
        if other.codebook_size != self.codebook_size:
            raise ValueError(
                f"cannot merge trackers of codebook_size {self.codebook_size} and {other.codebook_size}"
            )
        merged = CodebookUsage(self.codebook_size, self.window + other.window, device=self.device)
        tokens = torch.cat([self._window_tokens(), other._window_tokens().to(self.device)])
        merged._ring[: tokens.numel()] = tokens
        merged._ring_filled = tokens.numel()
        merged._ring_pos = tokens.numel() % merged.window
        merged._window_hist = self._window_hist + other._window_hist.to(self.device)
        merged._batch_hist = self._batch_hist + other._batch_hist.to(self.device)
        merged._epoch_hist = self._epoch_hist + other._epoch_hist.to(self.device)
        merged._tokens_seen = self._tokens_seen + other._tokens_seen
        return merged

    def __add__(self, other: CodebookUsage) -> CodebookUsage:
        return self.merge(other)

    def __radd__(self, other: object) -> CodebookUsage:
        if isinstance(other, int) and other == 0:  # lets sum([a, b, ...]) start from 0
            return self.copy()
        return NotImplemented

    def copy(self) -> CodebookUsage:
        """An independent tracker with the same state."""
        return CodebookUsage.from_state_tensor(self.state_tensor())

    def state_tensor(self) -> torch.Tensor:
        """Everything as one int64 vector (for collectives):
        ``[K, window, tokens_seen, window_tokens, batch_hist (K), epoch_hist (K), tokens (window)]``,
        the window's token ids oldest first, padded with -1."""
        tokens = torch.full((self.window,), -1, dtype=torch.long, device=self.device)
        tokens[: self._ring_filled] = self._window_tokens()
        header = torch.tensor(
            [self.codebook_size, self.window, self._tokens_seen, self._ring_filled],
            dtype=torch.long,
            device=self.device,
        )
        return torch.cat([header, self._batch_hist, self._epoch_hist, tokens])

    @classmethod
    def from_state_tensor(cls, state: torch.Tensor) -> CodebookUsage:
        """Inverse of ``state_tensor``."""
        k, window, seen, filled = (int(v) for v in state[:4])
        tracker = cls(k, window, device=state.device)
        tracker._batch_hist = state[4 : 4 + k].clone()
        tracker._epoch_hist = state[4 + k : 4 + 2 * k].clone()
        tokens = state[4 + 2 * k : 4 + 2 * k + filled]
        tracker._ring[:filled] = tokens
        tracker._ring_filled = filled
        tracker._ring_pos = filled % window
        tracker._window_hist = torch.bincount(tokens, minlength=k)
        tracker._tokens_seen = seen
        return tracker

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> CodebookUsage:
        """The sum of every rank's tracker (a new tracker; this one is unchanged).

        Without an initialized process group it returns a copy of this tracker. Every rank
        must call it (a collective), with trackers of the same codebook_size and window.
        """
        state = self.state_tensor()
        if not (dist.is_available() and dist.is_initialized()):
            return self.copy()
        parts = [torch.empty_like(state) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, state, group=group)
        trackers = [CodebookUsage.from_state_tensor(p) for p in parts]
        total = trackers[0]
        for tracker in trackers[1:]:
            total = total.merge(tracker)
        return total

    def __repr__(self) -> str:
        return (
            f"CodebookUsage(codebook_size={self.codebook_size}, window={self.window}, "
            f"tokens_seen={self.tokens_seen}, window_usage={self.window_usage:.3f}, "
            f"perplexity={self.perplexity:.1f})"
        )


def histogram_perplexity(hist: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = hist / hist.sum()`` and ``0 log 0 = 0``; 0.0 for an empty histogram."""
    total = float(hist.sum())
    if total <= 0:
        return 0.0
    p = hist[hist > 0].double() / total
    return math.exp(float(-(p * p.log()).sum()))
