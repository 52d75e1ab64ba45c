"""The registry: which backends a run can see, and how they are made.

Built-in factories (``BUILTIN_FACTORIES``), third parties' entry points in the group ``attnspec.backends``, and
``package.module:factory`` specs for one run (``--backend`` or ``ATTNSPEC_BACKENDS``). A factory returns a
backend or a list of them, or raises ``BackendUnavailable``; any failure makes its backend unavailable with the
reason, never a crash. Names must be unique.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from implementations.base import BackendLike, BackendUnavailable

ENTRY_POINT_GROUP = "attnspec.backends"
ENV_VAR = "ATTNSPEC_BACKENDS"

#: Built-in factories. A factory returns a Backend or a list of them, or raises BackendUnavailable.
BUILTIN_FACTORIES: dict[str, str] = {
    "reference": "implementations.reference:ReferenceBackend",
    "reference-tiled": "implementations.reference_tiled:TiledReferenceBackend",
    "torch": "implementations.torch_sdpa:backends",
    "triton": "implementations.triton:backends",
    "cupy": "implementations.cupy:backends",
    "ring": "implementations.ring_attention:backends",
    "flex": "implementations.flex:backends",
    "liger-kl": "implementations.liger:kl_backend",
    "liger-jsd": "implementations.liger:jsd_backend",
    "flash-attn": "implementations.flashattn:backends",
    "xformers": "implementations.xformers_fmha:backends",
    "flashinfer": "implementations.flashinfer_prefill:backends",
    "torch-cp": "implementations.torch_context_parallel:backends",
}


@dataclass
class RegistryEntry:
    """A backend as found by the registry: usable (``backend`` set) or unavailable with the reason.

    ``factory`` is the ``package.module:factory`` spec that made it, so a child process can load only it.
    """

    name: str
    origin: str
    backend: BackendLike | None = None
    unavailable: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    factory: str = ""

    @property
    def available(self) -> bool:
        return self.backend is not None

    def refuse(self, reason: str) -> None:
        """Make the entry unavailable for ``reason``."""
        self.backend = None
        self.unavailable = reason


@dataclass(frozen=True)
class FactorySpec:
    """One factory the registry knows: the label its entries get when it fails, where it was named, its spec."""

    label: str
    origin: str
    spec: str


class Named(Protocol):
    """What the duplicate-name rule needs of a registry entry (or of a listing made in another process)."""

    name: str

    @property
    def available(self) -> bool: ...

    def refuse(self, reason: str) -> None: ...


def _load_factory(spec: str) -> object:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"backend spec {spec!r} is not of the form 'package.module:factory'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None


def instantiate(factory: FactorySpec) -> list[RegistryEntry]:
    """Call one factory; every failure it raises, ``SystemExit`` and ``KeyboardInterrupt`` included, becomes
    an unavailable entry with the reason, never a crash. (A factory that kills the interpreter outright is
    isolated by :mod:`conformance.probe`, which runs the factories in a child process.)"""
    label, origin, spec = factory.label, factory.origin, factory.spec

    def unavailable(reason: str) -> list[RegistryEntry]:
        return [RegistryEntry(label, origin, unavailable=reason, factory=spec)]

    try:
        made = _load_factory(spec)()
    except BackendUnavailable as exc:
        return unavailable(str(exc))
    except ImportError as exc:
        return unavailable(f"import failed: {exc} (the module must be importable: installed, or on PYTHONPATH)")
    except SystemExit as exc:
        return unavailable(f"the factory called sys.exit({exc.code!r})")
    except BaseException as exc:  # a third-party factory may fail in any way; report it, do not crash
        return unavailable(f"{type(exc).__name__}: {exc}")
    made_list = made if isinstance(made, list | tuple) else [made]
    entries = []
    for backend in made_list:
        if not isinstance(backend, BackendLike):
            entries += unavailable(f"{spec} returned {backend!r}, which lacks name / capabilities / "
                                   "not_supported_reasons")
        else:
            entries.append(RegistryEntry(backend.name, origin, backend=backend, factory=spec))
    return entries


def factory_specs(extra_specs: tuple[str, ...] | list[str] = (), *,
                  env: dict[str, str] | None = None) -> list[FactorySpec]:
    """Every factory this run can see, in order: built-ins, entry points, ``ATTNSPEC_BACKENDS``, ``extra_specs``.

    ``ATTNSPEC_BACKENDS`` and ``extra_specs`` hold ``package.module:factory`` specs (comma-separated in the
    variable); their modules must be importable (installed, or on ``PYTHONPATH``).
    """
    import os
    from importlib.metadata import entry_points

    found = [FactorySpec(label, "built-in", spec) for label, spec in BUILTIN_FACTORIES.items()]
    found += [FactorySpec(ep.name, f"entry point {ep.value}", ep.value)
              for ep in entry_points(group=ENTRY_POINT_GROUP)]
    env_specs = [s.strip() for s in (env if env is not None else os.environ).get(ENV_VAR, "").split(",")]
    found += [FactorySpec(spec, f"--backend {spec}", spec) for spec in [s for s in env_specs if s] + list(extra_specs)]
    return found


def refuse_duplicate_names(entries: list[Named]) -> None:
    """Names must be unique: a later available entry with a name already seen is made unavailable."""
    seen: set[str] = set()
    for entry in entries:
        if entry.available and entry.name in seen:
            entry.refuse(f"name {entry.name!r} is already taken by another backend")
        seen.add(entry.name)


def discover(extra_specs: tuple[str, ...] | list[str] = (), *, env: dict[str, str] | None = None,
             factories: set[str] | None = None) -> list[RegistryEntry]:
    """Every backend this run can see (see :func:`factory_specs`), made in this process.

    ``factories``: call only the factories with these specs (a child process told which ones its parent
    found usable); the others are not listed. Names must be unique; a later duplicate is reported
    unavailable with the reason.
    """
    found: list[RegistryEntry] = []
    for factory in factory_specs(extra_specs, env=env):
        if factories is None or factory.spec in factories:
            found += instantiate(factory)
    refuse_duplicate_names(found)
    return found


class Selectable(Protocol):
    """What :func:`select` reads of an entry: its name and where it came from."""

    name: str
    origin: str


SelectableT = TypeVar("SelectableT", bound=Selectable)


def select(entries: list[SelectableT], names: list[str] | tuple[str, ...]) -> list[SelectableT]:
    """The entries named (all when ``names`` is empty), by name or by the ``package.module:factory`` spec they
    came from; a name or spec nobody has raises ValueError."""
    if not names:
        return entries
    chosen = []
    for name in names:
        match = [e for e in entries if e.name == name or e.origin == f"--backend {name}"]
        if not match:
            known = ", ".join(sorted({e.name for e in entries}))
            raise ValueError(f"no backend named {name!r} (known: {known})")
        chosen += [m for m in match if m not in chosen]
    return chosen
