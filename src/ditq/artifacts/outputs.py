"""Where ditq writes: one rule for every command's output, directory or file.

The promises (README, "What ditq guarantees"; each kept by a test in ``tests/test_outputs.py``):

- **Only its own.** An existing non-empty output is replaced only with ``force``, and then only when it holds a
  ditq output of the same kind (its ``manifest.json`` says so). Anything else is refused with one line naming it.
  The current directory, a directory above it, a symbolic link and the command's own inputs (or a directory that
  holds one) are never an output.
- **Whole or not at all.** The new output is built in a hidden sibling ``.NAME.<pid>-<start>.<rand>.partial`` and
  appears with one rename. A replaced directory is swapped atomically (``renameat2(RENAME_EXCHANGE)`` on Linux) and
  deleted only after the swap, so a crash at any instant leaves the old output or the new one, both whole. Where
  the exchange is not available, the old output is first renamed aside and restored by the next run if the process
  died in between.
- **One writer.** A lock file ``.NAME.ditq-lock`` beside the output: a second writer to the same output fails at once.
- **No debris.** A failure, Ctrl-C or SIGTERM (the CLI turns it into an exception) removes the staging directory;
  after a ``kill -9``, the next run in the same parent removes partial outputs whose process is gone.
- **Ordinary permissions.** Outputs get the umask's modes, as ``cp`` and ``pip`` give them (the temporary
  directory ``mkdtemp`` makes is 0700; it is widened before it becomes the output).
- **Fail before the work.** All of the above is checked, and the staging directory created (so an unwritable
  parent fails at once), before the caller's block runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ditq.errors import DitqError

log = logging.getLogger(__name__)

_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-(?P<start>\d+)\.[A-Za-z0-9_]+\.(?P<what>partial|old)"
                      r"(?P<suffix>\.[A-Za-z0-9]+)?$")


# -- processes ---------------------------------------------------------------------------------------------------

def _start_time(pid: int) -> int:
    """The kernel's start time of ``pid`` (clock ticks since boot), 0 where /proc is not there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in parentheses may hold spaces


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return start == 0 or _start_time(pid) in (0, start)  # a reused pid has another start time


def _tag() -> str:
    pid = os.getpid()
    return f"{pid}-{_start_time(pid)}"


def sweep_stale(parent: Path) -> list[Path]:
    """Remove ditq staging leftovers in ``parent`` whose process is gone (after ``kill -9`` or a power cut).

    A ``.partial`` is deleted; an ``.old`` (a replaced output renamed aside by the non-atomic fallback) is put back
    if its output is missing, else deleted. Returns what was removed or restored.
    """
    done: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return done
    for path in entries:
        if path.name.startswith(".") and path.name.endswith(".ditq-lock") and _clear_lock(path):
            done.append(path)
            continue
        m = _STAGING.match(path.name)
        if not m or path.is_symlink() or _alive(int(m["pid"]), int(m["start"])):
            continue
        target = path.with_name(m["name"] + (m["suffix"] or ""))
        try:
            if m["what"] == "old" and not target.exists() and not target.is_symlink():
                os.rename(path, target)
                log.warning("restored %s from an interrupted replacement", target)
            elif path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as err:  # another sweeper got there first, or it is not ours to remove
            log.debug("could not clear %s: %s", path, err)
            continue
        done.append(path)
        log.info("removed stale %s (process %s is gone)", path.name, m["pid"])
    return done


