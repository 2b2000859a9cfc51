"""Caption data: COCO caption-annotation files + a region-feature store -> padded training and evaluation batches.

One DataModule serves Shapes and real datasets (COCO Karpathy, Flickr): a data folder holds

    <data_dir>/regions.h5                 region-feature store (vqacap.data.store)
    <data_dir>/captions_<split>.json      COCO caption annotations {"images": [...], "annotations": [{"image_id", "caption"}]}
    <data_dir>/caption_vocab.json         vocabulary built from the training captions (written on first use if absent)

Training items are images, each batch carrying `captions_per_image` of every image's captions (the captions of
Anderson et al.'s (image, caption) pairs, with the region work done once per image); evaluation items are images, with
their scene objects for grounding when the data has scenes. The references of every split go to the model once
(`model_kwargs`). Regions of a batch are read with one batched store read in `collate`, which runs in the DataLoader
workers. The loaders, the store and the resumable training order are `RegionDataModule`'s (vqacap.data.base). The
files and fields, and how a dataset of another format becomes them (`vqacap prepare captions`): docs/new-dataset.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vqacap.data.base import SPLITS, Batch, RegionBatcher, RegionDataModule, spread
from vqacap.data.formats import FormatError, load_coco_captions
from vqacap.data.store import Regions, RegionStoreError
from vqacap.data.vocab import Vocabulary


@dataclass
class CaptionBatch(Batch):
    image_ids: torch.Tensor  # (B,) long
    regions: Regions  # features (B, K, D), boxes, mask (B, K)
    tokens: (
        torch.Tensor | None
    )  # (B, G, T) long: G captions per image, <bos> w_1 .. w_n <eos> <pad>...; None in eval
    # Evaluation batches of data with scenes (Shapes): the objects of each image, for grounding accuracy.
    objects: list[list[dict]] | None = None


def load_caption_annotations(path: str | os.PathLike) -> tuple[dict[int, list[str]], dict[int, dict]]:
    """References per image id and image records from a COCO caption-annotation file; every caption must be of an
    image listed in "images"."""
    captions, images = load_coco_captions(path)
    if images is None:
        raise FormatError(f"{path}: not a COCO caption-annotation file (needs 'images' and 'annotations')")
    records = {int(im["id"]): im for im in images}
    unlisted = [i for i in captions if int(i) not in records]
    if unlisted:
        raise FormatError(
            f"{path}: {len(unlisted)} captions refer to images absent from 'images' (first: image {unlisted[0]})"
        )
    return {int(i): refs for i, refs in captions.items()}, records


class CaptionTrainSet(Dataset):
    """One item per image; a batch carries `captions_per_image` of its captions (drawn afresh each epoch).

    Images with more captions contribute a random subset, images with fewer repeat some, so every batch is a dense
    (B, G, T) tensor and the region-side work is done once per image, not once per caption.
    """

    def __init__(
        self,
        image_ids: np.ndarray,
        tokens: torch.Tensor,
        first: np.ndarray,
        count: np.ndarray,
        regions: RegionBatcher,
        captions_per_image: int = 5,
    ) -> None:
        self.image_ids = image_ids  # (N,)
        self.tokens = tokens  # (C, T) all captions, grouped by image
        self.first = torch.from_numpy(first)  # (N,) index of each image's first caption in `tokens`
        self.count = torch.from_numpy(count)  # (N,) number of captions of each image
        self.regions = regions
        self.captions_per_image = captions_per_image

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> CaptionBatch:
        idx = torch.as_tensor(indices)
        count, g = self.count[idx], self.captions_per_image
        # Without replacement where an image has >= G captions (a random permutation's first G), with otherwise.
        keys = torch.rand(len(idx), int(count.max()))
        keys[torch.arange(keys.size(1))[None, :] >= count[:, None]] = 2.0
        permuted = keys.argsort(dim=1)
        if permuted.size(1) < g:
            permuted = torch.cat([permuted, permuted.new_zeros(len(idx), g - permuted.size(1))], 1)
        with_replacement = (torch.rand(len(idx), g) * count[:, None]).long()
        choice = torch.where(count[:, None] >= g, permuted[:, :g], with_replacement)  # (B, G)
        tokens = self.tokens[self.first[idx][:, None] + choice]  # (B, G, T)
        ids = self.image_ids[idx.numpy()]
        return CaptionBatch(torch.from_numpy(ids), self.regions(ids.tolist()), tokens)


class CaptionEvalSet(Dataset):
    """One item per image; batches carry the images' scene objects when the data has scenes."""

    def __init__(
        self, image_ids: list[int], regions: RegionBatcher, scenes: dict[int, list[dict]] | None = None
    ) -> None:
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.regions = regions
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> int:
        return int(self.image_ids[i])

    def collate(self, image_ids: list[int]) -> CaptionBatch:
        objects = None if self.scenes is None else [self.scenes.get(i, []) for i in image_ids]
        return CaptionBatch(torch.as_tensor(image_ids), self.regions(image_ids), None, objects)


