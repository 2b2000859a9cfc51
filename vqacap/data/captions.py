"""Caption data: COCO caption-annotation files + a region-feature store -> padded training and evaluation batches.

One DataModule serves Shapes and real datasets (COCO Karpathy, Flickr): a data folder holds

    <data_dir>/regions.h5                 region-feature store (vqacap.data.store)
    <data_dir>/captions_<split>.json      COCO caption annotations {"images": [...], "annotations": [{"image_id", "caption"}]}
    <data_dir>/caption_vocab.json         vocabulary built from the training captions (written on first use if absent)

Training items are (image, caption) pairs, one per caption as in Anderson et al.; evaluation items are images, and the
references come from the annotation file. Regions of a batch are read with one batched store read in `collate`, which runs
in the DataLoader workers.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vqacap.data.store import Regions, RegionStore, RegionStoreError
from vqacap.data.vocab import Vocabulary

SPLITS = ("train", "val", "test")


@dataclass
class CaptionBatch:
    image_ids: torch.Tensor  # (B,) long
    regions: Regions  # features (B, K, D), boxes, mask (B, K)
    tokens: (
        torch.Tensor | None
    )  # (B, G, T) long: G captions per image, <bos> w_1 .. w_n <eos> <pad>...; None in eval

    def to(self, device) -> CaptionBatch:  # Lightning moves batches through this method
        r = self.regions
        regions = Regions(
            r.features.to(device), r.boxes.to(device), r.mask.to(device), r.image_size.to(device)
        )
        tokens = None if self.tokens is None else self.tokens.to(device)
        return CaptionBatch(self.image_ids.to(device), regions, tokens)

    def pin_memory(self) -> CaptionBatch:
        r = self.regions
        regions = Regions(
            r.features.pin_memory(), r.boxes.pin_memory(), r.mask.pin_memory(), r.image_size.pin_memory()
        )
        return CaptionBatch(
            self.image_ids.pin_memory(), regions, None if self.tokens is None else self.tokens.pin_memory()
        )


def load_caption_annotations(path: str | os.PathLike) -> tuple[dict[int, list[str]], dict[int, dict]]:
    """References per image id and image records from a COCO caption-annotation file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: caption annotation file not found") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ValueError(f"{path}: not a COCO caption-annotation file (needs 'images' and 'annotations')")
    images = {int(im["id"]): im for im in data["images"]}
    references: dict[int, list[str]] = defaultdict(list)
    for n, ann in enumerate(data["annotations"]):
        if "caption" not in ann or "image_id" not in ann:
            raise ValueError(
                f"{path}: annotation {n} lacks 'caption' or 'image_id' (is this a caption file?)"
            )
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise ValueError(
                f"{path}: annotation {ann.get('id', n)} refers to image {image_id}, absent from 'images'"
            )
        references[image_id].append(ann["caption"])
    return dict(references), images


class RegionBatcher:
    """Reads the regions of a batch of image ids; picklable, so it runs inside DataLoader workers (fork or spawn)."""

    def __init__(
        self, store: RegionStore, zero_regions: bool = False, pad_regions_to: int | None = None
    ) -> None:
        self.store = store
        self.zero_regions = zero_regions
        self.pad_regions_to = pad_regions_to

    def __call__(self, image_ids: list[int]) -> Regions:
        regions = self.store.read_batch(image_ids, pad_to=self.pad_regions_to)
        if self.zero_regions:
            # "Blind" control: the model keeps the region count but learns nothing from content or geometry.
            regions.features.zero_()
            regions.boxes.zero_()
        return regions


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
    def __init__(self, image_ids: list[int], regions: RegionBatcher) -> None:
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.regions = regions

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> int:
        return int(self.image_ids[i])

    def collate(self, image_ids: list[int]) -> CaptionBatch:
        return CaptionBatch(torch.as_tensor(image_ids), self.regions(image_ids), None)


