"""Lazy registries: a class named ``"package.module:Class"`` is imported only when used,
so that registering model kinds and weight maps never imports torch at start-up."""

from __future__ import annotations

import importlib
from typing import Any

from bsoc.errors import ModelFileError


def import_target(target: str) -> Any:
    """The object a ``"module:attribute"`` string names."""
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def registered(registry: dict[str, str], key: Any, unknown: str, remedy: str = "") -> Any:
    """The class ``registry`` names for ``key``, or a model-file error ``unknown`` that lists
    the known keys (then ``remedy``)."""
    target = registry.get(str(key))
    if target is None:
        raise ModelFileError(unknown, remedy=f"expected one of {sorted(registry)}{remedy}")
    return import_target(target)
