"""The real Hydra configs composed as `python -m vqacap.train` composes them, and the overrides that shrink them."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vqacap.train import CONFIG_DIR

# A Shapes dataset small enough for seconds-long runs, and models to match.
TINY_SHAPES = {"train": 60, "val": 12, "test": 12}
TINY_FEATURE_DIM = 64
TINY_OVERRIDES = [
    f"data.generator.sizes={{train:{TINY_SHAPES['train']},val:{TINY_SHAPES['val']},test:{TINY_SHAPES['test']}}}",
    f"data.generator.feature_dim={TINY_FEATURE_DIM}",
    "data.batch_size=4",
    "data.eval_batch_size=12",
    "trainer.max_epochs=1",
    "logger=csv",
    "callbacks.attention_maps.num_examples=2",  # drawing maps costs ~0.5 s per validation epoch at the default 8
]
# Runs that keep checkpoints go without loggers: train.py's log_hyperparams resolves the whole composed config, whose
# hydra node (hydra.job.num) is unset under the compose API.
NO_LOGGER = [o for o in TINY_OVERRIDES if not o.startswith("logger=")]
NO_LOGGER += ["~logger", "callbacks.learning_rate_monitor=null"]
TINY_CAPTIONER = ["model.net.embed_dim=32", "model.net.hidden_dim=48", "model.net.attention_dim=24"]
# Overfit two batches, one logged loss per step (add the experiment and its number of epochs).
OVERFIT = [
    "debug=overfit",
    "trainer.overfit_batches=2",
    "trainer.log_every_n_steps=1",
    "model.optimizer.lr=0.01",
    "test=false",
]

# Two training batches and one validation batch, no maps, no test: a run that leaves a checkpoint to read.
SHORT = [
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "callbacks.attention_maps=null",
    "test=false",
]


def tiny_detector(pool_size: int, rpn_post_nms_top_n_test: int) -> list[str]:
    """Overrides that shrink detector_shapes to 64-pixel images and a handful of RoIs."""
    return [
        "model.detector.width=8",
        "model.detector.min_size=64",
        "model.detector.max_size=64",
        "model.detector.anchor_sizes=[16,32]",
        "model.detector.rpn_channels=16",
        f"model.detector.pool_size={pool_size}",
        "model.detector.box_batch_size_per_image=16",
        f"model.detector.rpn_post_nms_top_n_test={rpn_post_nms_top_n_test}",
    ]


def compose_train(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """Compose conf/train.yaml exactly as `python -m vqacap.train` would, with outputs under output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.data_dir={data_dir}", *overrides], return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # a real run's config has no hydra node either
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg
