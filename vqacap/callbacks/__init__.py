"""Lightning callbacks of vqacap, configured under conf/callbacks/."""

from vqacap.callbacks.attention_maps import AttentionMaps

__all__ = ["AttentionMaps"]
