"""The response engine on a Dask cluster: the response cut into shards of CDS columns, one per worker.

:func:`out_of_core_engine` runs the same shards from disk, one at a time, for a response
larger than memory on one machine (no Dask needed). A cluster needs the optional extra
``distributed`` (``pip install 'cosi-imaging-plugin[distributed]'``); the single-process
engine stays the default.
"""
from .cluster import (
    MAPPING_PLACES,
    check_mapping_on,
    check_memory,
    check_versions,
    connect,
    current_mapping_on,
    current_scheduler,
    memory_room,
    use_scheduler,
)
from .engine import ShardedEngine, ShardedResponse, place_mapping, sharded_engine
from .out_of_core import out_of_core_engine
from .shards import ShardSpec, plan_columns

__all__ = ["ShardedEngine", "ShardedResponse", "ShardSpec", "sharded_engine", "connect", "check_versions",
           "check_memory", "plan_columns", "use_scheduler", "current_scheduler",
           "out_of_core_engine", "MAPPING_PLACES", "check_mapping_on", "current_mapping_on", "memory_room",
           "place_mapping"]
