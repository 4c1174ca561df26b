"""The simulator's forward model: synthetic micrographs with known particles.

Image model
-----------
The template map is taken in ttsim3d's units, where the sum of voxel values along
a line through the map is the phase shift of the electron wave in radians (ttsim3d
scales the potential by ``lambda / pixel_size**2``). Each particle's projection
``phi(x, y)`` is rendered with the search engine's own code
(``twodtm.search.projection.project`` and ``padded_dft``) so the engine finds it at the
stated pose, shifted to its (sub-pixel) position in Fourier space, and filtered by
the CTF at its own defocus on the whole (margin-padded) image, so delocalised
signal is neither cut at a box edge nor wrapped around the image. In the weak-phase
approximation the expected count per pixel is::

    counts = dose * pixel_size**2 * (1 + 2 * (CTF * phi))

(``dose`` in e/A^2; the factor 2 is the weak-phase intensity term; the CTF is the
microscope's, ``-sin(chi)`` (``ctf.ctf_stack``), so particles at underfocus are
dark, as in a raw micrograph). Counts are Poisson distributed,
optionally plus Gaussian read noise. The matched-filter SNR of a particle is then
``2 * sqrt(dose * integral (CTF * phi)^2 dA)``: it grows as ``sqrt(dose)``.

The maps live in ``_volume`` (ttsim3d potentials, Fourier binning, blurring), the
image in ``_micrograph`` (poses, CTF-filtered phase, Poisson counts); the program
that reads a config and writes files is ``twodtm.programs.simulate``.
"""

from twodtm.simulate._micrograph import (
    Simulation,
    SimulationParams,
    place_particles,
    random_poses,
    render_phase_image,
    simulate_micrograph,
)
from twodtm.simulate._micrograph import _projector as _projector
from twodtm.simulate._volume import degrade_volume, fourier_bin, map_from_model

__all__ = [
    "Simulation",
    "SimulationParams",
    "degrade_volume",
    "fourier_bin",
    "map_from_model",
    "place_particles",
    "random_poses",
    "render_phase_image",
    "simulate_micrograph",
]
