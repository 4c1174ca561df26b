"""The search space (global search): orientations x pixel sizes x defocus offsets.

One flat index per correlation and the chunks (ranges of orientations) that
executors hand to workers; the statistics' ``best_index`` decodes through it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Chunk", "SearchSpace"]


@dataclass(frozen=True)
class Chunk:
    """A half-open range ``[start, stop)`` of orientation indices."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        """Number of orientations in the chunk."""
        return self.stop - self.start


@dataclass(frozen=True)
class SearchSpace:
    """Everything the global search visits.

    The flat index of a correlation is
    ``i = (orientation * n_pixel_sizes + pixel) * n_defocus + defocus``, so the
    filters of one orientation are contiguous.

    Attributes
    ----------
    euler_angles : torch.Tensor
        ``(N, 3)`` float64 ZYZ (phi, theta, psi) in degrees.
    defocus_offsets : torch.Tensor
        ``(D,)`` float64 offsets from the micrograph defocus, Angstrom.
    pixel_sizes : torch.Tensor
        ``(P,)`` float64 micrograph pixel sizes searched, Angstrom.

    Examples
    --------
    >>> space = SearchSpace(
    ...     euler_angles=torch.zeros(5, 3, dtype=torch.float64),
    ...     defocus_offsets=torch.tensor([-200.0, 0.0, 200.0], dtype=torch.float64),
    ...     pixel_sizes=torch.tensor([1.0, 1.05], dtype=torch.float64),
    ... )
    >>> space.n_filters, space.size
    (6, 30)
    >>> space.summary()  # doctest: +NORMALIZE_WHITESPACE
    {'orientations': 5, 'defocus_values': 3, 'pixel_sizes': 2,
     'correlations_per_pixel': 30}
    """

    euler_angles: torch.Tensor
    defocus_offsets: torch.Tensor
    pixel_sizes: torch.Tensor

    @property
    def n_orientations(self) -> int:
        """Number of orientations N."""
        return int(self.euler_angles.shape[0])

    @property
    def n_defocus(self) -> int:
        """Number of defocus offsets D."""
        return int(self.defocus_offsets.shape[0])

    @property
    def n_pixel_sizes(self) -> int:
        """Number of pixel sizes P."""
        return int(self.pixel_sizes.shape[0])

    @property
    def n_filters(self) -> int:
        """Filters per orientation, ``P * D``."""
        return self.n_defocus * self.n_pixel_sizes

    @property
    def size(self) -> int:
        """Total number of correlations per pixel."""
        return self.n_orientations * self.n_filters

    def decode(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split flat indices into (orientation, pixel-size, defocus) indices.

        Parameters
        ----------
        index : torch.Tensor
            Flat indices (int64, any shape), as in ``SearchStatistics.best_index``.

        Returns
        -------
        tuple of torch.Tensor
            Orientation, pixel-size and defocus indices, each shaped as ``index``.

        Examples
        --------
        With 2 pixel sizes and 3 defocus values, index 17 is
        ``(2 * 2 + 1) * 3 + 2``: orientation 2, pixel size 1, defocus 2.

        >>> space = SearchSpace(
        ...     torch.zeros(5, 3), torch.zeros(3), torch.tensor([1.0, 1.05])
        ... )
        >>> [t.tolist() for t in space.decode(torch.tensor([0, 17, 29]))]
        [[0, 2, 4], [0, 1, 1], [0, 2, 2]]
        """
        orientation = torch.div(index, self.n_filters, rounding_mode="floor")
        rest = index - orientation * self.n_filters
        pixel = torch.div(rest, self.n_defocus, rounding_mode="floor")
        return orientation, pixel, rest - pixel * self.n_defocus

    def chunks(self, chunk_size: int) -> list[Chunk]:
        """Split the orientations into consecutive chunks of at most ``chunk_size``.

        Examples
        --------
        >>> space = SearchSpace(torch.zeros(5, 3), torch.zeros(1), torch.ones(1))
        >>> space.chunks(2)
        [Chunk(start=0, stop=2), Chunk(start=2, stop=4), Chunk(start=4, stop=5)]
        """
        step = max(int(chunk_size), 1)
        n = self.n_orientations
        return [Chunk(s, min(s + step, n)) for s in range(0, n, step)]

    def summary(self) -> dict[str, int]:
        """Sizes for result metadata."""
        return {
            "orientations": self.n_orientations,
            "defocus_values": self.n_defocus,
            "pixel_sizes": self.n_pixel_sizes,
            "correlations_per_pixel": self.size,
        }
