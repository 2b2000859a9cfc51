"""What every DataModule of vqacap (captions, VQA, detection) shares: batch moving, the splits, the loaders, a training
order that a resumed run continues exactly, and the examples the callbacks draw; and what the region DataModules
(captions, VQA) share besides: the feature store and its batch reading.

`TaskDataModule` is the base of all three: a subclass says which file defines each split (`split_files`), loads a
split (`load_split`), builds its datasets (`train_set`, `eval_set`, each with a `collate`), and gives examples by id
(`example_ids`, `examples`: the protocol of the attention-map and detection-image callbacks). `RegionDataModule` adds
the region store and the vocabularies (`build_vocabularies`, run once in `prepare_data`). Not here: what a dataset's
items are, or anything a model needs (`model_kwargs` of the subclasses).

Exact resume: the training loader draws from `ResumableSampler`, whose order is a function of (seed, epoch) only. The
DataModule counts the training batches handed to the model in the current epoch; Lightning stores `state_dict()` in
every checkpoint, and a resumed run (`load_state_dict`) skips exactly those batches of the interrupted epoch without
reading them.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vqacap.data.generated import run_generator
from vqacap.data.store import Regions, RegionStore
from vqacap.images import find_image

SPLITS = ("train", "val", "test")


# -- batches ---------------------------------------------------------------------------------------------------------
def apply_to_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`value` with `fn` applied to every tensor inside it (dataclasses, lists, tuples and dicts recursively); other
    values are kept as they are (None, strings, numbers)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: apply_to_tensors(getattr(value, f.name), fn) for f in fields(value)})
    if isinstance(value, (list, tuple)):
        return type(value)(apply_to_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: apply_to_tensors(v, fn) for k, v in value.items()}
    return value


class Batch:
    """Base of the dataclass batches: Lightning moves a batch with `to`, a pinned-memory loader calls `pin_memory`."""

    def to(self, device):
        return apply_to_tensors(self, lambda t: t.to(device))

    def pin_memory(self):
        return apply_to_tensors(self, torch.Tensor.pin_memory)


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


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over `items`, first included (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


# -- a resumable training order --------------------------------------------------------------------------------------
class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffle with seed + epoch, `drop_last=False`) whose next pass can start at sample `start`.

    Used on one process too: the order is then the same function of (seed, epoch), and Lightning keeps it under DDP.
    `generator` is for the DataLoader: reseeded with seed + epoch too, it gives the worker processes seeds that do not
    depend on how often the loader was iterated before, and spares the global generator the DataLoader's draw.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self.generator = torch.Generator()
        self.start = 0  # samples of this rank's shard to skip, once
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0  # a start belongs to the epoch it was set for
        super().set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        return itertools.islice(super().__iter__(), start, None)


def loader_options(
    num_workers: int, pin_memory: bool, persistent_workers: bool, multiprocessing_context: str | None = None
) -> dict[str, Any]:
    """DataLoader options shared by a DataModule's loaders; those about worker processes only when there are some."""
    return {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": persistent_workers and num_workers > 0,
        "multiprocessing_context": multiprocessing_context if num_workers > 0 else None,
    }


