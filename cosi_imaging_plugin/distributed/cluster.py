"""Connecting to a Dask cluster and checking it before any shard is built.

Each problem is reported before the run, naming the address or the worker:
an unreachable scheduler, workers whose packages differ from the client's, and
workers with too little memory for their shard.
"""
import contextlib
import contextvars
import logging

from ..errors import CosiInputError
from ..outputs import package_versions as installed_versions

logger = logging.getLogger(__name__)

#: Packages whose versions must agree between the client and the workers: a shard is built and
#: folded by the workers' copies, and its results must be those of the client's.
CHECKED_PACKAGES = ("cosi-imaging-plugin", "numpy", "numba", "histpy", "scipy", "sparse", "dask", "distributed")


def _require_distributed():
    try:
        import distributed
    except ImportError as err:  # the optional extra
        raise CosiInputError("running the engine on a Dask cluster needs the 'distributed' extra: "
                             "pip install 'cosi-imaging-plugin[distributed]'") from err
    return distributed


def connect(client=None, timeout=10):
    """A ``distributed.Client`` from a client, a scheduler address or a cluster object.

    Parameters
    ----------
    client : distributed.Client, str or cluster
        A client (used as it is), a scheduler address (``tcp://host:8786``), or a
        cluster object with a ``scheduler_address`` (``LocalCluster``, ``SLURMCluster``).
    timeout : float
        Seconds to wait for the scheduler.

    Raises
    ------
    CosiInputError
        The scheduler cannot be reached (the message names its address).
    """
    distributed = _require_distributed()
    if isinstance(client, distributed.Client):
        return client
    address = getattr(client, "scheduler_address", client)
    if not isinstance(address, str) or not address:
        raise CosiInputError(f"scheduler must be a distributed.Client, a cluster or an address such as "
                             f"'tcp://host:8786', got {client!r}")
    try:
        out = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise CosiInputError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s: {err}") from err
    logger.info("connected to the Dask scheduler at %s (%d workers)", address, len(workers_of(out)))
    return out


#: Where the sky mapping (the CCM) of a sharded engine may live: 'auto' chooses between the other two.
MAPPING_PLACES = ("auto", "workers", "client")

_CURRENT = contextvars.ContextVar("cosi_imaging_scheduler", default=(None, "auto"))


def check_mapping_on(value, key="mapping_on"):
    """`value` if it is one of :data:`MAPPING_PLACES`, else an error naming `key`."""
    if value not in MAPPING_PLACES:
        raise CosiInputError(f"{key} must be one of {list(MAPPING_PLACES)}, got {value!r}")
    return value


@contextlib.contextmanager
def use_scheduler(scheduler, timeout=10, mapping_on="auto"):
    """Within the block, datasets built without a ``client`` are sharded over this scheduler's workers.

    Parameters
    ----------
    scheduler : distributed.Client, str, cluster or None
        As for :func:`connect`; None leaves the single-process engine (unless a
        dataset is given a scheduler of its own, which then takes `mapping_on`).
    timeout : float
        Seconds to wait for the scheduler.
    mapping_on : {'auto', 'workers', 'client'}
        Where those datasets' sky mapping lives (see
        :func:`~cosi_imaging_plugin.distributed.sharded_engine`).

    Yields
    ------
    distributed.Client or None
    """
    check_mapping_on(mapping_on)
    # without a scheduler the place is still set: a scheduler named in a configuration file takes it
    client = None if scheduler is None else connect(scheduler, timeout=timeout)
    token = _CURRENT.set((client, mapping_on))
    try:
        yield client
    finally:
        _CURRENT.reset(token)
        if client is not None and client is not scheduler:  # a client opened here is closed here
            client.close()


def current_scheduler():
    """The client set by the enclosing :func:`use_scheduler` block, or None."""
    return _CURRENT.get()[0]


def current_mapping_on():
    """The sky mapping's place set by the enclosing :func:`use_scheduler` block ('auto' outside one)."""
    return _CURRENT.get()[1]


def workers_of(client):
    """{address: info} of the workers attached to the scheduler, in address order."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    return dict(sorted(info.items()))


def package_versions():
    """Versions of :data:`CHECKED_PACKAGES` in this process (None for a package not installed)."""
    return installed_versions(CHECKED_PACKAGES)


def check_versions(client, local=None):
    """Raise if a worker's packages differ from the client's (names the worker and the package)."""
    local = package_versions() if local is None else local
    remote = client.run(package_versions)
    for worker, versions in sorted(remote.items()):
        different = {name: (local.get(name), versions.get(name)) for name in local
                     if versions.get(name) != local.get(name)}
        if different:
            listing = ", ".join(f"{name} {mine} here, {theirs} there" for name, (mine, theirs) in different.items())
            raise CosiInputError(f"Dask worker {worker} runs other package versions than this client: {listing}")


def _pause_fraction():
    import dask

    return dask.config.get("distributed.worker.memory.pause", 0.8) or 1.0


def memory_room(client):
    """{worker: bytes it may still fill} (None for a worker without a memory limit).

    A worker is given at most Dask's pause fraction of its limit
    (``distributed.worker.memory.pause``, 0.8 by default) less what it uses now.
    """
    pause = _pause_fraction()
    room = {}
    for worker, info in workers_of(client).items():
        limit = info.get("memory_limit") or 0
        used = (info.get("metrics") or {}).get("memory") or 0
        room[worker] = pause * limit - used if limit else None
    return room


def check_memory(client, needs):
    """Raise if a worker's memory limit cannot hold its shards besides what it already uses.

    A worker is given at most Dask's pause fraction of its limit
    (``distributed.worker.memory.pause``, 0.8 by default): above it the worker stops
    taking work, and at 0.95 its nanny restarts it.

    Parameters
    ----------
    needs : dict of str to int
        Bytes each worker (address) will hold.
    """
    pause = _pause_fraction()
    workers = workers_of(client)
    for worker, need in needs.items():
        info = workers[worker]
        limit = info.get("memory_limit") or 0
        used = (info.get("metrics") or {}).get("memory") or 0
        if limit and used + need > pause * limit:
            raise CosiInputError(f"Dask worker {worker} has a memory limit of {limit / 1e6:.0f} MB but its shard "
                                 f"of the response needs at least {need / 1e6:.0f} MB besides the "
                                 f"{used / 1e6:.0f} MB it uses, more than the {pause:.0%} it may fill: give the "
                                 f"workers more memory or use more workers")
