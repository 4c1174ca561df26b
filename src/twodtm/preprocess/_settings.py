"""The preprocessing settings: outliers, contrast, whitening and bandpass."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FilterSettings"]


@dataclass(frozen=True)
class FilterSettings:
    """Whitening and bandpass settings, in Angstrom of resolution.

    Attributes
    ----------
    whitening : bool
        Flatten the noise spectrum by the micrograph's radially averaged power.
    whitening_high_resolution : float or None
        Frequencies finer than this are left out of the search (filter set to 0).
    bandpass_low_resolution, bandpass_high_resolution : float or None
        Cosine-edged band limits; None leaves that side open.
    bandpass_falloff : float
        Width of each cosine edge in 1/Angstrom.
    contrast_inverted : bool
        The micrograph was contrast-inverted upstream (protein bright, as in
        RELION's particle images); it is negated back to the microscope's
        contrast (protein dark at underfocus) before the search.
    outlier_sigma : float or None
        Pixels farther than this many standard deviations from the clipped mean
        are replaced by that mean before whitening (see ``replace_outliers``);
        None keeps every pixel.
    """

    whitening: bool = True
    whitening_high_resolution: float | None = None
    bandpass_low_resolution: float | None = None
    bandpass_high_resolution: float | None = None
    bandpass_falloff: float = 0.005
    contrast_inverted: bool = False
    outlier_sigma: float | None = 5.0
