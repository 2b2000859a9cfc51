"""Train and test one experiment composed by Hydra: `python -m vqacap.train experiment=... [overrides]`.

The DataModule, LightningModule, loggers, callbacks and Trainer are all `_target_` nodes of `conf/train.yaml`. The final
test metrics, with the validation score of the tested checkpoint (`model.monitor`, what sweeps select on), are written to
`<run folder>/test_metrics.json`.

Two settings are handled here rather than by a `_target_`: `model.compile` (`+model.compile=true`, or a mapping of
`torch.compile` options) compiles the pure nn.Module in place, and a SLURM job that was requeued (preempted, or timed out
under `hydra/launcher=slurm`) resumes from the newest `last.ckpt` of its own run folder.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.utilities import rank_zero_only

from vqacap.checkpoints import find_checkpoint
from vqacap.configs import CONFIG_DIR, check_overrides, check_types
from vqacap.errors import UserError, reporting
from vqacap.lightning.loading import load_weights
from vqacap.runs import check_run_folder, gpu_available_for, register_resolvers, resumed_run_folder

register_resolvers()


def _instantiate_all(node: DictConfig | None) -> list:
    return [instantiate(v) for v in (node or {}).values() if v is not None and "_target_" in v]


def _callbacks(cfg: DictConfig) -> list:
    """The configured callbacks, less the progress bar when `trainer.enable_progress_bar` is false (Lightning refuses a
    progress bar callback beside it)."""
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


@rank_zero_only
def _say(text: str) -> None:
    print(text, flush=True)


def run(cfg: DictConfig) -> dict[str, float]:
    """Fit, then test the best checkpoint; returns the test metrics."""
    check_types(cfg)  # a wrong-typed option stops here, not minutes later in Lightning's fit loop
    check_run_folder(cfg.paths.output_dir, cfg.get("ckpt_path"))
    _say(f"run folder: {cfg.paths.output_dir} (train.log, checkpoints/, attention/, test_metrics.json)")
    _continue_wandb_run(cfg)
    with _wandb_data_in(Path(cfg.paths.output_dir) / "wandb"):
        return _run(cfg)


@contextmanager
def _wandb_data_in(folder: Path):
    """wandb stages the files of logged tables (artifacts) under WANDB_DATA_DIR, by default ~/.local/share/wandb, where
    an offline run's `wandb sync` later reads them. Unless the user set it, it is the run folder's wandb/ for the run, so
    a run folder holds everything it logged (and can be synced from another machine)."""
    if "WANDB_DATA_DIR" in os.environ:
        yield
        return
    os.environ["WANDB_DATA_DIR"] = str(folder)
    try:
        yield
    finally:
        os.environ.pop("WANDB_DATA_DIR", None)


class RunConfigError(UserError):
    """A run that cannot do what it was asked; the message is one line saying what to set."""


def _run(cfg: DictConfig) -> dict[str, float]:
    if not cfg.get("train", True) and cfg.get("test", True) and not cfg.get("ckpt_path"):
        # Testing the freshly initialised weights would write test_metrics.json for a model that learnt nothing.
        raise RunConfigError("train=false tests a trained model: give ckpt_path=<checkpoint file>")
    _check_accelerator(cfg)
    _announce_generated_data(cfg)
    if cfg.paths.get("corenlp"):
        # Where SPICE finds CoreNLP (vqacap.metrics.captions.spice), in this process and those it starts.
        os.environ["VQACAP_CORENLP"] = str(cfg.paths.corenlp)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        compile_options = model_cfg.pop("compile", None)
    module = instantiate(model_cfg, **datamodule.model_kwargs())
    _compile(module, compile_options)
    if cfg.get("init_from"):
        ckpt = find_checkpoint(cfg.init_from, cfg.paths.log_dir, cfg.task_name)
        load_weights(module, ckpt)
        print(f"initialised from {ckpt}")
    loggers = _instantiate_all(cfg.get("logger"))
    callbacks = _callbacks(cfg)
    trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(cfg))
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        # verbose=False: the metrics are printed once, as the table below, not also as Lightning's box of raw floats.
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
        tested = trainer.checkpoint_callback
        if cfg.get("train", True) and tested is not None and tested.best_model_score is not None:
            # The validation score of the tested checkpoint, for sweepers to select on.
            metrics[tested.monitor] = float(tested.best_model_score)
        if trainer.is_global_zero:
            out = Path(cfg.paths.output_dir) / "test_metrics.json"
            out.write_text(
                json.dumps(
                    {
                        "experiment": cfg.get("name"),
                        "checkpoint": ckpt,
                        "test_data": cfg.get("test_data"),
                        "metrics": metrics,
                    },
                    indent=2,
                )
            )
            print(_table(metrics))
            print(f"test metrics written to {out}")
    for logger in loggers:
        if hasattr(logger, "experiment") and type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    return metrics


def _continue_wandb_run(cfg: DictConfig) -> None:
    """A run resumed in its own folder logs into its own wandb run: the id of the newest wandb run in the folder."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    folder = Path(cfg.paths.output_dir).resolve()
    if not wandb or wandb.get("id") or resumed_run_folder(cfg.get("ckpt_path")) != folder:
        return
    runs = sorted((folder / "wandb").glob("*run-*-*"), key=lambda p: p.name.split("-", 2)[-1])
    if runs:
        with open_dict(wandb):
            wandb.id = runs[-1].name.rsplit("-", 1)[-1]
            wandb.resume = "allow"


