"""What a command may write at its ``--out``, and what ``--force`` may replace there.

Every command that writes a folder (dataset, model, benchmark, report, analysis, sweep)
calls :func:`check_output` before its long work, so a mistake costs nothing, and writes
through :func:`write_output`. The rules, the same for every command:

- bsoc replaces only files it wrote itself. Each output lists its files in a record
  (``.bsoc-<kind>.json``); an output made before records existed is known by its
  signature file (``manifest.json``, ``config.json``, ...) and the kind's usual file names.
  Any other file in the folder, a user's notebook say, stays where it is.
- The output may not be one of the command's inputs, nor hold one (a dataset written over
  its own source folder would bury it), nor be an existing file.
- The new output is written completely into a staging folder beside ``--out`` (same
  parent, so every move is a rename). Only then are bsoc's old files moved aside and the
  new ones moved in, so a run that fails half-way leaves the old output as it was.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bsoc.errors import OutputNotWritableError, OverwriteRefusedError, UnsafeOutputError

_STAGE_PATTERN = re.compile(r"\.(?P<name>.+)\.bsoc-(?P<pid>\d+)-(?:new|old)-[0-9a-f]+")


@dataclass(frozen=True)
class OutputKind:
    """One kind of output, known by its ``signature`` file.

    ``legacy_files`` (glob patterns) are what bsoc wrote before it recorded its files, so
    that such outputs can still be replaced; ``legacy_mark`` is a key bsoc's signature
    JSON always holds, so that a user's own ``config.json`` is not taken for a model.
    A kind that does not ``own_folder`` shares
    its folder with other outputs by design: a run's report folder holds that run's
    benchmark and sweep folders, which the report reads. It may then hold its inputs,
    which it never touches; it still may not *be* one. ``refuse_nonempty``: without
    ``--force``, any file in the folder refuses the write, not only an existing output.
    """

    name: str
    signature: str
    legacy_files: tuple[str, ...]
    legacy_mark: str | None = None
    own_folder: bool = True
    refuse_nonempty: bool = False

    @property
    def record(self) -> str:
        return f".bsoc-{self.name}.json"


def check_output(
    path: str | Path, kind: OutputKind, *, force: bool, inputs: Iterable[str | Path | None] = ()
) -> None:
    """Raise unless ``kind`` may be written at ``path`` now (with or without ``force``)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnsafeOutputError(f"the output {path} is a file, not a folder",
                                remedy="give --out a new folder, or one bsoc wrote")
    check_inputs(path, inputs, own_folder=kind.own_folder)
    if not path.is_dir():
        return
    exists = (path / kind.signature).exists()
    if not force and (exists or (kind.refuse_nonempty and any(path.iterdir()))):
        what = f"already holds a {kind.name}" if exists else "is not empty"
        raise OverwriteRefusedError(f"{path} {what}",
                                    remedy="choose another --out or pass --force to replace it")
    _refuse_clashes(path, kind, [kind.signature])


def check_inputs(
    path: str | Path, inputs: Iterable[str | Path | None], *, own_folder: bool = True,
    remedy: str = "choose an --out that is neither an input nor a folder holding one",
) -> None:
    """Refuse an output that is one of ``inputs`` or, when it ``own_folder``, holds one."""
    out = Path(path).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source == out:
            raise UnsafeOutputError(f"the output {path} is the input {given}", remedy=remedy)
        if own_folder and out in source.parents:
            raise UnsafeOutputError(f"the output {path} holds the input {given}", remedy=remedy)


