"""Named classes a config picks by its `kind:` string (member kinds, blend methods), built in or from plug-ins.

A name is found, in this order, among
  1. classes registered in this process with the registry's decorator (`@register_member("my-model")`);
  2. fb3stack's own built-ins, listed as name -> module and imported only when asked for, so that naming a CPU
     member never imports torch;
  3. entry points of the registry's group in any installed distribution (`[project.entry-points."<group>"]`
     `my-model = "my_package.module:MyClass"`), read again on every miss so a package installed (or put on
     sys.path) after the first lookup is still found.
An unknown name is a ConfigError listing every name of all three.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from fb3stack.config import ConfigError

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    def __init__(self, what: str, group: str, base: T, builtins: Mapping[str, str] | None = None) -> None:
        self.what = what  # "member kind", "blend method": how errors name an entry
        self.group = group  # the entry-point group plug-in packages declare
        self.base = base  # every class registered must subclass it
        self._builtins = dict(builtins or {})  # name -> module whose import registers it
        self._classes: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: `@registry.register("name")` makes the class available under `name`."""

        def decorate(cls: T) -> T:
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(f"{self.what} {name!r}: {cls!r} is not a subclass of {self.base.__name__}")
            builtin = self._builtins.get(name)
            if builtin is not None and cls.__module__ != builtin:
                raise ValueError(f"{self.what} {name!r} is built into fb3stack ({builtin}); pick another name")
            known = self._classes.get(name)
            if known is not None and _qualified(known) != _qualified(cls):  # re-importing a module is fine
                raise ValueError(f"{self.what} {name!r} is already registered by {_qualified(known)}")
            self._classes[name] = cls
            return cls

        return decorate

    def names(self) -> list[str]:
        return sorted({*self._classes, *self._builtins, *self._entry_points()})

    def get(self, name: str) -> T:
        if name not in self._classes and name in self._builtins:
            importlib.import_module(self._builtins[name])  # its decorator registers it
            if name not in self._classes:
                raise RuntimeError(f"{self._builtins[name]} does not register the {self.what} {name!r}")
        if name not in self._classes:
            self._load_entry_point(name)
        if name not in self._classes:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {self.names()}")
        return self._classes[name]

    def _load_entry_point(self, name: str) -> None:
        entry = self._entry_points().get(name)
        if entry is None:
            return
        try:
            cls = entry.load()
        except Exception as err:  # noqa: BLE001 - whatever a plug-in raises on import, say which one it was
            raise ConfigError(f"{self.what} {name!r}: cannot load entry point {entry.value!r} "
                              f"({entry.dist.name if entry.dist else 'unknown package'}): {err}") from err
        if name not in self._classes:  # a plug-in class needs no decorator: its entry point names it
            self.register(name)(cls)
        logger.debug("%s %r loaded from entry point %s", self.what, name, entry.value)

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        # importlib.metadata and the import system list a path folder again only when its mtime changes; clearing
        # their caches also shows a package installed within the mtime's resolution (coarse on some filesystems)
        importlib.invalidate_caches()
        return {e.name: e for e in importlib.metadata.entry_points(group=self.group)}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
