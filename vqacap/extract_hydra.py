"""`vqacap-extract` (`python -m vqacap.extract_hydra`): `vqacap extract --detector` composed by Hydra, so that a
launcher sends it where training goes: `vqacap-extract -m hydra/launcher=slurm trainer=ddp trainer.devices=8
trainer.num_nodes=4 images=[...] detector=... out=...` (conf/extract.yaml). Every process extracts its own shard and
the first merges them (vqacap.extraction); a requeued or rerun job extracts only what no shard holds yet.
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vqacap.configs import CONFIG_DIR
from vqacap.dispatch import end_distributed
from vqacap.errors import reporting
from vqacap.runs import register_resolvers

register_resolvers()  # conf/hydra/default.yaml's run folder


def run(cfg: DictConfig) -> int:
    from vqacap.data.pixels import RegionChoice
    from vqacap.extraction.loading import load_bottom_up
    from vqacap.extraction.module import extract_folders

    trainer = cfg.trainer
    result = extract_folders(
        list(cfg.images) if OmegaConf.is_list(cfg.images) else [cfg.images],
        load_bottom_up(cfg.detector, "cpu", cfg.prototxt, cfg.classes, cfg.attributes),
        cfg.out,
        RegionChoice(**cfg.regions),
        dtype=cfg.dtype,
        batch_size=cfg.batch_size,
        workers=cfg.num_workers,
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        num_nodes=trainer.get("num_nodes", 1),
        precision=str(trainer.precision),
        progress=cfg.progress,
    )
    if result.rank == 0:
        print(
            f"{cfg.out}: extracted {result.extracted}, skipped {result.skipped} already extracted, "
            f"merged {result.merged} from shards, problems {len(result.problems)}"
        )
        for problem in result.problems:
            print(f"  {problem}")
    return 0 if result.extracted + result.skipped > 0 else 1


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="extract")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        status = reporting(lambda: run(cfg))
    finally:
        end_distributed()
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
