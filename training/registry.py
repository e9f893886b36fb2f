"""A registry of named things (dataset loaders, synthetic image kinds and defects), filled by a decorator.

    LOADERS = Registry("dataset")

    @LOADERS.register("mvtec", "mpdd")
    def load_mvtec(root, class_name=None): ...

A registry is a read-only mapping from name to the registered object, in registration order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects; `what` names the kind of thing in messages ("dataset", "defect kind")."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """A decorator that registers its target under each of `names` and returns it unchanged."""

        def deco(obj: T) -> T:
            for name in names:
                if name in self._items:
                    raise ValueError(f"{self.what} {name!r} is registered twice")
                self._items[name] = obj
            return obj

        return deco

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
