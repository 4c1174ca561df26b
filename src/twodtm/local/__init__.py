"""The local search: particles in small boxes, around known poses.

``grid`` holds the small rotations around a start pose, ``boxes`` the particle
boxes, their filters and the window of shifts, ``batch`` the correlation of a
batch of particles on the global search's primitives, ``fit`` the passes over
all particles, ``refine`` the refinement of a particle table, ``constrained``
the search of a partner particle B at the pose each A predicts and ``sweep`` the
sweep of the template's pixel size. The programs ``refine``, ``constrained`` and
``optimize`` (``twodtm.programs``) are thin layers over them.
"""

from twodtm.local.batch import Template
from twodtm.local.boxes import (
    default_box_size,
    renormalised_zscore,
    subpixel_peaks,
    window_mask,
    window_radius,
)
from twodtm.local.fit import (
    LocalFit,
    LocalSettings,
    Micrograph,
    Pose,
    batches_by_box,
    fit_particles,
    make_template,
    prepare_micrograph,
)
from twodtm.local.grid import LocalGrid, local_orientations, small_rotations
from twodtm.local.refine import check_particle_table, refine_particles, start_pose

__all__ = [
    "LocalFit",
    "LocalGrid",
    "LocalSettings",
    "Micrograph",
    "Pose",
    "Template",
    "batches_by_box",
    "check_particle_table",
    "default_box_size",
    "fit_particles",
    "local_orientations",
    "make_template",
    "prepare_micrograph",
    "refine_particles",
    "renormalised_zscore",
    "small_rotations",
    "start_pose",
    "subpixel_peaks",
    "window_mask",
    "window_radius",
]
