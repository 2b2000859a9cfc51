"""Region tensors as a batch carries them: features padded to the most regions in the batch, and their mask."""

from __future__ import annotations

import torch


def padded_regions(b: int = 3, k: int = 7, d: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Random regions (b, k, d) and a mask (b, k): image 0 has all k regions, image 1 four, image 2 two."""
    torch.manual_seed(1)
    regions = torch.randn(b, k, d)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 2:] = False
    return regions, mask
