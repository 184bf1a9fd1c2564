"""The response engine on a Dask cluster: the response cut into shards of CDS columns, one per worker.

Needs the optional extra ``distributed`` (``pip install 'cosi-imaging-plugin[distributed]'``);
the single-process engine stays the default.
"""
from .cluster import check_memory, check_versions, connect
from .engine import ShardedEngine, ShardedResponse, sharded_engine
from .shards import ShardSpec, plan_columns

__all__ = ["ShardedEngine", "ShardedResponse", "ShardSpec", "sharded_engine", "connect", "check_versions",
           "check_memory", "plan_columns"]
