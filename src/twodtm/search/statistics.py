"""Per-pixel search statistics with an exact, associative merge.

Correlations are summed as integers: each value is rounded to a multiple of
``1 / QUANTUM_SCALE`` and accumulated in float64, where such sums are exact while
below 2**53. Addition is then associative and commutative, so any split of the work
(chunks, devices, processes, resumed runs) gives bit-identical sums. The maximum
keeps the lowest flat index among equal values, for the same reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTUM_SCALE = 4096.0


@dataclass
class SearchStatistics:
    """Running per-pixel maximum, its index, and sums of the correlations.

    Attributes
    ----------
    mip : torch.Tensor
        ``(H, W)`` float32 maximum correlation (``-inf`` before any update).
    best_index : torch.Tensor
        ``(H, W)`` int64 flat search-space index of the maximum (-1 before any).
    sum, sum_sq : torch.Tensor
        ``(H, W)`` float64 sums of the quantised correlations and their squares,
        in units of ``1 / QUANTUM_SCALE`` and ``1 / QUANTUM_SCALE**2``.
    count : int
        Number of correlations accumulated per pixel.
    """

    mip: torch.Tensor
    best_index: torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor
    count: int = 0

    @classmethod
    def empty(
        cls, shape: tuple[int, int], device: torch.device | str = "cpu"
    ) -> SearchStatistics:
        """Statistics of no correlations."""
        return cls(
            mip=torch.full(shape, -torch.inf, dtype=torch.float32, device=device),
            best_index=torch.full(shape, -1, dtype=torch.int64, device=device),
            sum=torch.zeros(shape, dtype=torch.float64, device=device),
            sum_sq=torch.zeros(shape, dtype=torch.float64, device=device),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Map shape ``(H, W)``."""
        return (int(self.mip.shape[0]), int(self.mip.shape[1]))

    def update(self, correlations: torch.Tensor, first_index: int) -> None:
        """Accumulate ``(n, H, W)`` correlations with flat indices ``first_index + k``."""
        quantised = torch.round(correlations * QUANTUM_SCALE)
        self.sum += quantised.sum(0, dtype=torch.float64)
        q64 = quantised.to(torch.float64)
        self.sum_sq += (q64 * q64).sum(0)
        values, offsets = correlations.max(dim=0)  # first maximum on ties
        _keep_max(self, values, offsets + first_index)
        self.count += int(correlations.shape[0])

    def merge(self, other: SearchStatistics) -> SearchStatistics:
        """Combine two disjoint parts of a search into a new object."""
        merged = SearchStatistics(
            mip=self.mip.clone(),
            best_index=self.best_index.clone(),
            sum=self.sum + other.sum.to(self.sum.device),
            sum_sq=self.sum_sq + other.sum_sq.to(self.sum.device),
            count=self.count + other.count,
        )
        _keep_max(merged, other.mip.to(self.mip.device), other.best_index.to(self.mip.device))
        return merged

    def to(self, device: torch.device | str) -> SearchStatistics:
        """A copy on ``device``."""
        return SearchStatistics(
            mip=self.mip.to(device),
            best_index=self.best_index.to(device),
            sum=self.sum.to(device),
            sum_sq=self.sum_sq.to(device),
            count=self.count,
        )

    def crop(self, shape: tuple[int, int]) -> SearchStatistics:
        """The top-left ``shape`` region (drops FFT padding)."""
        h, w = shape
        return SearchStatistics(
            mip=self.mip[:h, :w].contiguous(),
            best_index=self.best_index[:h, :w].contiguous(),
            sum=self.sum[:h, :w].contiguous(),
            sum_sq=self.sum_sq[:h, :w].contiguous(),
            count=self.count,
        )

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel mean and standard deviation (not the variance) of all correlations.

        Returns
        -------
        tuple of torch.Tensor
            float32 ``(H, W)`` mean and population standard deviation.
        """
        n = max(self.count, 1)
        mean = self.sum / (n * QUANTUM_SCALE)
        variance = self.sum_sq / (n * QUANTUM_SCALE**2) - mean * mean
        return mean.to(torch.float32), variance.clamp_min(0).sqrt().to(torch.float32)

    def zscore(self) -> torch.Tensor:
        """Scaled MIP ``(mip - mean) / std`` (0 where std is 0)."""
        mean, std = self.mean_std()
        safe = torch.where(std > 0, std, torch.ones_like(std))
        return torch.where(std > 0, (self.mip - mean) / safe, torch.zeros_like(std))


def _keep_max(stats: SearchStatistics, values: torch.Tensor, indices: torch.Tensor) -> None:
    better = (values > stats.mip) | (
        (values == stats.mip) & (indices < stats.best_index)
    )
    stats.mip = torch.where(better, values, stats.mip)
    stats.best_index = torch.where(better, indices, stats.best_index)
