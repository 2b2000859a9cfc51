"""Attention maps of a fixed set of validation examples, after every validation epoch (never in the sanity check).

The maps are PNG files `<dirpath>/epoch_<NNN>/<id>.png` whatever the loggers, and go to the dashboards: for wandb, the
images with their most attended boxes (`boxes`: the attention weight as the box score, the word or answer as the box
caption, in pixels) under `<split>/attention_maps`, and a table (id, rendered map, text, top boxes) under
`<split>/attention_table`; for TensorBoard, the rendered maps as images. The drawing is `vqacap.draw`; the examples
come from the DataModule (`example_ids`, `examples`, `image_path`) and the module (`explain`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

from vqacap.draw import AttentionMap, attention_maps, save_maps, text_of, top_boxes_text, top_regions


class AttentionMaps(pl.Callback):
    def __init__(
        self,
        dirpath: str,
        split: str = "val",
        num_examples: int = 8,
        ids: list[int] | None = None,
        top_k: int = 3,
        image_root: str | None = None,
        every_n_epochs: int = 1,
    ) -> None:
        """`ids`: image ids (captioning) or question ids (VQA); None: `num_examples` spread over the split.
        `image_root`: the folder the images' file names are relative to (None: the data folder)."""
        super().__init__()
        self.dirpath = Path(dirpath)
        self.split = split
        self.num_examples = num_examples
        self.ids = list(ids) if ids else None
        self.top_k = top_k
        self.image_root = image_root
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or (epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        if not (hasattr(datamodule, "examples") and hasattr(pl_module, "explain")):
            rank_zero_warn(
                "AttentionMaps: the DataModule has no `examples` or the module no `explain`; no maps drawn"
            )
            return
        ids = self.ids or datamodule.example_ids(self.split, self.num_examples)
        maps = attention_maps(pl_module, datamodule, self.split, ids, self.image_root, self.top_k)
        for m in maps:  # a bad image file costs its picture, not the training run
            if m.image_problem:
                rank_zero_warn(f"AttentionMaps: {m.image_problem}; drawn on a blank canvas")
        paths = save_maps(maps, self.dirpath / f"epoch_{epoch:03d}")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, maps, paths, trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                for m in maps:
                    logger.experiment.add_image(
                        f"{self.split}/attention/{m.item['id']}",
                        np.asarray(m.figure),
                        trainer.global_step,
                        dataformats="HWC",
                    )

    def _log_wandb(self, logger: WandbLogger, maps: list[AttentionMap], paths: list[Path], step: int) -> None:
        import wandb

        table = wandb.Table(columns=["id", "attention_map", "text", "top_boxes"])
        images = []
        for m, path in zip(maps, paths):
            images.append(
                wandb.Image(m.image, caption=text_of(m.item), boxes={"attention": self.box_data(m.item)})
            )
            # The saved PNG, copied rather than encoded again: encoding dominates the cost of a map.
            table.add_data(m.item["id"], wandb.Image(str(path)), text_of(m.item), self.top_boxes(m.item))
        logger.log_metrics(
            {f"{self.split}/attention_maps": images, f"{self.split}/attention_table": table}, step=step
        )

    def box_data(self, item: dict) -> dict:
        """wandb box metadata: each word's (or the answer's) top boxes, scored by their attention weight."""
        if "words" in item:
            labels, attention = item["words"], item["attention"]  # (T, K)
        else:
            labels, attention = [item["answer"]], item["attention"].unsqueeze(0)  # (1, K)
        boxes = []
        for class_id, (label, weights) in enumerate(zip(labels, attention)):
            for i, w in top_regions(weights, self.top_k):
                x1, y1, x2, y2 = (float(c) for c in item["boxes"][i])
                boxes.append(
                    {
                        "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
                        "domain": "pixel",
                        "class_id": class_id,
                        "box_caption": f"{label} {w:.2f}",
                        "scores": {"attention": w},
                    }
                )
        return {"box_data": boxes, "class_labels": {n: f"{n}: {label}" for n, label in enumerate(labels)}}

    def top_boxes(self, item: dict) -> str:
        """Top boxes as text: per word for a caption, for the question in VQA."""
        if "words" in item:
            return " | ".join(
                f"{word}: {top_boxes_text(item['boxes'], a, self.top_k)}"
                for word, a in zip(item["words"], item["attention"])
            )
        return top_boxes_text(item["boxes"], item["attention"], self.top_k)
