"""Lazy package attributes (PEP 562), shared by the packages that load their names on use.

``__getattr__, __dir__ = lazy_attributes(__name__, globals(), {name: module or None})``:
a name maps to the submodule that defines it (``None``: the name is a submodule itself).
Standard library only, so importing a package stays cheap until a name is used.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping


def lazy_attributes(
    package: str,
    namespace: dict,
    table: Mapping[str, str | None],
    *,
    fresh: frozenset[str] = frozenset(),
    submodules: bool = False,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` of a package that loads ``table``'s names on first use.

    Args:
        package: the package's ``__name__``.
        namespace: its ``globals()`` (a loaded name is cached there, except ``fresh`` ones).
        table: ``{name: submodule}``; ``None`` for a name that is a submodule.
        fresh: names read afresh each time (e.g. a registry a function rebinds).
        submodules: also resolve any other submodule of the package (``package.cache``).
    """

    def __getattr__(name: str):
        if name in table:
            where = table[name]
            module = importlib.import_module(f".{where or name}", package)
            value = module if where is None else getattr(module, name)
            if name not in fresh:
                namespace[name] = value
            return value
        if (
            submodules
            and not name.startswith("__")
            and importlib.util.find_spec(f"{package}.{name}")
        ):
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
