"""Loading torch files as tensors and plain data only: a file that would run code when unpickled is refused.

Checkpoints, kept best weights and users' weight files may come from storage other people can write (a shared
bucket on a cluster): ``torch.load(weights_only=False)`` would run whatever a planted pickle carries on every
node that reads it. Everything rayexp loads goes through :func:`load_tensors`, which lets
``torch.load(weights_only=True)`` refuse anything but tensors, numbers, strings and their containers, and tells a
file that carries code (refused, named) from one that is merely torn (for the caller to pass over).
"""

from __future__ import annotations

import io
import pickle
import re
from os import PathLike

import torch

from rayexp.errors import RayexpError


class CarriesCode(RayexpError):
    """A torch file that names a Python callable: loading it would run code. Never loaded."""

    def __init__(self, message: str, callable_name: str = "") -> None:
        super().__init__(message)
        self.callable_name = callable_name  # what it names, e.g. "posix.system"


def load_tensors(source: str | PathLike | io.BytesIO, what: str, map_location: str | torch.device = "cpu") -> object:
    """``torch.load`` of ``source`` with tensors and plain data only; :class:`CarriesCode`, naming ``what`` and the
    callable, for a file that would run code. Other failures (a torn or foreign file) propagate as torch raises
    them."""
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch words it two ways: "Trying to load unsupported GLOBAL posix.system", "Unsupported global: GLOBAL x.y"
        found = re.search(r"(?i)unsupported global:? (?:GLOBAL )?([\w.]+)", str(exc))
        if found is None:
            raise
        raise CarriesCode(
            f"{what}: not a file of tensors and plain data only: loading it would run code it carries (it names "
            f"{found.group(1)}); refused, never loaded",
            found.group(1),
        ) from None
