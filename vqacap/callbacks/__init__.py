"""Lightning callbacks of vqacap, configured under conf/callbacks/."""

from vqacap.callbacks.attention_maps import AttentionMaps
from vqacap.callbacks.checkpoint import ResumableCheckpoint

__all__ = ["AttentionMaps", "ResumableCheckpoint"]
