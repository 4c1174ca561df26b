"""Orientations (physics): search grids, symmetry and Euler-angle conventions.

Euler angles are ZYZ in degrees, (phi, theta, psi), with RELION's and cisTEM's
meaning (Heymann, Chagoyen & Belnap 2005, J. Struct. Biol. 151:196): the rotation
matrix is ``R = Rz(phi) @ Ry(theta) @ Rz(psi)`` and the projection image at that
orientation is ``p(x, y) = integral V(R @ (x, y, z)) dz``, equivalently its 2D DFT
samples the volume DFT on the plane ``R @ (kx, ky, 0)``. The global search
(``twodtm.search``) walks ``orientation_grid``; the local search
(``twodtm.local``) refines around its points.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Literal

import torch
from torch_so3 import get_symmetry_ranges, get_uniform_euler_angles

from twodtm.errors import ConfigError

__all__ = [
    "BaseGrid",
    "angular_distance",
    "euler_to_matrix",
    "matrix_to_euler",
    "orientation_grid",
    "parse_symmetry",
    "random_rotations",
    "symmetry_operators",
]

BaseGrid = Literal["uniform", "healpix"]
_SYMMETRY = re.compile(r"^(C|D)([1-9][0-9]*)$|^(T|O|I)$")


def _rz(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rows = [
        torch.stack([c, -s, zero], -1),
        torch.stack([s, c, zero], -1),
        torch.stack([zero, zero, one], -1),
    ]
    return torch.stack(rows, -2)


def _ry(angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rows = [
        torch.stack([c, zero, s], -1),
        torch.stack([zero, one, zero], -1),
        torch.stack([-s, zero, c], -1),
    ]
    return torch.stack(rows, -2)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from ZYZ Euler angles.

    Parameters
    ----------
    angles : torch.Tensor
        ``(..., 3)`` (phi, theta, psi) in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` matrices ``Rz(phi) Ry(theta) Rz(psi)`` acting on xyz columns.

    Examples
    --------
    phi = 90 turns x onto y; theta = 90 turns the beam axis z onto x:

    >>> x, z = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    >>> (euler_to_matrix(torch.tensor([90.0, 0.0, 0.0])) @ x).round(decimals=6)
    tensor([0., 1., 0.])
    >>> (euler_to_matrix(torch.tensor([0.0, 90.0, 0.0])) @ z).round(decimals=6)
    tensor([1., 0., 0.])
    >>> euler_to_matrix(torch.zeros(5, 2, 3)).shape
    torch.Size([5, 2, 3, 3])
    """
    radians = torch.deg2rad(angles)
    phi, theta, psi = radians.unbind(-1)
    return _rz(phi) @ _ry(theta) @ _rz(psi)


def matrix_to_euler(matrices: torch.Tensor) -> torch.Tensor:
    """ZYZ Euler angles in degrees from rotation matrices (inverse of the above).

    Parameters
    ----------
    matrices : torch.Tensor
        ``(..., 3, 3)`` rotation matrices (not modified).

    Returns
    -------
    torch.Tensor
        ``(..., 3)`` (phi, theta, psi), phi and psi in [0, 360), theta in [0, 180].
        At the poles (theta = 0 or 180) only phi + psi or phi - psi is defined;
        there phi = 0 and psi carries the in-plane angle, as in the search grids.

    Examples
    --------
    A round trip, and a pole where phi and psi merge into psi = phi + psi:

    >>> angles = torch.tensor([[30.0, 40.0, 50.0], [200.0, 170.0, 10.0]])
    >>> matrix_to_euler(euler_to_matrix(angles.double())).round(decimals=6)
    tensor([[ 30.,  40.,  50.],
            [200., 170.,  10.]], dtype=torch.float64)
    >>> pole = euler_to_matrix(torch.tensor([30.0, 0.0, 50.0]).double())
    >>> matrix_to_euler(pole).round(decimals=6)
    tensor([ 0.,  0., 80.], dtype=torch.float64)
    """
    m = matrices
    # The third column is R @ z = (cos phi sin theta, sin phi sin theta, cos theta);
    # atan2 of its length stays accurate next to the poles, where arccos does not.
    sin_theta = torch.hypot(m[..., 0, 2], m[..., 1, 2])
    theta = torch.atan2(sin_theta, m[..., 2, 2])
    phi = torch.atan2(m[..., 1, 2], m[..., 0, 2])
    pole = sin_theta <= 16 * torch.finfo(m.dtype).eps
    phi = torch.where(pole, torch.zeros_like(phi), phi)
    # psi from what is left, Rz(psi) = Ry(-theta) Rz(-phi) R, so the three angles
    # reproduce R whatever phi is: no separate (and sign-prone) case per pole.
    residual = _ry(-theta) @ _rz(-phi) @ m
    psi = torch.atan2(residual[..., 1, 0], residual[..., 0, 0])
    wrapped = torch.remainder(torch.rad2deg(torch.stack([phi, psi], -1)), 360.0)
    # remainder(-1e-17, 360) rounds to 360.0, outside [0, 360)
    wrapped = torch.where(wrapped >= 360.0, wrapped - 360.0, wrapped)
    return torch.stack([wrapped[..., 0], torch.rad2deg(theta), wrapped[..., 1]], -1)


