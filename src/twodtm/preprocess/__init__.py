"""Preprocessing (physics): outliers, whitening, bandpass, padding, templates.

What every search sees of its inputs: ``prepare_image`` turns a micrograph into
the whitened DFT the global search (``twodtm.search``) and the local search
(``twodtm.local``) correlate with, ``prepare_template`` a map into the Fourier
volume their projections are cut from.

Noise model. The search's correlation of a filtered projection ``F p`` with the
prepared image is ``<w, F p> / ||F p||``; on noise it is N(0, 1) when the whitened
image ``w`` has unit variance per frequency (spectral density 1) wherever the
template filter lets the projection through. ``prepare_image`` therefore scales
the whitened image by its mean power per frequency over that band, measured per
micrograph pixel that holds data. Its real-space variance is then the band's
share of the frequencies (0.35 for a 3 A cut at 1 A/px), not 1. The whitened
matched filter is that of Rickgauer et al. 2017 (eLife 6:e25648) and cisTEM's
``match_template`` (Lucas et al. 2021, eLife 10:e68946).

Modules: ``_settings`` (``FilterSettings``), ``_outliers`` (robust moments and
outlier replacement), ``_spectrum`` (radial power, whitening and bandpass
filters), ``_image`` (``prepare_image``) and ``_template`` (``prepare_template``).
"""

from twodtm.preprocess._image import PreparedImage, fft_friendly_size, prepare_image
from twodtm.preprocess._outliers import outlier_note, replace_outliers
from twodtm.preprocess._settings import FilterSettings
from twodtm.preprocess._template import prepare_template

__all__ = [
    "FilterSettings",
    "PreparedImage",
    "fft_friendly_size",
    "outlier_note",
    "prepare_image",
    "prepare_template",
    "replace_outliers",
]
