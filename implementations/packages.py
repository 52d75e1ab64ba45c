"""How an adapter finds the package it wraps: each failure is a ``BackendUnavailable`` with the reason a user
acts on (install the extra, use a GPU, match the torch build), never an import error (docs/adapters.md)."""

from __future__ import annotations

import importlib
import importlib.metadata

import torch

from implementations.base import BackendUnavailable


def installed_version(distribution: str, install_hint: str) -> str:
    """The installed version of ``distribution``; BackendUnavailable naming ``install_hint`` when it is missing."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackendUnavailable(f"{distribution} is not installed ({install_hint})") from exc


def require_cuda(package: str) -> None:
    """BackendUnavailable unless a CUDA device is present (``package`` names what needs it, with its version)."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"no CUDA device ({package}'s kernels are CUDA only)")


def import_attribute(module: str, attribute: str, package: str) -> object:
    """``module.attribute``; any failure of the import (a build for another torch fails in many ways) is
    BackendUnavailable with its message."""
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as exc:
        raise BackendUnavailable(f"{package} does not import against torch {torch.__version__}: "
                                 f"{type(exc).__name__}: {str(exc)[:200]}") from exc