@contextmanager
def write_output(path: str | Path, kind: OutputKind, *, force: bool) -> Iterator[Path]:
    """Yield an empty staging folder for the new output; once the block ends, swap it in.

    If the block raises, the staging folder is removed and ``path`` is left untouched.
    """
    path = Path(path)
    check_output(path, kind, force=force)
    target = path.resolve()
    make_folder(target.parent)
    _remove_stale_stages(target)
    stage = _make_stage(target, "new")
    try:
        try:
            yield stage
        except OSError as error:
            raise _not_writable(path, error) from None
        _swap_in(stage, target, kind)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file`` with the permissions of any other file written here:
    safetensors creates its files readable by their owner only, so a service or a
    colleague running as another user could not load a model bsoc wrote."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def make_folder(path: Path) -> Path:
    """``mkdir -p`` with a one-line error when the place cannot be written."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _not_writable(path, error) from None
    return path


def owned_files(path: Path, kind: OutputKind) -> set[str]:
    """Relative paths of the files in ``path`` that bsoc wrote as this ``kind``."""
    record = path / kind.record
    if record.is_file():
        try:
            listed = json.loads(record.read_text())["files"]
        except (ValueError, KeyError, TypeError):
            raise UnsafeOutputError(f"{record} is damaged: bsoc cannot tell which files it wrote",
                                    remedy="move the folder's files away or choose another --out"
                                    ) from None
        inside = {str(f) for f in listed if _is_relative_inside(str(f))}
        return {f for f in inside if (path / f).is_file()} | {kind.record}
    if not _is_bsoc_signature(path / kind.signature, kind.legacy_mark):
        return set()
    return {p.relative_to(path).as_posix() for pattern in kind.legacy_files
            for p in path.glob(pattern) if p.is_file()}


def _is_bsoc_signature(path: Path, mark: str | None) -> bool:
    if not path.is_file():
        return False
    if mark is None:
        return True
    try:
        return mark in json.loads(path.read_text())
    except (ValueError, TypeError, OSError):
        return False


def _swap_in(stage: Path, target: Path, kind: OutputKind) -> None:
    """Move the complete new output from ``stage`` into ``target``, bsoc's old files out."""
    new = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
    (stage / kind.record).write_text(json.dumps({"kind": kind.name, "files": new}, indent=1) + "\n")
    if not target.exists():
        os.replace(stage, target)
        return
    incoming = [*new, kind.record]
    _refuse_clashes(target, kind, incoming)
    old = owned_files(target, kind)
    trash = _make_stage(target, "old")
    # The old signature leaves first and the new one arrives last: a reader sees the old
    # output, then none, then the new one, never a signature over a mix of files.
    leaving = sorted(old, key=lambda f: f != kind.signature)
    arriving = sorted(incoming, key=lambda f: f == kind.signature)
    try:
        _move_all([(target / f, trash / f) for f in leaving]
                  + [(stage / f, target / f) for f in arriving])
    except OSError as error:
        raise _not_writable(target, error) from None
    finally:
        shutil.rmtree(trash, ignore_errors=True)
    _remove_empty_folders(target, old - set(incoming))


def _refuse_clashes(target: Path, kind: OutputKind, incoming: list[str]) -> None:
    """Refuse when a file or folder bsoc did not write sits where the new output goes."""
    old = owned_files(target, kind)
    for relative in incoming:
        if relative in old:
            continue
        parts = Path(relative).parts
        for depth in range(1, len(parts) + 1):
            spot = target.joinpath(*parts[:depth])
            last = depth == len(parts)
            if spot.is_symlink() or (spot.exists() and (last or not spot.is_dir())):
                raise UnsafeOutputError(f"{spot} is in the way and was not written by bsoc",
                                        remedy="move it away or choose another --out")


def _move_all(moves: list[tuple[Path, Path]]) -> None:
    """Rename each (source, target); on a failure undo the renames done, then re-raise."""
    done: list[tuple[Path, Path]] = []
    try:
        for source, destination in moves:
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
            done.append((source, destination))
    except OSError:
        for source, destination in reversed(done):
            os.replace(destination, source)
        raise


def _remove_empty_folders(target: Path, removed: set[str]) -> None:
    """Remove folders that only held bsoc's old files (a user's file keeps its folder)."""
    folders = {parent for f in removed for parent in Path(f).parents if parent != Path(".")}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            (target / folder).rmdir()
        except OSError:
            pass  # not empty: it holds a file bsoc did not write


def _make_stage(target: Path, role: str) -> Path:
    """A new hidden folder beside ``target`` (made with the umask, unlike ``mkdtemp``)."""
    stage = target.parent / f".{target.name}.bsoc-{os.getpid()}-{role}-{secrets.token_hex(4)}"
    try:
        stage.mkdir()
    except OSError as error:
        raise _not_writable(target, error) from None
    return stage


def _remove_stale_stages(target: Path) -> None:
    """Remove staging folders beside ``target`` left by a bsoc process that was killed."""
    for candidate in target.parent.glob(f".{glob.escape(target.name)}.bsoc-*"):
        match = _STAGE_PATTERN.fullmatch(candidate.name)
        if match and match["name"] == target.name and not _process_alive(int(match["pid"])):
            shutil.rmtree(candidate, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by someone else
    return True


def _is_relative_inside(relative: str) -> bool:
    candidate = Path(relative)
    return not candidate.is_absolute() and ".." not in candidate.parts


def _not_writable(path: Path, error: OSError) -> OutputNotWritableError:
    return OutputNotWritableError(
        f"cannot write the output {path}: {error.strerror or error}",
        remedy="choose an --out in a folder you can write to, with free space")
