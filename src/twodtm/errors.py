"""Typed exceptions (shared by every layer): each user-facing failure, the fix named.

``ConfigError`` and ``InputDataError`` are also ``ValueError``; ``TwodtmError``
catches them all, as the command line (``twodtm.cli``) does.

Examples
--------
>>> from twodtm.orientations import parse_symmetry
>>> try:
...     parse_symmetry("C0")
... except ConfigError as err:
...     print(isinstance(err, ValueError), isinstance(err, TwodtmError))
...     print(err)
True True
unknown symmetry 'C0': use Cn or Dn (n >= 1), T, O or I.
"""

__all__ = [
    "BatchSizeWarning",
    "CheckpointError",
    "ConfigError",
    "DeviceError",
    "InputDataError",
    "InputFileError",
    "OutputExistsError",
    "OutputWriteError",
    "SearchFailedError",
    "SearchTooLargeError",
    "TwodtmError",
]


class TwodtmError(Exception):
    """Base class of every error twodtm raises for bad input or a failed run."""


class ConfigError(TwodtmError, ValueError):
    """A configuration field is missing, malformed or out of range."""


class InputFileError(TwodtmError):
    """An input file is missing, unreadable, truncated or not what was expected."""


class InputDataError(TwodtmError, ValueError):
    """Input data are readable but unusable (NaN pixels, constant image, sizes)."""


class DeviceError(TwodtmError):
    """A requested compute device does not exist or cannot hold the work."""


class OutputExistsError(TwodtmError):
    """An output would overwrite an existing result without permission."""


class CheckpointError(TwodtmError):
    """A checkpoint is corrupt, truncated, or belongs to another configuration."""


class SearchFailedError(TwodtmError):
    """A chunk of the search failed on every retry; the checkpoint holds the rest."""


class OutputWriteError(TwodtmError):
    """An output location is a file, or not writable."""


class BatchSizeWarning(UserWarning):
    """The batch size was reduced because a batch did not fit in device memory."""


class SearchTooLargeError(TwodtmError):
    """A search would not fit in memory or would run past the time limit."""
