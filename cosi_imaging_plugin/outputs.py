"""The output folder of a run: one policy for every command.

>>> with OutputFolder("rl", overwrite=False) as out:        # doctest: +SKIP
...     write_results(out.work / "results.h5")

- An existing non-empty folder is refused unless ``overwrite`` is given, and an
  existing folder is replaced only if it holds a product of this package (a
  ``run.log``, ``manifest.yaml`` or ``summary.json``): ``--overwrite`` never empties a
  folder of other files.
- Writability is checked on entry, before any computation: the results are built
  in a temporary sibling folder (``.NAME.*.tmp``), which therefore has to be
  creatable, and an existing folder to be replaced must be writable.
- The finished folder is swapped in at the end, so an interrupted or failed run
  never mixes old and new products; on failure or interruption the temporary
  folder is removed, unless the run asked to keep what it has
  (:attr:`OutputFolder.keep_on_interrupt`, for a resumable state).
- ``report.html`` in the folder sums the run up on one self-contained page
  (:mod:`cosi_imaging_plugin.report`), written with ``run.log``.
- ``run.log`` in the folder receives the package's log records (at the level of the
  ``cosi_imaging_plugin`` logger: the command line sets it to DEBUG),
  after a header with the command line, the package versions and the checksums
  of the inputs (:meth:`OutputFolder.record_inputs`).

SIGTERM is turned into :class:`Interrupted` by :func:`interrupts_from_signals`, so
that the same clean-up runs as for Ctrl-C (SIGINT).
"""
import contextlib
import datetime
import hashlib
import importlib.metadata
import logging
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

from ._atomic import replace_directory, sibling_directory
from .errors import CosiFileError
from .report import write_report

logger = logging.getLogger(__name__)

#: Files that mark a folder as a product of this package (safe to replace with ``overwrite``).
PRODUCT_MARKERS = ("run.log", "manifest.yaml", "summary.json")

#: Packages whose versions are written to ``run.log``.
VERSIONED_PACKAGES = ("cosi-imaging-plugin", "numpy", "scipy", "astropy", "histpy", "mhealpy", "healpy", "numba",
                      "astromodels", "threeML", "matplotlib", "h5py")


class OutputExistsError(CosiFileError, FileExistsError):
    """The output folder exists, is not empty and ``overwrite`` was not given."""


class Interrupted(KeyboardInterrupt):
    """The run received SIGINT or SIGTERM.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self):
        """The shell's exit status for the signal (128 + its number)."""
        return 128 + self.signum