class CaptionDataModule(RegionDataModule):
    """Region features + tokenized captions for training, images + references for evaluation.

    Takes `RegionDataModule`'s loader and store arguments besides its own.
    """

    def __init__(
        self,
        data_dir: str,
        annotations: dict[str, str] | None = None,
        vocab: str = "caption_vocab.json",
        min_count: int = 5,
        max_length: int = 16,
        batch_size: int = 10,
        captions_per_image: int = 5,
        eval_batch_size: int = 100,
        **kwargs,
    ) -> None:
        # batch_size: images per training batch; captions per batch = batch_size * captions_per_image
        super().__init__(data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        names = annotations or {s: f"captions_{s}.json" for s in SPLITS}
        self.annotation_paths = {s: self.data_dir / names[s] for s in names}
        self.split_files = self.annotation_paths
        self.vocab_path = self.data_dir / vocab
        self.min_count = min_count
        self.max_length = max_length
        self.captions_per_image = captions_per_image
        self.references: dict[str, dict[int, list[str]]] = {}
        self.images: dict[str, dict[int, dict]] = {}
        self._scenes: dict[str, dict[int, list[dict]] | None] = {}
        self._vocab: Vocabulary | None = None

    def build_vocabularies(self) -> None:
        if not self.vocab_path.exists():
            references, _ = load_caption_annotations(self.annotation_paths["train"])
            captions = [c for refs in references.values() for c in refs]
            Vocabulary.build(captions, min_count=self.min_count, max_length=self.max_length).save(
                self.vocab_path
            )

    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            self._vocab = Vocabulary.load(self.vocab_path)
        return self._vocab

    def model_kwargs(self) -> dict:
        """What the LightningModule needs from the data, once: the words, the feature size, the references of every
        split (caption metrics; the reward of self-critical training)."""
        references = {split: self.load_split(split) for split in SPLITS if split in self.split_files}
        return {"words": self.vocab.words, "feature_dim": self.feature_dim, "references": references}

    def load_split(self, split: str) -> dict[int, list[str]]:
        """The references of each image of the split (read once)."""
        self.check_split(split)
        if split not in self.references:
            refs, images = load_caption_annotations(self.annotation_paths[split])
            missing = [i for i in refs if i not in self.store]
            if missing:
                raise RegionStoreError(
                    f"{self.store_path}: {len(missing)} images of {self.annotation_paths[split]} are not in the store "
                    f"(first: image id {missing[0]})"
                )
            self.references[split], self.images[split] = refs, images
        return self.references[split]

    def train_set(self) -> CaptionTrainSet:
        refs = self.load_split("train")
        image_ids = np.array(sorted(refs), dtype=np.int64)
        count = np.array([len(refs[i]) for i in image_ids], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        tokens = self.vocab.encode_batch(
            [c for i in image_ids for c in refs[i]],
            add_bos_eos=True,
            field=f"{self.annotation_paths['train']}: caption",
        )
        return CaptionTrainSet(image_ids, tokens, first, count, self.batcher(), self.captions_per_image)

    def eval_set(self, split: str) -> CaptionEvalSet:
        return CaptionEvalSet(sorted(self.load_split(split)), self.batcher(), self.scenes(split))

    # -- examples, image files and scenes, for attention maps and grounding ----------------------------------------
    def example_ids(self, split: str, count: int) -> list[int]:
        """`count` image ids spread evenly over the split's sorted ids: the same images every call."""
        return spread(sorted(self.load_split(split)), count)

    def examples(self, split: str, image_ids: list[int]) -> CaptionBatch:
        """An evaluation batch of these images of the split."""
        refs = self.load_split(split)
        unknown = [i for i in image_ids if int(i) not in refs]
        if unknown:
            raise ValueError(f"{self.annotation_paths[split]}: no image with id {unknown[0]}")
        return self.eval_set(split).collate([int(i) for i in image_ids])

    def image_path(
        self, split: str, image_id: int, image_root: str | os.PathLike | None = None
    ) -> Path | None:
        """The image's COCO `file_name` under `image_root` (default: `image_dir`, else the data folder); where that
        names no file, a plain folder of images named by id (`RegionDataModule.find_image`); None when neither has one.
        """
        self.load_split(split)
        name = self.images[split].get(int(image_id), {}).get("file_name")
        named = Path(image_root or self.image_dir or self.data_dir) / name if name else None
        if named is not None and named.is_file():
            return named
        return self.find_image(image_id, image_root) or named

    def scenes(self, split: str) -> dict[int, list[dict]] | None:
        """Objects of each image id from `scenes_<split>.json` (Shapes); None for data without scenes."""
        if split not in self._scenes:
            self._scenes[split] = load_scenes(self.data_dir / f"scenes_{split}.json")
        return self._scenes[split]


def load_scenes(path: str | os.PathLike) -> dict[int, list[dict]] | None:
    """Objects per image id from a Shapes `scenes_<split>.json`; None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    return {int(scene["image_id"]): scene["objects"] for scene in json.loads(path.read_text())["scenes"]}
