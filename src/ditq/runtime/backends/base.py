"""One interface for every backend, in the spirit of Polygraphy's runners (``polygraphy/backend/base/runner.py``):
a ``name``, ``activate()`` / ``infer(x, timestep, cond) -> eps`` / ``deactivate()``, and ``with`` to pair them.

:class:`GroupedBackend` is what every backend is: one callable per timestep group, the group picked by the
timestep of each call (``core.groups.TimestepGroups``; a batch whose rows sit at different timesteps is split by
group and put back in order, ``runtime.route``), class labels checked, calls counted per group. Backends
opened from an artifact come back active (sessions, engines and per-group models are built up front, so a bad
artifact fails at open time); ``deactivate()`` frees them and ``activate()`` builds them again from the same
artifact.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from ditq.core.cond import Cond
from ditq.core.groups import TimestepGroups
from ditq.errors import DitqError

if TYPE_CHECKING:
    from typing import Self

Fn = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]


class Backend(abc.ABC):
    """``infer(x, timestep, cond) -> eps`` between ``activate()`` and ``deactivate()``; calling the backend is
    ``infer``. ``with backend: ...`` activates it (a no-op when already active) and deactivates it on exit."""

    name: str

    @property
    @abc.abstractmethod
    def is_active(self) -> bool:
        """Whether ``infer`` can run (what it needs is built)."""

    def activate(self) -> None:
        """Build what inference needs; a no-op when the backend is active already."""
        if not self.is_active:
            self.activate_impl()

    def deactivate(self) -> None:
        """Free what ``activate`` built (sessions, engines, models); a no-op when inactive."""
        if self.is_active:
            self.deactivate_impl()

    @abc.abstractmethod
    def activate_impl(self) -> None: ...

    @abc.abstractmethod
    def deactivate_impl(self) -> None: ...

    @abc.abstractmethod
    def infer(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.infer(x, timestep, cond)

    def __enter__(self) -> Self:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()


@dataclass
class GroupedBackend(Backend):
    """Dispatch each call to the callable of the group whose timestep interval holds the call's timestep.

    ``loader`` (optional) builds ``fns`` again after ``deactivate()``; without one the backend cannot be
    re-activated (it was built from callables, not opened from an artifact).
    """

    name: str
    intervals: Sequence[tuple[int, int]]
    fns: Sequence[Fn]
    calls: list[int] = field(default_factory=list)
    num_classes: int | None = None  # class-conditioned models: labels 0..num_classes-1, num_classes = null label
    loader: Callable[[], Sequence[Fn]] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.calls = [0] * len(self.fns)
        self.groups = TimestepGroups.of(self.intervals)
        self._active = True

    @classmethod
    def from_loader(cls, name: str, intervals: Sequence[tuple[int, int]], loader: Callable[[], Sequence[Fn]],
                    **kwargs: object) -> Self:
        """A backend whose callables ``loader`` builds now, and again on ``activate()`` after ``deactivate()``."""
        return cls(name, intervals, list(loader()), loader=loader, **kwargs)  # type: ignore[arg-type]

    @property
    def is_active(self) -> bool:
        return self._active

    def activate_impl(self) -> None:
        if self.loader is None:
            raise DitqError(f"the {self.name} backend was built from callables and cannot be re-activated; "
                            "build it again")
        fns = list(self.loader())
        if len(fns) != len(self.intervals):
            raise DitqError(f"the {self.name} backend's loader built {len(fns)} groups, expected "
                            f"{len(self.intervals)}")
        self.fns, self._active = fns, True

    def deactivate_impl(self) -> None:
        self.fns, self._active = [], False

    def group_of(self, timestep: float) -> int:
        return self.groups.group_of(timestep)

    def check_cond(self, cond: Cond) -> None:
        """Refuse class labels the model has no embedding for (ONNX Runtime and TensorRT would fail deep inside
        a Gather, the torch backends inside an Embedding)."""
        labels = cond.get("class_labels")
        if labels is None or self.num_classes is None or labels.numel() == 0:
            return
        bad = labels[(labels < 0) | (labels > self.num_classes)]
        if bad.numel():
            raise DitqError(f"class label {int(bad[0])} is out of range for this {self.num_classes}-class model: "
                            f"labels lie in [0, {self.num_classes - 1}] and {self.num_classes} is the "
                            "unconditional (null) label")

    def infer(self, x: torch.Tensor, timestep: torch.Tensor, cond: Cond) -> torch.Tensor:
        if not self._active:
            raise DitqError(f"the {self.name} backend is not active; call activate() or use it in a `with` block")
        self.check_cond(cond)
        ts = timestep.reshape(-1)
        if ts.numel() > 1 and not bool((ts == ts[0]).all()):  # rows at different timesteps: split by group
            from ditq.runtime.route import RouteError, route

            try:
                return route(self.fns, self.intervals, x, ts, cond, calls=self.calls)
            except RouteError as err:
                raise DitqError(str(err)) from err
        g = self.group_of(float(timestep[0]))
        self.calls[g] += 1
        return self.fns[g](x, timestep, cond)


def read_manifest_kind(path: Path) -> str:
    """The ``kind`` an artifact directory declares (validated later by the artifact's own loader)."""
    from ditq.artifacts import manifest_kind

    kind = manifest_kind(Path(path))
    if kind is None:
        raise DitqError(f"{path} is not an artifact directory written by ditq (no readable manifest.json naming "
                        "its kind); re-create the artifact")
    return kind
