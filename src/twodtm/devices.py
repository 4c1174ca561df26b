"""Compute devices (shared by the programs): a request as checked torch devices."""

from __future__ import annotations

import torch

from twodtm.errors import DeviceError

__all__ = ["resolve_devices"]


def _one(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise DeviceError(
            f"unknown device {name!r}: use 'cpu', 'cuda:N' or 'all'"
        ) from err
    if device.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = 0 if device.index is None else device.index
        if index >= available:
            raise DeviceError(
                f"device {name!r} does not exist: this machine has {available} CUDA "
                "device(s); use 'cpu' or one of cuda:0..cuda:N-1"
            )
        return torch.device("cuda", index)
    if device.type != "cpu":
        raise DeviceError(f"device {name!r} is not supported: use 'cpu' or 'cuda:N'")
    return device


def resolve_devices(spec: str | list[str]) -> list[torch.device]:
    """Devices named by ``spec``: ``"cpu"``, ``"cuda:0"``, a list, or ``"all"``.

    ``"all"`` means every CUDA device, or the CPU when there is none.

    Parameters
    ----------
    spec : str or list of str
        ``compute.devices`` of a configuration, or a ``--device`` option.

    Returns
    -------
    list of torch.device
        The devices, CUDA ones with their index.

    Raises
    ------
    DeviceError
        For an unknown, unsupported or absent device, or an empty list.

    Examples
    --------
    >>> resolve_devices("cpu"), resolve_devices(["cpu", " cpu "])
    ([device(type='cpu')], [device(type='cpu'), device(type='cpu')])
    >>> resolve_devices("tpu:0")
    Traceback (most recent call last):
    ...
    twodtm.errors.DeviceError: unknown device 'tpu:0': use 'cpu', 'cuda:N' or 'all'
    """
    if isinstance(spec, str) and spec.strip().lower() == "all":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [torch.device("cuda", i) for i in range(count)] or [torch.device("cpu")]
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names:
        raise DeviceError("compute.devices is empty: name at least one device")
    return [_one(n.strip()) for n in names]