def parse_symmetry(symmetry: str) -> tuple[str, int]:
    """Split a point-group name such as ``C1``, ``D7``, ``T``, ``O``, ``I``.

    Returns
    -------
    tuple[str, int]
        The group letter and its order n (1 for T, O and I).

    Raises
    ------
    ConfigError
        For an unknown name, listing the accepted forms.

    Examples
    --------
    >>> parse_symmetry("d7"), parse_symmetry("I")
    (('D', 7), ('I', 1))
    """
    text = symmetry.strip().upper()
    match = _SYMMETRY.match(text)
    if match is None:
        raise ConfigError(
            f"unknown symmetry {symmetry!r}: use Cn or Dn (n >= 1), T, O or I."
        )
    if match.group(1):
        return match.group(1), int(match.group(2))
    return match.group(3), 1


def orientation_grid(
    in_plane_step: float,
    out_of_plane_step: float,
    symmetry: str = "C1",
    base_grid: BaseGrid = "uniform",
) -> torch.Tensor:
    """Euler angles covering the asymmetric unit of SO(3) (Hopf fibration).

    The grid is torch-so3's: viewing directions (phi, theta) on the sphere, each
    carrying a full circle of in-plane angles psi, as in the Hopf-fibration grids
    of Yershova et al. 2010 (Int. J. Robot. Res. 29:801). The ``"uniform"``
    sphere grid has rings of constant theta ``out_of_plane_step`` apart with a
    phi step of about ``out_of_plane_step / sin(theta)``; ``"healpix"`` uses the
    HEALPix pixel centres (Gorski et al. 2005, Astrophys. J. 622:759).

    Parameters
    ----------
    in_plane_step : float
        Step of psi in degrees.
    out_of_plane_step : float
        Angular spacing of viewing directions (theta) in degrees.
    symmetry : str
        Point group of the template; the viewing directions are limited to its
        asymmetric unit.
    base_grid : {"uniform", "healpix"}
        Sampling of the sphere of viewing directions.

    Returns
    -------
    torch.Tensor
        ``(N, 3)`` float64 (phi, theta, psi) in degrees.

    Examples
    --------
    30 degree rings (theta 0, 30, ..., 180) give 46 viewing directions, each with
    36 in-plane angles; C4 symmetry keeps a quarter of phi:

    >>> grid = orientation_grid(10.0, 30.0)
    >>> grid.shape, grid.dtype
    (torch.Size([1656, 3]), torch.float64)
    >>> grid[:, 1].unique().tolist()
    [0.0, 30.0, 60.0, 90.0, 120.0, 150.0, 180.0]
    >>> len(orientation_grid(10.0, 30.0, "C4")) // 36
    15
    """
    group, order = parse_symmetry(symmetry)
    ranges = get_symmetry_ranges(group, order)
    return get_uniform_euler_angles(
        psi_step=in_plane_step,
        theta_step=out_of_plane_step,
        phi_min=ranges.phi_min,
        phi_max=ranges.phi_max,
        theta_min=ranges.theta_min,
        theta_max=ranges.theta_max,
        base_grid_method=base_grid,
    ).to(torch.float64)


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, 3)`` rotations drawn uniformly (Haar measure) on SO(3).

    Uses normalised 4D Gaussian vectors as unit quaternions, which are uniform on
    the 3-sphere and hence give Haar-uniform rotations (not uniform Euler angles;
    Shoemake 1992, Uniform random rotations, Graphics Gems III).

    Parameters
    ----------
    n : int
        Number of rotations.
    generator : torch.Generator
        Source of the random numbers (seed it for a reproducible draw).

    Returns
    -------
    torch.Tensor
        ``(n, 3, 3)`` float64 rotation matrices.

    Examples
    --------
    >>> r = random_rotations(3, torch.Generator().manual_seed(0))
    >>> torch.linalg.det(r).round(decimals=6)
    tensor([1., 1., 1.], dtype=torch.float64)
    >>> torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=r.dtype))
    True
    """
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=1, keepdim=True)).unbind(-1)
    rows = [
        torch.stack(
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1
        ),
        torch.stack(
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1
        ),
        torch.stack(
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1
        ),
    ]
    return torch.stack(rows, -2)


def _axis_rotation(axis: tuple[float, float, float], degrees: float) -> torch.Tensor:
    a = torch.tensor(axis, dtype=torch.float64)
    a = a / a.norm()
    k = torch.tensor(
        [[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]],
        dtype=torch.float64,
    )
    t = math.radians(degrees)
    return (
        torch.eye(3, dtype=torch.float64) + math.sin(t) * k + (1 - math.cos(t)) * k @ k
    )


def _close_group(generators: list[torch.Tensor]) -> torch.Tensor:
    elements = [torch.eye(3, dtype=torch.float64)]
    frontier = list(elements)
    while frontier:
        found = []
        for g, m in itertools.product(generators, frontier):
            candidate = g @ m
            if all((candidate - e).abs().max() > 1e-6 for e in elements):
                elements.append(candidate)
                found.append(candidate)
        frontier = found
    return torch.stack(elements)


def symmetry_operators(symmetry: str) -> torch.Tensor:
    """``(G, 3, 3)`` rotation matrices of a point group (RELION's axis conventions).

    Cn and Dn have their n-fold axis along z (Dn's 2-fold axes along x); T, O and I
    use the standard 2-fold and 3-fold axes about the origin.

    Parameters
    ----------
    symmetry : str
        Point group name (see ``parse_symmetry``).

    Returns
    -------
    torch.Tensor
        ``(G, 3, 3)`` float64, the identity first.

    Examples
    --------
    >>> [len(symmetry_operators(s)) for s in ("C1", "C4", "D7", "T", "O", "I")]
    [1, 4, 14, 12, 24, 60]
    """
    group, order = parse_symmetry(symmetry)
    z_axis = _axis_rotation((0, 0, 1), 360.0 / order)
    generators = {
        "C": [z_axis],
        "D": [z_axis, _axis_rotation((1, 0, 0), 180.0)],
        "T": [_axis_rotation((0, 0, 1), 180.0), _axis_rotation((1, 1, 1), 120.0)],
        "O": [_axis_rotation((0, 0, 1), 90.0), _axis_rotation((1, 1, 1), 120.0)],
        "I": [
            _axis_rotation((0, 0, 1), 180.0),
            _axis_rotation((1, 1, 1), 120.0),
            _axis_rotation((0, 1, (1 + math.sqrt(5)) / 2), 72.0),
        ],
    }[group]
    return _close_group(generators)


def angular_distance(
    rotations_a: torch.Tensor, rotations_b: torch.Tensor, symmetry: str = "C1"
) -> torch.Tensor:
    """Geodesic distance on SO(3) in degrees, minimised over the symmetry group.

    Parameters
    ----------
    rotations_a, rotations_b : torch.Tensor
        ``(..., 3, 3)`` rotation matrices (broadcasting).
    symmetry : str
        Point group of the object; ``R`` and ``S @ R`` describe the same pose.

    Returns
    -------
    torch.Tensor
        ``(...)`` angles in degrees in [0, 180]: the angle of the relative
        rotation, ``arccos((trace(A^T B) - 1) / 2)`` (Huynh 2009, J. Math.
        Imaging Vis. 35:155).

    Examples
    --------
    A 30 degree turn about z is 30 degrees away; a 90 degree turn is no turn at
    all for a C4-symmetric object:

    >>> identity = torch.eye(3, dtype=torch.float64)
    >>> turn = euler_to_matrix(torch.tensor([[30.0, 0.0, 0.0], [90.0, 0.0, 0.0]]))
    >>> angular_distance(identity, turn.double()).round(decimals=6)
    tensor([30., 90.], dtype=torch.float64)
    >>> angular_distance(identity, turn.double(), "C4").round(decimals=6)
    tensor([30.,  0.], dtype=torch.float64)
    """
    ops = symmetry_operators(symmetry).to(rotations_a)
    # V(S r) = V(r), and a pose R projects V(R r): so S @ R is the same pose as R.
    a = ops @ rotations_a.unsqueeze(-3)  # (..., G, 3, 3)
    relative = a.transpose(-1, -2) @ rotations_b.unsqueeze(-3)
    trace = relative.diagonal(dim1=-2, dim2=-1).sum(-1)
    cos = torch.clamp((trace - 1.0) / 2.0, -1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).amin(-1)
