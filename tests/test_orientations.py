import math

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation
from torch_fourier_slice import project_3d_to_2d

from twodtm.errors import ConfigError
from twodtm.local import LocalGrid
from twodtm.local._grid import local_orientations
from twodtm.orientations import (
    angular_distance,
    euler_to_matrix,
    matrix_to_euler,
    orientation_grid,
    parse_symmetry,
    random_rotations,
    symmetry_operators,
)


def test_euler_matches_scipy_intrinsic_zyz():
    angles = torch.tensor(
        [[30.0, 40.0, 50.0], [200.0, 170.0, 10.0], [0.0, 90.0, 270.0]]
    )
    expected = Rotation.from_euler("ZYZ", angles.numpy(), degrees=True).as_matrix()
    got = euler_to_matrix(angles.double()).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_matrix_to_euler_round_trip():
    g = torch.Generator().manual_seed(3)
    rotations = random_rotations(200, g)
    back = euler_to_matrix(matrix_to_euler(rotations))
    np.testing.assert_allclose(back.numpy(), rotations.numpy(), atol=1e-9)


def test_projection_convention_against_real_space_integral(blob):
    """p(x, y) = sum_z V(R (x, y, z)): the Fourier slice equals that integral."""
    angles = torch.tensor([[25.0, 60.0, 110.0]], dtype=torch.float64)
    rotation = euler_to_matrix(angles)[0].numpy()
    volume = blob.numpy().astype(np.float64)
    t = volume.shape[0]
    axis = np.arange(t) - t // 2
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    xyz = np.stack([x, y, z], -1) @ rotation.T  # R @ (x, y, z)
    coords = np.stack([xyz[..., 2], xyz[..., 1], xyz[..., 0]]) + t // 2
    sampled = map_coordinates(volume, coords.reshape(3, -1), order=1).reshape(x.shape)
    reference = sampled.sum(0)
    fourier = project_3d_to_2d(blob, euler_to_matrix(angles).float())[0].numpy()
    corr = np.corrcoef(reference.ravel(), fourier.ravel())[0, 1]
    assert corr > 0.99
    # the transposed rotation (the other convention) must not match as well
    xyz_t = np.stack([x, y, z], -1) @ rotation
    coords_t = np.stack([xyz_t[..., 2], xyz_t[..., 1], xyz_t[..., 0]]) + t // 2
    other = (
        map_coordinates(volume, coords_t.reshape(3, -1), order=1)
        .reshape(x.shape)
        .sum(0)
    )
    assert np.corrcoef(other.ravel(), fourier.ravel())[0, 1] < corr - 0.05


@pytest.mark.parametrize(
    ("name", "order"),
    [("C1", 1), ("C7", 7), ("D3", 6), ("T", 12), ("O", 24), ("I", 60)],
)
def test_symmetry_group_orders(name, order):
    ops = symmetry_operators(name)
    assert ops.shape == (order, 3, 3)
    identity = torch.eye(3, dtype=torch.float64)
    np.testing.assert_allclose(
        (ops @ ops.transpose(1, 2)).numpy(),
        identity.expand(order, 3, 3).numpy(),
        atol=1e-9,
    )


def test_unknown_symmetry_names_the_fix():
    with pytest.raises(ConfigError, match="Cn or Dn"):
        parse_symmetry("X5")


def test_angular_distance_known_values():
    a = euler_to_matrix(torch.tensor([[0.0, 0.0, 0.0]], dtype=torch.float64))
    b = euler_to_matrix(torch.tensor([[0.0, 0.0, 30.0]], dtype=torch.float64))
    assert math.isclose(float(angular_distance(a, b)[0]), 30.0, abs_tol=1e-6)
    c = euler_to_matrix(torch.tensor([[0.0, 0.0, 95.0]], dtype=torch.float64))
    # with C4 a 95 degree in-plane turn is 5 degrees from the reference pose
    assert math.isclose(float(angular_distance(a, c, "C4")[0]), 5.0, abs_tol=1e-6)


def test_symmetry_acts_on_the_left_as_projections_do(sharp_blob):
    """A symmetrised map projects identically at R and S @ R, not at R @ S."""
    ops = symmetry_operators("C2").float()
    # a half turn about z through voxel 16: index i -> 32 - i (mod 32) along y and x
    half_turn = torch.roll(torch.flip(sharp_blob, dims=(1, 2)), (1, 1), dims=(1, 2))
    volume = 0.5 * (sharp_blob + half_turn)
    rotation = euler_to_matrix(torch.tensor([[20.0, 50.0, 70.0]])).float()
    s = ops[1]
    views = project_3d_to_2d(
        volume, torch.stack([rotation[0], s @ rotation[0], rotation[0] @ s])
    )
    same = float((views[0] - views[1]).norm() / views[0].norm())
    other = float((views[0] - views[2]).norm() / views[0].norm())
    assert same < 0.02
    assert other > 0.1
    r_a, r_b = rotation.double(), (s @ rotation[0]).double()[None]
    assert float(angular_distance(r_a, r_b, "C2")[0]) < 0.05


