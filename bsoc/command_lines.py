"""bsoc's own command lines, spelled from the commands' definitions (their parameters).

Two uses, one spelling (:func:`spell`): :func:`running_command` writes down the command that
is running, with every parameter's value, for the provenance artefacts record; and
:class:`CommandLines` writes the argument lists the pipeline runs from the parameters'
Python names, so that a renamed command or option fails as soon as a pipeline is planned
(in the tests), never half-way through a user's run.
"""

from __future__ import annotations

import shlex
from typing import Any

# Commands and parameters are click's objects as typer builds them (typer ships its own copy
# of click, so they are recognised by what they hold, not by class): a command has
# ``params``, a group also ``commands``; a parameter has ``name``, ``param_type_name``
# ("argument" or "option"), ``opts``, ``secondary_opts`` and ``is_flag``.


def spell(command: Any, values: dict[str, Any]) -> list[str]:
    """The words that give ``command``'s parameters (by Python name) these values, in order.

    ``None`` and an empty list leave a parameter out; a flag is written when true, and its
    negative form (``--keep-rest``) when false; a list repeats an option per item; a whole
    float is written as an integer (``--max-minutes 2``), which reads back the same.
    """
    by_name = {param.name: param for param in command.params}
    words: list[str] = []
    for name, value in values.items():
        param = by_name.get(name)
        if param is None:
            raise LookupError(f"'{command.name}' has no parameter {name!r}")
        if value is None:
            continue
        items = list(value) if isinstance(value, list | tuple) else [value]
        if param.param_type_name == "argument":
            words += [_word(item) for item in items]
        elif getattr(param, "is_flag", False):
            if value:
                words.append(param.opts[0])
            elif param.secondary_opts:
                words.append(param.secondary_opts[0])
        else:
            for item in items:
                words += [param.opts[0], _word(item)]
    return words


def _word(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def running_command(context: Any) -> str:
    """The running ``bsoc`` command (its ``typer.Context``) with every parameter's value, as
    a shell line.

    Rebuilt from the parsed parameters rather than ``sys.argv``, so it is right however the
    command was invoked (console script, ``python -m``, the pipeline, tests calling ``main``).
    """
    path: list[str] = []
    node = context
    while node.parent is not None:
        path.insert(0, str(node.info_name))
        node = node.parent
    values = {param.name: context.params.get(param.name) for param in context.command.params}
    return shlex.join(["bsoc", *path, *spell(context.command, values)])


class CommandLines:
    """Argument lists for the commands under ``root`` (the ``bsoc`` group)."""

    def __init__(self, root: Any) -> None:
        self.root = root

    def command(self, words: str) -> Any:
        """The command a space-separated path names (``"data simulate"``)."""
        node = self.root
        for word in words.split():
            node = getattr(node, "commands", {}).get(word)
            if node is None:
                raise LookupError(f"bsoc has no command {words!r}")
        return node

    def __call__(self, words: str, *arguments: Any, **options: Any) -> list[str]:
        """``words``, then ``arguments`` for the command's positional parameters in order,
        then ``options`` by their Python names: ``lines("train", data=d, out=o)``."""
        command = self.command(words)
        positional = [p.name for p in command.params if p.param_type_name == "argument"]
        if len(arguments) > len(positional):
            raise LookupError(f"'bsoc {words}' takes {len(positional)} arguments")
        for name in options:
            if name in positional:
                raise LookupError(f"{name!r} is an argument of 'bsoc {words}', not an option")
        values = dict(zip(positional, arguments))
        return [*words.split(), *spell(command, {**values, **options})]

    def force(self, words: str) -> list[str]:
        """How ``words`` is told to replace its own output (``["--force"]``); ``[]`` if it
        has no such option (it never refuses)."""
        command = self.command(words)
        takes = any(param.name == "force" for param in command.params)
        return spell(command, {"force": True}) if takes else []
