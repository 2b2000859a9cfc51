"""Lightning callbacks of vqacap, configured under conf/callbacks/."""

from vqacap.callbacks.attention_maps import AttentionMaps
from vqacap.callbacks.checkpoint import LastCheckpoint, RandomState
from vqacap.callbacks.finite import NonFiniteError, StopOnNonFinite
from vqacap.callbacks.progress import EpochProgress

__all__ = [
    "AttentionMaps",
    "EpochProgress",
    "LastCheckpoint",
    "NonFiniteError",
    "RandomState",
    "StopOnNonFinite",
]
