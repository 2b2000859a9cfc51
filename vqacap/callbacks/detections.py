"""Detections of a fixed set of validation images, after every validation epoch (never in the sanity check).

Each image's confident detections (score >= `score_threshold`, at most `max_boxes`) are drawn with their class and
most probable attributes ("red striped circle 0.97"), as PNG files `<dirpath>/epoch_<NNN>/<image_id>.png` whatever the
loggers, and for wandb as images with boxes (the class as the box class, the label as its caption, the score as the box
score) under `<split>/detections`. The examples come from the DataModule (`example_ids`, `examples`), the detections
from the module's detector (`module.net`, eval mode).
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw
from pytorch_lightning.loggers import WandbLogger
from torchvision.transforms.functional import to_pil_image

from vqacap.draw import label_font

COLOUR = (255, 64, 32)


def describe(
    detection: dict, classes: list[str], attributes: list[str], top_attributes: int = 2
) -> list[dict]:
    """One record per detection: box (x1, y1, x2, y2), class id, score and a label "<attributes> <class> <score>".

    The attributes shown are the `top_attributes` most probable ones that beat "no attribute"."""
    records = []
    for box, label, score, attrs in zip(
        detection["boxes"].tolist(),
        detection["labels"].tolist(),
        detection["scores"].tolist(),
        detection["attribute_probs"],
    ):
        probs, index = attrs[1:].topk(min(top_attributes, len(attrs) - 1))
        named = [attributes[i + 1] for p, i in zip(probs.tolist(), index.tolist()) if p > float(attrs[0])]
        text = " ".join([*named, classes[label], f"{score:.2f}"])
        records.append({"box": box, "class_id": label, "score": score, "label": text})
    return records


def draw(image: Image.Image, records: list[dict]) -> Image.Image:
    out = image.copy()
    pen = ImageDraw.Draw(out)
    font = label_font(10)
    for r in records:
        x1, y1, x2, y2 = r["box"]
        pen.rectangle([x1, y1, x2, y2], outline=COLOUR, width=1)
        pen.text((x1 + 1, max(0, y1 - 11)), r["label"], fill=COLOUR, font=font)
    return out


class DetectionImages(pl.Callback):
    def __init__(
        self,
        dirpath: str,
        split: str = "val",
        num_examples: int = 4,
        score_threshold: float = 0.5,
        max_boxes: int = 20,
        every_n_epochs: int = 1,
        ids: list[int] | None = None,
    ) -> None:
        """`ids`: image ids of the split; None: `num_examples` spread over the split."""
        super().__init__()
        self.dirpath = Path(dirpath)
        self.split = split
        self.num_examples = num_examples
        self.ids = list(ids) if ids else None
        self.score_threshold = score_threshold
        self.max_boxes = max_boxes
        self.every_n_epochs = every_n_epochs

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or (epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        ids = self.ids or datamodule.example_ids(self.split, self.num_examples)
        batch = datamodule.examples(self.split, ids).to(pl_module.device)
        net = pl_module.net
        training = net.training
        net.eval()
        detections = net(batch.images)
        net.train(training)
        folder = self.dirpath / f"epoch_{epoch:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        logged = []
        for image_id, image, det in zip(batch.image_ids.tolist(), batch.images, detections):
            keep = det["scores"] >= self.score_threshold
            det = {k: v[keep][: self.max_boxes].cpu() for k, v in det.items()}
            records = describe(det, net.classes, net.attributes)
            picture = to_pil_image(image.cpu())
            draw(picture, records).save(folder / f"{image_id}.png")
            logged.append((image_id, picture, records))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, logged, net.classes, trainer.global_step)

    def _log_wandb(self, logger: WandbLogger, logged: list, classes: list[str], step: int) -> None:
        import wandb

        class_labels = dict(enumerate(classes))
        images = []
        for image_id, picture, records in logged:
            boxes = [
                {
                    "position": {
                        "minX": r["box"][0],
                        "minY": r["box"][1],
                        "maxX": r["box"][2],
                        "maxY": r["box"][3],
                    },
                    "domain": "pixel",
                    "class_id": r["class_id"],
                    "box_caption": r["label"],
                    "scores": {"score": r["score"]},
                }
                for r in records
            ]
            boxes_arg = {"detections": {"box_data": boxes, "class_labels": class_labels}}
            images.append(wandb.Image(picture, caption=str(image_id), boxes=boxes_arg))
        logger.log_metrics({f"{self.split}/detections": images}, step=step)
