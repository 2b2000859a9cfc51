"""Faster forms of the models, for the CPU: drop-in subclasses with the paper forms' parameters and state dicts.

Each overrides only what it speeds up (see its module); tests/models/test_fast_equivalence.py proves every one equal
to its paper form (outputs, gradients, padded regions, every decoding mode) and that checkpoints load across. The
speed-ups were measured on CPUs (`python -m vqacap.bench models`); GPU recipes use the paper forms.
"""

from vqacap.models.fast.captioner import FastUpDownCaptioner
from vqacap.models.fast.vqa import FastReferenceVQA, FastUpDownVQA

__all__ = ["FastReferenceVQA", "FastUpDownCaptioner", "FastUpDownVQA"]