def test_grid_density_matches_steps():
    grid = orientation_grid(10.0, 10.0, "C1")
    n_psi = 36
    # the number of viewing directions on the sphere is ~ 4 pi / (step in rad)^2
    n_dirs = grid.shape[0] / n_psi
    assert (
        0.6 * 4 * math.pi / math.radians(10) ** 2
        < n_dirs
        < 1.6 * 4 * math.pi / math.radians(10) ** 2
    )
    c4 = orientation_grid(10.0, 10.0, "C4")
    assert abs(c4.shape[0] / grid.shape[0] - 0.25) < 0.05


def test_random_rotations_uniform_on_so3():
    g = torch.Generator().manual_seed(0)
    rotations = random_rotations(20000, g)
    # Haar measure: cos(theta) uniform on [-1, 1]; angle density (1 - cos w) / pi
    cos_theta = rotations[:, 2, 2].numpy()
    hist, _ = np.histogram(cos_theta, bins=10, range=(-1, 1))
    assert np.all(np.abs(hist / 2000 - 1) < 0.1)
    trace = rotations.diagonal(dim1=1, dim2=2).sum(-1).numpy()
    omega = np.arccos(np.clip((trace - 1) / 2, -1, 1))
    assert abs(np.mean(omega) - (math.pi / 2 + 2 / math.pi)) < 0.02


def _assert_matrices_round_trip(angles: torch.Tensor) -> None:
    """euler_to_matrix(matrix_to_euler(R)) == R: compares poses, not angle values."""
    rotations = euler_to_matrix(angles)
    back = euler_to_matrix(matrix_to_euler(rotations))
    worst = (back - rotations).abs().amax(dim=(-1, -2))
    bad = int(worst.argmax())
    assert float(worst.max()) < 1e-5, f"pose {angles[bad].tolist()} comes back moved"


@pytest.mark.parametrize("base_grid", ["uniform", "healpix"])
@pytest.mark.parametrize("symmetry", ["C1", "C4", "D3", "T", "O", "I"])
def test_every_grid_pose_round_trips(symmetry, base_grid):
    grid = orientation_grid(10.0, 10.0, symmetry, base_grid)
    _assert_matrices_round_trip(grid)


def test_uniform_c1_grid_holds_both_poles():
    """The grid round-trip above covers theta = 0 and 180 (so it tests the poles)."""
    theta = orientation_grid(10.0, 10.0, "C1", "uniform")[:, 1]
    assert bool((theta == 0.0).any()) and bool((theta == 180.0).any())


@pytest.mark.parametrize("theta", [0.0, 1e-7, 1e-4, 180.0, 180.0 - 1e-7, 180.0 - 1e-4])
def test_poses_at_and_near_the_poles_round_trip(theta):
    phis = torch.arange(0.0, 360.0, 37.0, dtype=torch.float64)
    psis = torch.arange(5.0, 360.0, 53.0, dtype=torch.float64)
    phi, psi = torch.meshgrid(phis, psis, indexing="ij")
    angles = torch.stack([phi, torch.full_like(phi, theta), psi], -1).reshape(-1, 3)
    _assert_matrices_round_trip(angles)


def test_pole_180_pose_from_the_issue():
    """(10, 180, 30) came back as (160, 180, 0): a pose 180 degrees away."""
    rotation = euler_to_matrix(torch.tensor([10.0, 180.0, 30.0], dtype=torch.float64))
    back = euler_to_matrix(matrix_to_euler(rotation))
    assert float(angular_distance(rotation[None], back[None])[0]) < 1e-6


def test_matrix_to_euler_leaves_its_input_unchanged():
    rotations = euler_to_matrix(
        torch.tensor([[10.0, 180.0, 30.0], [0.0, 0.0, 40.0]], dtype=torch.float64)
    )
    before = rotations.clone()
    matrix_to_euler(rotations)
    assert torch.equal(rotations, before)


def test_local_grid_around_a_pole_pose_is_centred_on_it():
    """Row 0 of the local grid is the start pose itself, also at theta = 180."""
    start = torch.tensor([10.0, 180.0, 30.0], dtype=torch.float64)
    grid = LocalGrid(
        out_of_plane_range=2.0,
        out_of_plane_step=1.0,
        in_plane_range=2.0,
        in_plane_step=1.0,
    )
    local = local_orientations(start, grid)
    r_start = euler_to_matrix(start)[None]
    distances = angular_distance(r_start, euler_to_matrix(local))
    assert float(distances[0]) < 1e-6
    assert float(distances.max()) < 2.0 * math.sqrt(2.0) + 1e-6
