"""The local orientation grid: small rotations composed with a starting pose.

Out-of-plane tilts are rotations about the image x and y axes on a square grid
clipped to a disk; in-plane turns are about the beam axis. Composed with a start
``R`` as ``R @ small``, all three ZYZ Euler angles of the result vary (Leopard-EM's
local grid keeps phi fixed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from twodtm.orientations import euler_to_matrix, matrix_to_euler

__all__ = ["LocalGrid", "local_orientations", "small_rotations"]


@dataclass(frozen=True)
class LocalGrid:
    """Small rotations around a pose, in degrees.

    Out-of-plane tilts are rotations about the image x and y axes on a square grid
    clipped to a disk of radius ``out_of_plane_range``; in-plane rotations are
    about the beam axis. All three Euler angles of the composed poses vary.

    Attributes
    ----------
    out_of_plane_range, out_of_plane_step : float
        Largest tilt away from the start and its step, degrees.
    in_plane_range, in_plane_step : float
        Largest in-plane rotation and its step, degrees.
    """

    out_of_plane_range: float = 3.0
    out_of_plane_step: float = 1.0
    in_plane_range: float = 3.0
    in_plane_step: float = 1.0

    def halved(self) -> LocalGrid:
        """Return the grid with ranges and steps halved (a finer, narrower pass)."""
        return LocalGrid(
            self.out_of_plane_range / 2,
            self.out_of_plane_step / 2,
            self.in_plane_range / 2,
            self.in_plane_step / 2,
        )


def _symmetric_steps(limit: float, step: float) -> torch.Tensor:
    """``(2k + 1,)`` float64 multiples of ``step`` from ``-limit`` to ``limit``."""
    count = int(math.floor(limit / step + 1e-9)) if step > 0 else 0
    return step * torch.arange(-count, count + 1, dtype=torch.float64)


def _rodrigues(vectors: torch.Tensor) -> torch.Tensor:
    """``(M, 3, 3)`` rotations from ``(M, 3)`` axis-angle vectors in radians."""
    angle = vectors.norm(dim=-1, keepdim=True)
    axis = vectors / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack(
        [
            torch.stack([zero, -z, y], -1),
            torch.stack([z, zero, -x], -1),
            torch.stack([-y, x, zero], -1),
        ],
        -2,
    )
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=vectors.dtype).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


def small_rotations(grid: LocalGrid) -> torch.Tensor:
    """Rotations of the local grid, identity first.

    Returns
    -------
    torch.Tensor
        ``(M, 3, 3)`` float64, sorted by rotation angle; ``R_start @ small``
        tilts the view by rotations about the image x/y axes and turns it in
        plane about z.

    Examples
    --------
    A 2-degree disk of 1-degree tilts holds 13 tilts, times 5 in-plane turns:

    >>> rotations = small_rotations(LocalGrid(2.0, 1.0, 2.0, 1.0))
    >>> rotations.shape
    torch.Size([65, 3, 3])
    >>> bool(torch.equal(rotations[0], torch.eye(3, dtype=torch.float64)))
    True
    """
    tilt = _symmetric_steps(grid.out_of_plane_range, grid.out_of_plane_step)
    spin = _symmetric_steps(grid.in_plane_range, grid.in_plane_step)
    ax, ay, az = torch.meshgrid(tilt, tilt, spin, indexing="ij")
    vectors = torch.stack([ax.flatten(), ay.flatten(), az.flatten()], -1)
    keep = vectors[:, :2].norm(dim=-1) <= grid.out_of_plane_range + 1e-9
    vectors = vectors[keep]
    order = torch.argsort(vectors.norm(dim=-1), stable=True)
    return _rodrigues(torch.deg2rad(vectors[order]))


def local_orientations(start: torch.Tensor, grid: LocalGrid) -> torch.Tensor:
    """ZYZ Euler angles of the local grid around a pose.

    Parameters
    ----------
    start : torch.Tensor
        ``(3,)`` (phi, theta, psi) in degrees (not modified).
    grid : LocalGrid
        Ranges and steps.

    Returns
    -------
    torch.Tensor
        ``(M, 3)`` float64 degrees; row 0 is the start pose itself.
    """
    rotation = euler_to_matrix(start.to(torch.float64).reshape(1, 3))
    return matrix_to_euler(rotation @ small_rotations(grid))
