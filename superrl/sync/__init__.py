"""Live weight sync from the trainer's megatron shards into the rollout engine (see weight_sync.py)."""
from superrl.sync.plan import Bucket, build_plan
from superrl.sync.weight_sync import SyncStats, WeightSync

__all__ = ["WeightSync", "SyncStats", "Bucket", "build_plan"]