def _clear_lock(path: Path) -> bool:
    """Unlink a lock file nobody holds (left by ``kill -9``); lockers re-check the inode, so this is race-free."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# -- checks ------------------------------------------------------------------------------------------------------

def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(out: Path, *, kind: str, force: bool, inputs: Iterable[str | Path] = (),
                 what: str = "directory") -> Path:
    """Refuse an output that is not ours to write; return its resolved path. See the module docstring."""
    from ditq.artifacts import manifest_kind

    out = Path(out)
    if out.name in ("", ".", ".."):
        raise DitqError(f"-o {str(out) or repr('')} names the current directory or one above it, which ditq never "
                        f"replaces; name a new {what} such as ./{kind.split('.')[-1]}")
    if out.is_symlink():
        raise DitqError(f"output {out} is a symbolic link; ditq does not write through links: remove it or name "
                        f"its target {os.readlink(out)}")
    real = out.resolve()
    cwd = Path.cwd().resolve()
    if _is_within(cwd, real):
        raise DitqError(f"output {out} is the current directory or holds it; name a new {what} inside it instead")
    for item in inputs:
        if item is None:
            continue
        src = Path(item).resolve()
        if _is_within(src, real):
            raise DitqError(f"output {out} is (or holds) the input {item}; write the output somewhere else")
    if real.exists() or out.exists():
        is_dir = what == "directory"
        if is_dir and not real.is_dir():
            raise DitqError(f"output {out} exists and is not a directory; remove it or choose another -o")
        if not is_dir and not real.is_file():
            raise DitqError(f"output {out} exists and is not a regular file; remove it or choose another -o")
        empty = is_dir and not any(real.iterdir())
        if not empty:
            if not force:
                raise DitqError(f"output directory {out} already exists and is not empty; pass --force to replace "
                                "it" if is_dir else f"output file {out} already exists; pass --force to replace it")
            found = manifest_kind(real) if is_dir else kind
            if found != kind:
                holds = f"a '{found}' artifact" if found else "files that are not a ditq output"
                raise DitqError(f"output directory {out} holds {holds}; --force replaces only a '{kind}' output "
                                "written by ditq (or an empty directory): remove it yourself or choose another -o")
    return real


# -- the lock ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(real: Path) -> Iterator[None]:
    """An exclusive, non-blocking flock on ``.NAME.ditq-lock`` beside the output (released when the process dies)."""
    import fcntl

    lock = real.with_name(f".{real.name}.ditq-lock")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:  # a read-only or virtual file system: fail before any work
            raise DitqError(f"cannot write output {real}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DitqError(f"another ditq process is writing {real} (lock {lock}); wait for it to finish or "
                            "choose another -o") from None
        try:  # the holder before us may have unlinked the file we opened: lock the one at the path
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


# -- the swap ----------------------------------------------------------------------------------------------------

_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2); False where the platform or file system cannot."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _put_in_place(tmp: Path, real: Path) -> None:
    """Make ``tmp`` the output: one rename; an existing output is swapped out whole and deleted afterwards."""
    if not real.exists():
        try:
            os.rename(tmp, real)  # fails rather than replace a non-empty directory someone created meanwhile
        except OSError as err:
            raise DitqError(f"{real} appeared while ditq was writing it ({err.strerror}); the new output was "
                            "discarded, run again") from None
        return
    if _exchange(tmp, real):
        _remove(tmp)  # now the old output
        return
    aside = real.with_name(f".{real.name}.{_tag()}.{os.urandom(4).hex()}.old")
    os.rename(real, aside)
    try:
        os.rename(tmp, real)
    except BaseException:
        os.rename(aside, real)
        raise
    _remove(aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mkparent(out: Path, real: Path) -> None:
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DitqError(f"cannot create the parent of output {out}: {err.strerror or err}") from None


# -- the public context managers -----------------------------------------------------------------------------------

@contextlib.contextmanager
def staging_dir(out: Path, *, kind: str, force: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes ``out`` in one rename, on any failure it is removed.

    Args:
        out: the output directory to write.
        kind: the output's kind (``ditq.recipe``, ``ditq.onnx``, ...). A ``manifest.json`` naming it is written if
            the block wrote none, so a later ``force`` recognises the directory as this command's own.
        force: replace an existing non-empty ``out`` of the same kind.
        inputs: the command's input paths: ``out`` may neither be nor hold one of them.

    Example:
        >>> with staging_dir(Path("recipe"), kind="ditq.recipe") as tmp:  # doctest: +SKIP
        ...     recipe.write(tmp)
    """
    from ditq.artifacts import MANIFEST, write_manifest

    out = Path(out)
    real = check_output(out, kind=kind, force=force, inputs=inputs)
    _mkparent(out, real)
    sweep_stale(real.parent)
    with _locked(real):
        real = check_output(out, kind=kind, force=force, inputs=inputs)  # again, now that we hold the lock
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{real.name}.{_tag()}.", suffix=".partial", dir=real.parent))
        except OSError as err:
            raise DitqError(f"cannot write output {out}: {err.strerror or err}") from None
        try:
            os.chmod(tmp, 0o777 & ~_umask())
            yield tmp
            if not (tmp / MANIFEST).exists():
                write_manifest(tmp, kind, {})
            _put_in_place(tmp, real)
        except BaseException:
            _remove(tmp)
            raise


@contextlib.contextmanager
def output_file(out: Path, *, kind: str, force: bool = False, inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Like :func:`staging_dir` for one file: yield a hidden temporary path beside ``out`` (same suffix); on success
    it replaces ``out`` in one rename. An existing ``out`` is replaced only with ``force``; ``kind`` names the file
    in messages (``"PNG grid"``).

    Example:
        >>> with output_file(Path("grid.png"), kind="PNG grid") as tmp:  # doctest: +SKIP
        ...     save_grid(images, tmp)
    """
    out = Path(out)
    real = check_output(out, kind=kind, force=force, inputs=inputs, what="file")
    _mkparent(out, real)
    sweep_stale(real.parent)
    with _locked(real):
        real = check_output(out, kind=kind, force=force, inputs=inputs, what="file")
        try:
            fd, name = tempfile.mkstemp(prefix=f".{real.stem}.{_tag()}.", suffix=f".partial{real.suffix}",
                                        dir=real.parent)
        except OSError as err:
            raise DitqError(f"cannot write output {out}: {err.strerror or err}") from None
        os.close(fd)
        tmp = Path(name)
        try:
            os.chmod(tmp, 0o666 & ~_umask())
            yield tmp
            os.replace(tmp, real)
        except BaseException:
            _remove(tmp)
            raise