@contextlib.contextmanager
def interrupts_from_signals():
    """Raise :class:`Interrupted` in the main thread on SIGINT and SIGTERM while the block runs.

    Outside the main thread (where Python cannot install handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(signum)

    previous_hook = sys.unraisablehook

    def unraisable(info):
        if isinstance(info.exc_value, Interrupted):
            # raised while a finalizer or weakref callback ran, where Python ignores exceptions: deliver the
            # signal again a moment later, once the callback has returned
            again = threading.Timer(0.01, os.kill, (os.getpid(), info.exc_value.signum))
            again.daemon = True
            again.start()
            return
        previous_hook(info)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, old in previous.items():
            signal.signal(sig, old)


def file_checksum(path, algorithm="sha256", chunk=1 << 22):
    """Hex digest of a file's content."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names, missing=None):
    """{name: installed version} of some packages, `missing` for one not installed."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = missing
    return versions


def _is_empty(path):
    with os.scandir(path) as entries:
        return next(entries, None) is None


class OutputFolder:
    """A run's output folder, built beside its final place and swapped in at the end.

    Parameters
    ----------
    path : str or pathlib.Path
        The final folder.
    overwrite : bool
        Replace an existing non-empty folder made by this package.
    log : bool
        Write ``run.log`` (header and the package's log records) into the folder.
    command : str, optional
        The command line recorded in ``run.log`` (default: this process's).

    Attributes
    ----------
    path : pathlib.Path
        The final folder.
    work : pathlib.Path
        The temporary folder to write into (set on entry).
    previous : pathlib.Path or None
        The existing folder being replaced, readable until the swap (for reusing a
        finished stage), else None.
    keep_on_interrupt : bool
        Swap the temporary folder in even when the run is interrupted (default False:
        it is removed).
    """

    def __init__(self, path, overwrite=False, log=True, command=None):
        self.path = Path(path)
        self.overwrite = bool(overwrite)
        self.log = log
        self.command = command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self.work = None
        self.previous = None
        self.keep_on_interrupt = False
        self._handler = None

    def check(self):
        """Refuse a folder that cannot be used, before any work (also done on entry)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise CosiFileError(f"output folder {path} is a file")
        if path.is_dir() and not _is_empty(path):
            if not self.overwrite:
                raise OutputExistsError(f"output folder {path} is not empty: pass --overwrite (overwrite=True) "
                                        "to replace it, or choose another folder")
            if not any((path / marker).exists() for marker in PRODUCT_MARKERS):
                raise OutputExistsError(f"output folder {path} holds files not made by cosi-imaging (no "
                                        f"{' or '.join(PRODUCT_MARKERS)}): it is not replaced, even with "
                                        "--overwrite; choose another folder")
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise CosiFileError(f"output folder {path} is not writable")

    def __enter__(self):
        self.check()
        parent = self.path.absolute().parent
        try:
            self.work = sibling_directory(self.path.absolute())
        except PermissionError as exc:
            raise CosiFileError(f"cannot write the output folder {self.path}: {parent} is not writable") from exc
        except OSError as exc:
            raise CosiFileError(f"cannot create the output folder {self.path}: {exc.strerror} ({parent})") from exc
        self.previous = self.path if self.path.is_dir() and not _is_empty(self.path) else None
        if self.log:
            self._start_log()
        return self

    def _start_log(self):
        log = self.work / "run.log"
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        lines = [f"# command: {self.command}", f"# started: {now}", f"# working directory: {Path.cwd()}",
                 f"# python: {sys.version.split()[0]}"]
        lines += [f"# version {name}: {version}" for name, version in
                  package_versions(VERSIONED_PACKAGES, missing="not installed").items()]
        log.write_text("\n".join(lines) + "\n")
        self._handler = logging.FileHandler(log)
        self._handler.setLevel(logging.DEBUG)
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("cosi_imaging_plugin").addHandler(self._handler)

    def _stop_log(self):
        if self._handler is None:
            return
        logging.getLogger("cosi_imaging_plugin").removeHandler(self._handler)
        self._handler.close()
        self._handler = None

    def record_inputs(self, inputs):
        """Checksum the input files and write them into ``run.log``.

        Parameters
        ----------
        inputs : dict
            Role -> file or folder (every file inside a folder is listed); None values are skipped.

        Returns
        -------
        dict
            Absolute file path -> SHA-256 hex digest.
        """
        checksums, lines = {}, []
        for role, value in inputs.items():
            if value is None:
                continue
            value = Path(value)
            files = sorted(p for p in value.rglob("*") if p.is_file()) if value.is_dir() else [value]
            for file in files:
                checksum = file_checksum(file) if file.is_file() else "missing"
                checksums[str(file.resolve())] = checksum
                lines.append(f"# input {role}: {self._final_name(file)} sha256 {checksum}")
        if self._handler is not None and lines:
            self._handler.acquire()
            try:
                self._handler.stream.write("\n".join(lines) + "\n")
                self._handler.flush()
            finally:
                self._handler.release()
        return checksums

    def _final_name(self, file):
        """The absolute path `file` will have once the folder is swapped in (inputs made by the run itself)."""
        file = file.resolve()
        work = self.work.resolve()
        if file.is_relative_to(work):
            return self.path.resolve() / file.relative_to(work)
        return file

    def _swap(self):
        replace_directory(self.work, self.path)
        self.work = self.path

    def __exit__(self, exc_type, exc, tb):
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        if exc_type is not None:
            logger.debug("run ended by %s: %s", exc_type.__name__, exc)
        self._stop_log()
        if exc_type is None or (interrupted and self.keep_on_interrupt):
            if self.log:
                try:
                    write_report(self.work)
                except Exception as error:  # the results matter more than their summary page
                    logger.warning("report.html not written: %s: %s", type(error).__name__, error)
            self._swap()
        else:
            shutil.rmtree(self.work, ignore_errors=True)
        return False
