"""The local search: particles in small boxes, around known poses.

``_grid`` holds the small rotations around a start pose, ``_boxes`` the particle
boxes, their filters and the window of shifts, ``_batch`` the correlation of a
batch of particles on the global search's primitives, ``_fit`` the passes over
all particles (the names below are their public face), ``refine`` the
refinement of a particle table, ``constrained`` the search of a partner
particle B at the pose each A predicts and ``sweep`` the sweep of the template's
pixel size. The programs ``refine``, ``constrained`` and ``optimize``
(``twodtm.programs``) are thin layers over them.
"""

from twodtm.local._batch import Template
from twodtm.local._fit import (
    LocalFit,
    LocalSettings,
    Micrograph,
    Pose,
    fit_particles,
    make_template,
    prepare_micrograph,
)
from twodtm.local._grid import LocalGrid, small_rotations
from twodtm.local.refine import check_particle_table, refine_particles

__all__ = [
    "LocalFit",
    "LocalGrid",
    "LocalSettings",
    "Micrograph",
    "Pose",
    "Template",
    "check_particle_table",
    "fit_particles",
    "make_template",
    "prepare_micrograph",
    "refine_particles",
    "small_rotations",
]
