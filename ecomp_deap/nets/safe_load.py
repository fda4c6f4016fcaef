"""Loading torch files that may come from someone else, without running their code.

``torch.load(weights_only=False)`` unpickles arbitrary objects, and unpickling can
call any function (a parent file from the internet could delete files or open a
shell). Every file this toolkit reads (parent files, exported networks, checkpoints,
the parent cache) is loaded with ``weights_only=True``: tensors, plain containers and
numbers, plus the allowlist below, so that a pickled ``nn.Sequential`` of the layer
types the toolkit supports still loads. Anything else is refused with a message that
says why and names the opt-in for a file the user trusts (``--trust-parent-file`` on
the command line, ``trust_pickle=True`` in the library).

The allowlist was found empirically: ``torch.save`` of ``nn.Sequential`` models made
of every class below (MLPs with each activation of ``nets.chain.ELEMENTWISE``, and
CNN stacks of convolution, batch norm, pooling and dropout) loads with these classes
and torch's own default safe types (``OrderedDict``, parameter and tensor rebuilds,
which are listed too, for older torch releases).
"""
from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn

from ..errors import UnsafeFileError
from .chain import DROPOUTS, ELEMENTWISE, NORMS, POOLS

LAYERS = (nn.Sequential, nn.Flatten, nn.Linear, nn.Conv2d, *ELEMENTWISE, *NORMS, *POOLS, *DROPOUTS,
          nn.Conv1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d, nn.Unflatten, nn.PReLU)
"""The torch layer classes a pickled parent may contain: what a chain may hold."""
LAYER_SUMMARY = ("Sequential, Flatten, Unflatten, Linear, elementwise activations, PReLU, Conv1d/2d, BatchNorm1d/2d, "
                 "MaxPool1d/2d, AvgPool1d/2d, adaptive pooling, Dropout/Dropout2d")

SAFE_GLOBALS = [*LAYERS, collections.OrderedDict, torch._utils._rebuild_parameter, nn.Parameter]

TRUST_PARENT = "--trust-parent-file (command line) or trust_pickle=True (ecomp_deap.compress, load_parent_file)"


def _allowlisted():
    """A context in which ``torch.load(weights_only=True)`` accepts :data:`SAFE_GLOBALS`."""
    scoped = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if scoped is not None:
        return scoped(SAFE_GLOBALS)
    torch.serialization.add_safe_globals(SAFE_GLOBALS)  # torch 2.4, the floor: process-wide, the same list
    return contextlib.nullcontext()


def archive_damage(data: bytes) -> str | None:
    """Why the bytes of a torch file are damaged, or None. Torch writes a zip archive with a
    CRC-32 of every member but does not check them when loading (a flipped bit in a
    tensor loads as a wrong number): here an archive cut short, or a member whose bytes
    fail their checksum, is named. Bytes that are not a zip archive (torch's legacy
    format, or no torch file at all) are left to the loader."""
    if not data.startswith(b"PK\x03\x04"):
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error):
        return "cut short: not a complete archive"
    return f"{bad} fails its checksum" if bad else None


def refused_global(error: BaseException) -> str | None:
    """What a ``weights_only`` load refused: ``'GLOBAL module.name'`` or the
    unpickler's own reason; None when the error is not a refusal (a corrupt file)."""
    text = str(error)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"GLOBAL {found.group(1)}"
    found = re.search(r"WeightsUnpickler error: (Unsupported[^\n]*?)(?:\.? Please|\n|$)", text)
    return found.group(1).strip() if found else None


def load_untrusted(path, trust_pickle: bool = False, opt_in: str | None = TRUST_PARENT, what: str = "file",
                   name: str | None = None):
    """``torch.load(path)`` on the CPU with ``weights_only=True`` and the layer allowlist;
    ``path`` may also be a binary file object (``name`` then names it in messages).

    A file that needs anything else raises :class:`UnsafeFileError` (one line: the
    refused global, why, and ``opt_in`` if given). ``trust_pickle=True`` loads with full
    unpickling, for files the user trusts. Other errors (a missing, truncated or
    non-torch file) propagate unchanged for the caller to word.
    """
    if isinstance(path, (str, os.PathLike)):
        path = Path(path)
        name = name or str(path)
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    with _allowlisted():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            refused = refused_global(e)
            if refused is None:
                raise
            hint = f"; if you trust this file, use {opt_in}" if opt_in else ""
            raise UnsafeFileError(
                f"{name or 'file'}: refused to load this {what}: it needs {refused}, which is not a tensor, plain data or a "
                f"supported layer ({LAYER_SUMMARY}); files are loaded without running code from them{hint}") from None