def _announce_generated_data(cfg: DictConfig) -> None:
    """One line when the data will be generated into a folder that does not exist yet: a mistyped data path would
    otherwise look like success."""
    data_dir = cfg.data.get("data_dir")
    if cfg.data.get("generator") and data_dir and not Path(data_dir).exists():
        print(
            f"{data_dir}: no such folder; generating the Shapes data into it (mistyped? stop and fix the path)"
        )


def _check_accelerator(cfg: DictConfig) -> None:
    if not gpu_available_for(cfg.trainer.get("accelerator")):
        raise RunConfigError(
            f"{cfg.get('name')}: this recipe trains on a GPU (trainer.accelerator={cfg.trainer.accelerator}) and "
            "none is available here; add trainer=cpu to run it on the CPU"
        )


def _compile(module: pl.LightningModule, options: DictConfig | bool | None) -> None:
    """torch.compile the module's pure nn.Module (`module.net`) in place, so checkpoints keep their parameter names.

    Fixed shapes spare recompilations: tokens are padded to `data.max_length` already, regions need
    `data.pad_regions_to` (e.g. 36 for detector features; Shapes images have at most 9 regions).
    """
    if options:
        module.net.compile(**({} if options is True else OmegaConf.to_container(options)))


def _resume_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`; unset in a requeued SLURM job, "last": the newest last.ckpt of the run folder (a run folder from
    before the requeue: hydra-submitit-launcher resubmits the same job). Lightning's own requeue checkpoints
    (hpc_ckpt_*.ckpt, SIGUSR1 without submitit) are left to Lightning, which resumes from them by itself."""
    if cfg.get("ckpt_path") or int(os.environ.get("SLURM_RESTART_COUNT", 0)) == 0:
        return cfg.get("ckpt_path")
    hpc = list(Path(cfg.paths.output_dir).glob("hpc_ckpt_*.ckpt"))
    return None if hpc else "last"


def _table(metrics: dict[str, float]) -> str:
    width = max((len(k) for k in metrics), default=10)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ---------"]
    lines += [f"{k.ljust(width)}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)


def quiet_dependency_warnings() -> None:
    """Silence the dependencies' warnings that a vqacap run causes and its user cannot act on."""
    # Lightning 2.6 builds torch's LeafSpec, which newer torch deprecates, at every batch.
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )


def main() -> None:
    """`vqacap-train` / `python -m vqacap.train`: the command line checked first (one line with the closest valid
    names for a misspelt option or config), then Hydra's run. Flags (-m, --cfg, --config-dir ...) and multiruns
    (hydra.mode=MULTIRUN, whose sweep values compose only in Hydra's sweeper) go to Hydra as they are."""
    overrides = sys.argv[1:]
    multirun = any(a.startswith("-") or a.replace(" ", "") == "hydra.mode=MULTIRUN" for a in overrides)
    checked = multirun or reporting(lambda: check_overrides(overrides, CONFIG_DIR) or True, status=None)
    if checked is None:
        sys.exit(1)
    hydra_main()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    os.environ.setdefault("WANDB_SILENT", "true")
    quiet_dependency_warnings()
    # The user's mistakes in one line (VQACAP_DEBUG=1: with the traceback), bugs with theirs.
    metrics = reporting(lambda: run(cfg), status=None)
    if metrics is None:
        sys.exit(1)
    target = cfg.get("optimized_metric")  # for sweepers; a validation metric (model.monitor) to select on
    return metrics.get(target) if target else None


def command(argv: list[str]) -> int:
    """`vqacap train ARGS`, the same as `vqacap-train ARGS`: Hydra reads its arguments from sys.argv."""
    saved, sys.argv = sys.argv, ["vqacap train", *argv]
    try:
        main()
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    main()
