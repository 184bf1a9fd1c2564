"""Atomic output: write to a temporary file beside the target, then rename.

An interrupted run therefore never leaves a half-written result under the final name.
"""
import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, overwrite=True):
    """Yield a temporary path in the target's directory; rename it to `path` on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Final destination.
    overwrite : bool
        If False and `path` exists, raise FileExistsError before any work.

    Yields
    ------
    pathlib.Path
        Temporary path to write to. It is removed if the block raises.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            # mkstemp creates owner-only files; give the result the usual permissions
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(path, overwrite=False):
    """Yield a temporary directory beside `path`; rename it to `path` on success.

    Parameters
    ----------
    path : str or pathlib.Path
        Final directory.
    overwrite : bool
        Replace an existing directory at `path` (it is removed only after success).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = sibling_directory(path)
    try:
        yield tmp
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sibling_directory(path):
    """A new, empty, uniquely named hidden directory beside `path` (the parent is created if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))


def replace_directory(tmp, path):
    """Rename the finished directory `tmp` to `path`, replacing what is there only once `tmp` is in place.

    `tmp` gets the usual permissions (``mkdtemp`` makes owner-only directories); an existing `path`
    is moved aside first and removed after the rename, so `path` always holds a whole result.
    """
    tmp, path = Path(tmp), Path(path)
    os.chmod(tmp, 0o777 & ~_umask())
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=tmp.parent))
        os.replace(path, old / "folder")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
