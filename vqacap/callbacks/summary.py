"""The model summary printed when training starts: Lightning's layer table, without a FLOPs count.

Lightning counts FLOPs only for a module that sets `example_input_array`; the region tasks take batches of varying
shape and set none, so its summary printed a FLOPs column of zeros and "Total FLOPs: 0". `make bench` counts the
FLOPs of every model (see the docs' Performance page).
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.callbacks import ModelSummary as LightningModelSummary
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.model_summary import get_human_readable_count


class ModelSummary(LightningModelSummary):
    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, [str(v) for v in values]) for name, values in summary_data if name != "FLOPs"]
        widths = [max(len(name), *map(len, values)) for name, values in columns]
        rows = [[name for name, _ in columns], *zip(*(values for _, values in columns))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * max(map(len, lines)))
        trainable = get_human_readable_count(trainable_parameters).strip()
        frozen = get_human_readable_count(total_parameters - trainable_parameters).strip()
        lines.append(f"{trainable} trainable parameters, {frozen} frozen, {model_size:.1f} MB")
        rank_zero_info("\n".join(lines))