# -- the DataModules -------------------------------------------------------------------------------------------------
class TaskDataModule(pl.LightningDataModule):
    """Splits, loaders and the resumable training order of every vqacap DataModule; see the module docstring for what
    a subclass provides.

    batch_size / eval_batch_size: items per training / evaluation batch. test_split: the split `trainer.test` reads.
    generator: a data generator node (Shapes) run with root=data_dir in prepare_data, or None for prepared data.
    seed: seed of the training order (conf: the run's `seed`). resumable_order: draw training batches from
    `ResumableSampler` (off: a plain shuffled loader, whose order a resumed run does not continue). image_dir,
    image_pattern: where the attention maps find an image the annotations name no file for (`find_image`): a plain
    folder (default: the data folder, then its images/) of files `<image_id>.<ext>`, or named by the pattern.
    """

    split_files: dict[str, Path]  # the file that defines each configured split

    def __init__(
        self,
        data_dir: str,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        multiprocessing_context: str | None = None,
        test_split: str = "test",
        generator: dict | None = None,
        seed: int = 0,
        resumable_order: bool = True,
        image_dir: str | None = None,
        image_pattern: str | None = None,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.loader_options = loader_options(
            num_workers, pin_memory, persistent_workers, multiprocessing_context
        )
        self.test_split = test_split
        self.generator = generator
        self.seed = seed
        self.resumable_order = resumable_order
        self.image_dir = Path(image_dir) if image_dir else None
        if image_pattern:
            try:
                image_pattern.format(image_id=0)
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(
                    f"image_pattern {image_pattern!r}: not a format string of {{image_id}} ({err!r})"
                ) from None
        self.image_pattern = image_pattern
        self._sampler: ResumableSampler | None = None
        self._position = {"epoch": 0, "batches": 0}  # training batches of an epoch handed to the model
        self._resume: dict[str, int] | None = None

    # -- what a subclass provides ------------------------------------------------------------------------------------
    def load_split(self, split: str) -> Any:
        raise NotImplementedError

    def train_set(self) -> Dataset:
        raise NotImplementedError

    def eval_set(self, split: str) -> Dataset:
        raise NotImplementedError

    def example_ids(self, split: str, count: int) -> list[int]:
        """`count` ids spread evenly over the split: the same examples every call."""
        raise NotImplementedError

    def examples(self, split: str, ids: list[int]) -> Batch:
        """An evaluation batch of the examples of the split with these ids."""
        raise NotImplementedError

    # -- preparation (once, on one process) --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.generator is not None:
            run_generator(self.generator, self.data_dir)

    # -- per process -------------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        splits = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": (self.test_split,),
            "predict": (self.test_split,),
        }
        for split in splits.get(stage, SPLITS) if stage else SPLITS:
            if split in self.split_files:
                self.load_split(split)

    def image_folders(self, image_root: str | os.PathLike | None = None) -> list[Path]:
        """Where images are looked for: `image_root` (a command's or callback's), else `image_dir`, else the data
        folder and its images/ (where `vqacap prepare questions --images` links them)."""
        if image_root or self.image_dir:
            return [Path(image_root or self.image_dir)]
        return [self.data_dir, self.data_dir / "images"]

    def find_image(self, image_id: int, image_root: str | os.PathLike | None = None) -> Path | None:
        """The file of an image named by its id (or `image_pattern`) in a plain folder; None when there is none."""
        for folder in self.image_folders(image_root):
            if found := find_image(folder, image_id, self.image_pattern):
                return found
        return None

    def check_split(self, split: str) -> None:
        if split not in self.split_files:
            raise ValueError(f"no file configured for split {split!r} (have {sorted(self.split_files)})")

    # -- loaders -----------------------------------------------------------------------------------------------------
    def loader(self, dataset: Dataset, batch_size: int, sampler=None, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, collate_fn=dataset.collate,
            drop_last=False, generator=getattr(sampler, "generator", None), **self.loader_options,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_set()
        trainer = self.trainer
        if not self.resumable_order or trainer is None or trainer.overfit_batches:
            # Lightning replaces a shuffled loader's sampler when overfitting a few batches.
            return self.loader(dataset, self.batch_size, shuffle=True)
        self._sampler = ResumableSampler(dataset, trainer.world_size, trainer.global_rank, self.seed)
        position, self._resume = self._resume, None
        if position is not None:
            self._sampler.set_epoch(position["epoch"])
            self._sampler.start = position["batches"] * self.batch_size
        self._position = dict(position) if position else {"epoch": self._sampler.epoch, "batches": 0}
        return self.loader(dataset, self.batch_size, sampler=self._sampler)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.eval_set("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.eval_set(self.test_split), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # -- position in the training order, saved in checkpoints --------------------------------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Lightning calls this for each batch a training step is about to get (not for batches prefetched by workers).
        if self._sampler is not None and self.trainer is not None and self.trainer.training:
            if self._position["epoch"] != self._sampler.epoch:
                self._position = {"epoch": self._sampler.epoch, "batches": 0}
            self._position["batches"] += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        if self._sampler is None:
            return {}
        epoch = self._sampler.epoch
        done = self._position["batches"] if self._position["epoch"] == epoch else 0
        if self.trainer is not None and done >= self.trainer.num_training_batches:
            return {"epoch": epoch + 1, "batches": 0}
        return {"epoch": epoch, "batches": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "epoch" in state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
            # The loader built from this position does resume: Lightning's warning that it cannot is wrong here.
            warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")


class RegionDataModule(TaskDataModule):
    """Loaders of region-feature datasets (the region store `store` in data_dir); takes `TaskDataModule`'s loader and
    order arguments besides its own.

    zero_regions: zero every region's features and box (the "blind" control). pad_regions_to: pad every batch to this
    many regions (None: to the largest count in the batch).
    """

    def __init__(
        self,
        data_dir: str,
        store: str = "regions.h5",
        batch_size: int = 10,
        eval_batch_size: int = 100,
        zero_regions: bool = False,
        pad_regions_to: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        self.store_path = self.data_dir / store
        self.zero_regions = zero_regions
        self.pad_regions_to = pad_regions_to
        self._store: RegionStore | None = None

    def build_vocabularies(self) -> None:
        """Write the vocabularies a split's tensors need, when absent (once, on one process)."""

    def prepare_data(self) -> None:
        super().prepare_data()
        self.build_vocabularies()

    @property
    def store(self) -> RegionStore:
        if self._store is None:
            self._store = RegionStore(self.store_path)
        return self._store

    @property
    def feature_dim(self) -> int:
        return self.store.feature_dim

    def batcher(self) -> RegionBatcher:
        return RegionBatcher(self.store, self.zero_regions, self.pad_regions_to)
