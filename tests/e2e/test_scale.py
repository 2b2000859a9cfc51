"""Scale-out configs: the GPU and DDP trainer configs compose, DDP over 2 CPU processes (`trainer=ddp_sim`) trains and
evaluates with the metrics of a single process on the same checkpoint (every sample counted once although the
distributed sampler repeats some), and `model.compile` runs compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch._dynamo.utils
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy

from tests.helpers.configs import TINY_CAPTIONER, compose_train
from tests.helpers.references import import_reference
from vqacap.train import CONFIG_DIR, _compile, run

REPO = Path(__file__).resolve().parents[2]
# 15 test images with 91 questions: odd counts, so the distributed sampler pads the second process with a repeat.
ODD_SHAPES = [
    "data.generator.sizes={train:60,val:13,test:15}", "data.generator.feature_dim=64", "logger=csv",
    "callbacks.attention_maps=null", "+trainer.enable_progress_bar=false",
    "data.eval_batch_size=1",  # each sample computed alone, so 1 or 2 processes compute it bit for bit the same
]  # fmt: skip
TINY_VQA = [
    "experiment=vqa_shapes",
    "model.net.hidden_size=32",
    "model.net.embedding_dim=16",
    "data.batch_size=8",
]
TINY_CAPTIONS = [
    "experiment=caption_shapes", *TINY_CAPTIONER, "data.batch_size=4", "model.optimizer.lr=0.01",
    "model.metrics=[Bleu_1,Bleu_4,ROUGE_L,CIDEr]",
]  # fmt: skip


@pytest.fixture(scope="module")
def odd_data(tmp_path_factory) -> Path:
    """A data folder with the odd-sized Shapes, generated before two processes could both start generating it."""
    root = tmp_path_factory.mktemp("odd_data")
    for experiment in (TINY_CAPTIONS, TINY_VQA):
        cfg = compose_train([*ODD_SHAPES, *experiment], tmp_path_factory.mktemp("compose"), root)
        instantiate(cfg.data, _recursive_=False).prepare_data()
    return root


def _ddp_run(run_dir: Path, data_dir: Path, *overrides: str) -> dict:
    """`python -m vqacap.train trainer=ddp_sim ...` (Lightning starts the second process); its test_metrics.json."""
    command = [
        sys.executable, "-m", "vqacap.train", "trainer=ddp_sim", f"paths.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads((run_dir / "test_metrics.json").read_text())


def _single_run(run_dir: Path, data_dir: Path, checkpoint: str, *overrides: str) -> dict[str, float]:
    """The checkpoint tested in this process, with one thread as each DDP process has."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(compose_train([*overrides, "train=false", f"ckpt_path={checkpoint}"], run_dir, data_dir))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", ["gpu", "ddp", "ddp_sim"])
def test_trainer_configs_compose(make_cfg, name):
    trainer = make_cfg(f"trainer={name}").trainer
    assert trainer.max_epochs == 1  # the shared settings of cpu.yaml still apply, overrides included
    if name != "ddp_sim":
        assert trainer.accelerator == "gpu" and trainer.precision == "bf16-mixed"
    if name != "gpu":
        assert trainer.strategy == "ddp" and trainer.use_distributed_sampler


def test_ddp_sim_builds_a_two_process_cpu_trainer(make_cfg):
    trainer = instantiate(make_cfg("trainer=ddp_sim").trainer)
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
    assert trainer.accelerator.__class__.__name__ == "CPUAccelerator"


def test_vqa_trained_and_tested_under_ddp_scores_as_on_one_process(odd_data, tmp_path):
    overrides = [*ODD_SHAPES, *TINY_VQA, "trainer.max_epochs=1"]
    ddp = _ddp_run(tmp_path / "ddp", odd_data, *overrides)
    single = _single_run(tmp_path / "single", odd_data, ddp["checkpoint"], *overrides)
    accuracy = {k: v for k, v in ddp["metrics"].items() if k.startswith("test/accuracy")}
    assert accuracy and accuracy == {k: single[k] for k in accuracy}
    results = [json.loads((tmp_path / d / "vqa_test_results.json").read_text()) for d in ("ddp", "single")]
    questions = json.loads((odd_data / "shapes" / "vqa_test_questions.json").read_text())["questions"]
    assert len(questions) % 2 == 1  # the second process saw one question twice
    assert results[0] == results[1] and len({r["question_id"] for r in results[0]}) == len(results[0]) == len(
        questions
    )


@pytest.mark.slow
def test_captioner_trained_and_tested_under_ddp_scores_as_on_one_process(odd_data, tmp_path):
    overrides = [*ODD_SHAPES, *TINY_CAPTIONS, "trainer.max_epochs=3"]
    ddp = _ddp_run(tmp_path / "ddp", odd_data, *overrides)
    single = _single_run(tmp_path / "single", odd_data, ddp["checkpoint"], *overrides)
    tested = {k: v for k, v in ddp["metrics"].items() if k.startswith("test/")}  # not the validation score
    assert tested == single and single["test/Bleu_1"] > 0
    captions = [json.loads((tmp_path / d / "test_captions.json").read_text()) for d in ("ddp", "single")]
    assert captions[0] == captions[1] and len(captions[0]) == 15


def test_compiled_vqa_model_answers_as_before_and_keeps_its_parameter_names(make_cfg):
    cfg = make_cfg(
        "experiment=vqa_shapes", *TINY_VQA[1:], "++data.pad_regions_to=9"
    )  # fixed shapes: no recompiles
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = next(iter(datamodule.test_dataloader()))
    module = instantiate(cfg.model, **datamodule.model_kwargs()).eval()
    names, expected = list(module.state_dict()), module(batch).logits
    torch._dynamo.reset()
    _compile(
        module, OmegaConf.create({"backend": "eager"})
    )  # TorchDynamo tracing, as inductor does; fast on CPU
    assert torch.allclose(module(batch).logits, expected, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] > 0
    assert list(module.state_dict()) == names  # checkpoints of compiled and plain models are interchangeable


@pytest.mark.slow
def test_compiled_captioner_trains_and_tests(make_cfg):
    torch._dynamo.reset()
    # The eager backend traces with TorchDynamo as the default (inductor) does, without generating code: fast on CPU.
    cfg = make_cfg(
        "experiment=caption_shapes", *TINY_CAPTIONER, "debug=fdr", "+model.compile={backend:eager}"
    )
    metrics = run(cfg)
    assert torch._dynamo.utils.counters["stats"]["calls_captured"] > 0 and "test/CIDEr" in metrics


def test_slurm_launcher_asks_one_task_per_gpu_and_the_requeue_signal(monkeypatch, tmp_path):
    """The sbatch script submitit writes for `hydra/launcher=slurm trainer=ddp` (no cluster needed)."""
    SlurmExecutor = import_reference("submitit.slurm.slurm").SlurmExecutor  # a dev dependency
    GlobalHydra.instance().clear()
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "hydra.launcher.partition=gpu"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # as if srun were installed
    executor = SlurmExecutor(tmp_path, max_num_timeout=params.pop("max_num_timeout"))
    del params["submitit_folder"]
    # Generic names and units converted as AutoExecutor converts them (mem_gb=64 -> --mem=64GB).
    executor.update_parameters(**executor._convert_parameters(params))
    sbatch = executor._make_submission_file_text("python -m vqacap.train", "uid")
    lines = ["--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--mem=64GB", "--partition=gpu"]
    for line in [*lines, "--signal=USR2@120"]:
        assert f"#SBATCH {line}" in sbatch, line
