"""Large arrays handed to worker processes once, through shared memory, instead of one pickled copy each.

:class:`SharedPickle` pickles an object (the Gibbs sampler with its engine) with every numpy array
of at least ``min_bytes`` copied once into a ``multiprocessing.shared_memory`` block and pickled as
that block's name: the pickle itself stays small, and every worker that loads it maps the same pages
(the response, the CCM, the data) instead of holding a copy. The arrays are read by the workers'
kernels and never written, so sharing them changes no draw. Scratch buffers that an engine writes
into (its kernels' row buffers) are emptied in the loaded copy so that each worker makes its own.

The pickle itself goes to shared memory too, so that a worker's start-up arguments are its block's
name (:attr:`SharedPickle.handle`): a spawned worker that dies while it starts (e.g. a script that
re-runs LIRA at import, without ``if __name__ == "__main__":``) then cannot leave the parent blocked
writing a large pickle into the pipe that the dead worker no longer reads.

Where shared memory cannot be had (e.g. a small ``/dev/shm``), :class:`SharedPickle` falls back
to an ordinary pickle and says so.
"""
import io
import logging
import os
import pickle
import shutil
from multiprocessing import shared_memory

import numpy as np

logger = logging.getLogger(__name__)

#: Arrays below this size are pickled as they are.
MIN_SHARED_BYTES = 1 << 20

#: Where POSIX shared memory lives on Linux (a tmpfs: often small in containers).
SHM_DIR = "/dev/shm"

#: The blocks a worker has attached (kept open for the life of the process: its arrays live in them).
_ATTACHED = []


def _attach(name, shape, dtype):
    """An array on the shared block `name` (the unpickling side)."""
    block = shared_memory.SharedMemory(name=name)
    _ATTACHED.append(block)
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=block.buf)


class _Pickler(pickle.Pickler):
    def __init__(self, file, owner):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.owner = owner

    def reducer_override(self, obj):
        if type(obj) is np.ndarray and obj.nbytes >= self.owner.min_bytes and not obj.dtype.hasobject:
            return _attach, self.owner.share(obj)
        return NotImplemented


class SharedPickle:
    """An object pickled with its large arrays in shared memory.

    Parameters
    ----------
    obj : object
        What the workers need (its arrays are read, never written, in the workers).
    min_bytes : int
        Arrays of at least this many bytes go to shared memory.

    Attributes
    ----------
    payload : bytes
        The pickle; :func:`load` in any process of this machine gives the object back while this
        ``SharedPickle`` is open.
    handle : tuple or None
        The pickle's own shared block, a few bytes that :func:`load` also takes (None where shared
        memory could not be had: pass `payload` then).
    shared_bytes : int
        Bytes placed in shared memory (the pickle's block included).

    Notes
    -----
    Use it as a context manager, or call :meth:`close`: the blocks are released when the workers
    are done.
    """

    def __init__(self, obj, min_bytes=MIN_SHARED_BYTES):
        self.min_bytes = int(min_bytes)
        self._blocks = {}
        self.shared_bytes = 0
        self.handle = None
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, self).dump(obj)
            self.payload = buffer.getvalue()
            self.handle = self.share(np.frombuffer(self.payload, dtype=np.uint8))
        except OSError as error:  # no room for shared memory: every worker gets its own copy
            self.close()
            self.shared_bytes = 0
            self.handle = None
            logger.warning("shared memory unavailable (%s): each worker process receives its own copy", error)
            self.payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)

    def share(self, array):
        """Arguments of :func:`_attach` for `array`, copied once to its own block (an array met twice
        shares one block)."""
        key = id(array)
        if key not in self._blocks:
            # a block larger than the tmpfs's free room is created all the same (sparse) and the copy
            # into it dies with SIGBUS: refuse it first, so the caller falls back to a plain pickle
            free = shutil.disk_usage(SHM_DIR).free if os.path.isdir(SHM_DIR) else None
            if free is not None and free < array.nbytes:
                raise OSError(f"{SHM_DIR} has {free / 1e6:.0f} MB free, {array.nbytes / 1e6:.0f} MB needed")
            block = shared_memory.SharedMemory(create=True, size=max(array.nbytes, 1))
            np.ndarray(array.shape, dtype=array.dtype, buffer=block.buf)[...] = array
            # the array is kept referenced so that its id names it until the pickle is done
            self._blocks[key] = (block, array)
            self.shared_bytes += array.nbytes
        return self._blocks[key][0].name, array.shape, array.dtype.str

    def close(self):
        """Release the shared blocks (the workers must be done with them)."""
        for block, _ in self._blocks.values():
            block.close()
            block.unlink()
        self._blocks = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load(payload):
    """The object of a :class:`SharedPickle`, its scratch buffers emptied.

    Parameters
    ----------
    payload : bytes or tuple
        Its :attr:`~SharedPickle.payload`, or its :attr:`~SharedPickle.handle`.
    """
    if isinstance(payload, tuple):  # the pickle's own block: copied out, then let go
        name, shape, dtype = payload
        block = shared_memory.SharedMemory(name=name)
        try:
            payload = np.ndarray(shape, dtype=np.dtype(dtype), buffer=block.buf).tobytes()
        finally:
            block.close()
    obj = pickle.loads(payload)
    engine = getattr(obj, "engine", None)
    if engine is not None and hasattr(engine, "_row_buffers"):
        engine._row_buffers = {}  # each process writes its own
    return obj
