"""The published recipes (COCO Karpathy captioning, VQA v2) run end to end on tiny files in the public formats:
Karpathy JSON / official VQA v2 JSON and a bottom-up-attention TSV, through `vqacap prepare`, then a real Trainer."""

import json
import shutil

import pytest

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.karpathy import karpathy_file
from tests.helpers.runs import prepare_features
from tests.helpers.vqa2 import run_prepare
from vqacap.cli import main as vqacap
from vqacap.train import run

CPU_LOADER = ["trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false"]


def test_caption_coco_recipes_run_on_prepared_karpathy_data(make_cfg, tmp_path):
    coco = tmp_path / "data" / "coco"
    assert (
        vqacap(
            [
                "prepare",
                "coco-captions",
                "--karpathy",
                str(karpathy_file(tmp_path)),
                "--out",
                str(coco),
                "--min-count",
                "1",
            ]
        )
        == 0
    )
    prepare_features(tmp_path, [9, 25, 30, 42], coco / "regions.h5")
    for experiment in ("caption_coco_xe", "caption_coco_scst"):
        shutil.rmtree(tmp_path / "run", ignore_errors=True)  # each run in an empty run folder of its own
        cfg = make_cfg(
            f"experiment={experiment}",
            "debug=fdr",
            f"paths.data_dir={tmp_path / 'data'}",
            "init_from=null",
            *CPU_LOADER,
            *TINY_CAPTIONER,
            "model.metrics=[Bleu_4,ROUGE_L,CIDEr]",
            tiny=False,
        )
        metrics = run(cfg)
        assert {"test/Bleu_4", "test/ROUGE_L", "test/CIDEr"} <= metrics.keys()


@pytest.mark.parametrize("experiment", ["vqa2_updown", "vqa2_reference"])
def test_vqa2_recipes_run_on_prepared_official_files(make_cfg, tmp_path, experiment, official):
    vqa2 = tmp_path / "data" / "vqa2"
    assert run_prepare(official, vqa2) == 0
    image_ids = sorted(
        {
            q["image_id"]
            for name in official.values()
            if "questions" in name.name
            for q in json.loads(name.read_text())["questions"]
        }
    )
    prepare_features(tmp_path, image_ids, vqa2 / "regions.h5")
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        f"paths.data_dir={tmp_path / 'data'}",
        "model.net.hidden_size=32",
        *CPU_LOADER,
    ]
    glove = tmp_path / "data" / "glove" / "glove.6B.300d.txt"
    with pytest.raises(FileNotFoundError, match=f"{glove}: GloVe file not found"):
        run(make_cfg(*overrides, tiny=False))  # the recipe names GloVe 300d; the file is not there yet
    glove.parent.mkdir()
    glove.write_text("".join(f"{w} " + " ".join(["0.5"] * 300) + "\n" for w in ("what", "is", "the")))
    cfg = make_cfg(*overrides, tiny=False)
    metrics = run(cfg)
    assert "test/accuracy" in metrics
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert (
        saved["test_data"] == "vqa_val_questions.json"
    )  # the "test" of the VQA v2 recipes is the validation split


def test_vqa2_updown_has_the_papers_settings_and_vqa2_updown_adamax_hengyuan_hus(make_cfg):
    """Anderson et al. 2018 / Teney et al. 2018: hidden 512, AdaDelta, batch 512, no clipping; hengyuan-hu/
    bottom-up-attention-vqa: hidden 1024, Adamax 2e-3, clip 0.25 (docs/fidelity.md)."""
    import torch
    from hydra.utils import instantiate

    paper = make_cfg("experiment=vqa2_updown", tiny=False)
    assert paper.model.net.hidden_size == 512 and paper.data.batch_size == 512
    assert not paper.trainer.get("gradient_clip_val")
    optimizer = instantiate(paper.model.optimizer)([torch.zeros(1, requires_grad=True)])
    assert isinstance(optimizer, torch.optim.Adadelta)
    adamax = make_cfg("experiment=vqa2_updown_adamax", tiny=False)
    assert adamax.model.net.hidden_size == 1024 and adamax.trainer.gradient_clip_val == 0.25
    assert adamax.model.optimizer._target_ == "torch.optim.Adamax" and adamax.model.optimizer.lr == 2e-3
