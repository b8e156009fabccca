"""Name -> builder tables. A registry is filled at import time by the modules that define the builders."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from parvis.errors import ParvisError


class Registry:
    """Builders by name, each with the facts given at registration (task, family, ...) to filter on."""

    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: `@MODELS.register("resnet18", task="classification")`."""

        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            # Two builders under one name would make which one wins depend on import order.
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = builder
            self._info[name] = dict(info)
            return builder

        return add

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._builders:
            raise ParvisError(self._unknown(name))
        return self._builders[name]

    def names(self, **filters: Any) -> list[str]:
        """Sorted names whose registration info has every `key=value` in `filters`."""
        return sorted(n for n, info in self._info.items() if all(info.get(k) == v for k, v in filters.items()))

    def info(self, name: str) -> dict[str, Any]:
        if name not in self._info:
            raise ParvisError(self._unknown(name))
        return dict(self._info[name])

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __len__(self) -> int:
        return len(self._builders)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._builders, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(self.names()) or '(none)'}"


MODELS = Registry("model")