class CaptionDataModule(pl.LightningDataModule):
    """Region features + tokenized captions for training, images + references for evaluation."""

    def __init__(
        self,
        data_dir: str,
        store: str = "regions.h5",
        annotations: dict[str, str] | None = None,
        vocab: str = "caption_vocab.json",
        min_count: int = 5,
        max_length: int = 16,
        batch_size: int = 10,
        captions_per_image: int = 5,
        eval_batch_size: int = 100,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        multiprocessing_context: str | None = None,
        zero_regions: bool = False,
        pad_regions_to: int | None = None,
        generator: dict | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.store_path = self.data_dir / store
        names = annotations or {s: f"captions_{s}.json" for s in SPLITS}
        self.annotation_paths = {s: self.data_dir / names[s] for s in names}
        self.vocab_path = self.data_dir / vocab
        self.min_count = min_count
        self.max_length = max_length
        self.batch_size = (
            batch_size  # images per training batch; captions per batch = batch_size * captions_per_image
        )
        self.captions_per_image = captions_per_image
        self.eval_batch_size = eval_batch_size
        self.loader_options = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
            "multiprocessing_context": multiprocessing_context if num_workers > 0 else None,
        }
        self.zero_regions = zero_regions
        self.pad_regions_to = pad_regions_to
        self.generator = (
            generator  # a data generator node (Shapes) run in prepare_data, or None for prepared data
        )
        self.references: dict[str, dict[int, list[str]]] = {}
        self.images: dict[str, dict[int, dict]] = {}
        self._scenes: dict[str, dict[int, list[dict]] | None] = {}
        self._vocab: Vocabulary | None = None
        self._store: RegionStore | None = None

    # -- preparation (once, on one process) --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.generator is not None:
            from hydra.utils import instantiate

            instantiate(self.generator, root=str(self.data_dir))
        if not self.vocab_path.exists():
            references, _ = load_caption_annotations(self.annotation_paths["train"])
            captions = [c for refs in references.values() for c in refs]
            Vocabulary.build(captions, min_count=self.min_count, max_length=self.max_length).save(
                self.vocab_path
            )

    # -- per process -----------------------------------------------------------------------------------------------
    @property
    def vocab(self) -> Vocabulary:
        if self._vocab is None:
            self._vocab = Vocabulary.load(self.vocab_path)
        return self._vocab

    @property
    def store(self) -> RegionStore:
        if self._store is None:
            self._store = RegionStore(self.store_path)
        return self._store

    @property
    def feature_dim(self) -> int:
        return self.store.feature_dim

    def model_kwargs(self) -> dict:
        """What the LightningModule needs to know about the data to build its model."""
        return {"words": self.vocab.words, "feature_dim": self.feature_dim}

    def _split(self, split: str) -> dict[int, list[str]]:
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

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, SPLITS) if stage else SPLITS:
            if split in self.annotation_paths:
                self._split(split)

    def _batcher(self) -> RegionBatcher:
        return RegionBatcher(self.store, self.zero_regions, self.pad_regions_to)

    def train_set(self) -> CaptionTrainSet:
        refs = self._split("train")
        image_ids = np.array(sorted(refs), dtype=np.int64)
        count = np.array([len(refs[i]) for i in image_ids], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        tokens = self.vocab.encode_batch(
            [c for i in image_ids for c in refs[i]],
            add_bos_eos=True,
            field=f"{self.annotation_paths['train']}: caption",
        )
        return CaptionTrainSet(image_ids, tokens, first, count, self._batcher(), self.captions_per_image)

    def eval_set(self, split: str) -> CaptionEvalSet:
        return CaptionEvalSet(sorted(self._split(split)), self._batcher())

    def _loader(self, dataset, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=dataset.collate,
            drop_last=False,
            **self.loader_options,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set(), self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set("val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set("test"), self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- examples, image files and scenes, for attention maps and grounding ----------------------------------------
    def example_ids(self, split: str, count: int) -> list[int]:
        """`count` image ids spread evenly over the split's sorted ids: the same images every call."""
        return spread(sorted(self._split(split)), count)

    def examples(self, split: str, image_ids: list[int]) -> CaptionBatch:
        """An evaluation batch of these images of the split."""
        refs = self._split(split)
        unknown = [i for i in image_ids if int(i) not in refs]
        if unknown:
            raise ValueError(f"{self.annotation_paths[split]}: no image with id {unknown[0]}")
        return self.eval_set(split).collate([int(i) for i in image_ids])

    def image_path(
        self, split: str, image_id: int, image_root: str | os.PathLike | None = None
    ) -> Path | None:
        """The image's COCO `file_name` under `image_root` (default: the data folder); None when the file has none."""
        self._split(split)
        name = self.images[split].get(int(image_id), {}).get("file_name")
        return Path(image_root or self.data_dir) / name if name else None

    def scenes(self, split: str) -> dict[int, list[dict]] | None:
        """Objects of each image id from `scenes_<split>.json` (Shapes); None for data without scenes."""
        if split not in self._scenes:
            self._scenes[split] = load_scenes(self.data_dir / f"scenes_{split}.json")
        return self._scenes[split]


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over `items`, first included (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def load_scenes(path: str | os.PathLike) -> dict[int, list[dict]] | None:
    """Objects per image id from a Shapes `scenes_<split>.json`; None when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    return {int(scene["image_id"]): scene["objects"] for scene in json.loads(path.read_text())["scenes"]}
