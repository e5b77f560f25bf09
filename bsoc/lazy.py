"""Lazy registries: a class named ``"package.module:Class"`` is imported only when used,
so that registering model kinds and weight maps never imports torch at start-up."""

from __future__ import annotations

import importlib
from typing import Any


def import_target(target: str) -> Any:
    """The object a ``"module:attribute"`` string names."""
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)
