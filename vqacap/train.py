"""Train and test one experiment composed by Hydra: `python -m vqacap.train experiment=... [overrides]`.

The DataModule, LightningModule, loggers, callbacks and Trainer are all `_target_` nodes of `conf/train.yaml`. The final
test metrics are written to `<run folder>/test_metrics.json`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vqacap.checkpoints import find_checkpoint, load_weights

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _instantiate_all(node: DictConfig | None) -> list:
    return [instantiate(v) for v in (node or {}).values() if v is not None and "_target_" in v]


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the test metrics."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    module = instantiate(cfg.model, **datamodule.model_kwargs())
    if cfg.get("init_from"):
        ckpt = find_checkpoint(cfg.init_from, cfg.paths.log_dir, cfg.task_name)
        load_weights(module, ckpt)
        print(f"initialised from {ckpt}")
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, weights_only=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        if trainer.is_global_zero:
            out = Path(cfg.paths.output_dir) / "test_metrics.json"
            out.write_text(json.dumps({"experiment": cfg.get("name"), "checkpoint": ckpt, "metrics": metrics}, indent=2))
            print(_table(metrics))
            print(f"test metrics written to {out}")
    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    return metrics


def _table(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ---------"]
    lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_SILENT", "true")
    metrics = run(cfg)
    target = cfg.get("optimized_metric")
    return metrics.get(target) if target else None


if __name__ == "__main__":
    main()
