"""Lightning callbacks of vqacap, configured under conf/callbacks/."""

from vqacap.callbacks.attention_maps import AttentionMaps
from vqacap.callbacks.checkpoint import LastCheckpoint, RandomState
from vqacap.callbacks.finite import NonFiniteError, StopOnNonFinite
from vqacap.callbacks.progress import EpochProgress, EpochProgressBar
from vqacap.callbacks.summary import ModelSummary

__all__ = [
    "AttentionMaps",
    "EpochProgress",
    "EpochProgressBar",
    "LastCheckpoint",
    "ModelSummary",
    "NonFiniteError",
    "RandomState",
    "StopOnNonFinite",
]
