"""A flat name -> constructor registry, shared by models and losses (built by name from configs)."""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Constructors registered under lower-case names, e.g. ``Registry[nn.Module]("model")``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a class or factory under `name`."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name.lower()
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = fn
            return fn

        return deco

    def create(self, name: str, **kwargs: Any) -> T:
        """Build the registered entry `name`; keyword arguments are its config."""
        key = name.lower()
        if key not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}")
        return self._items[key](**kwargs)

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)
