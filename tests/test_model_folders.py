"""Model folders (vqacap.folders, `vqacap export`): models of tiny real runs exported, read back by every command that
reads a checkpoint and by `from_pretrained`, giving what their checkpoints give; folders that do not fit or hold a
pickle refused in one line."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers.configs import TINY_CAPTIONER, compose_train, tiny_detector
from tests.helpers.runs import VQACAP
from vqacap.cli import main as vqacap
from vqacap.folders import FolderError, read_checkpoint
from vqacap.lightning.loading import load_detector, load_module, load_weights
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import decode
from vqacap.models.detector import BottomUpDetector
from vqacap.train import run

SIZES = "data.generator.sizes={train:24,val:6,test:6}"
FEW_STEPS = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "logger=csv"]
TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]


def _train(overrides: list[str], out: Path, data_root: Path) -> Path:
    """A real run, with the config Hydra would have saved into its .hydra/ folder."""
    cfg = compose_train(overrides, out, data_root)
    run(cfg)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), out / ".hydra" / "overrides.yaml")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A detector (3 steps) on rendered Shapes, its regions extracted, a captioner and a VQA model (3 steps each) on
    them, and each exported."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("folders")
    data_root = root / "data"
    detector_run = _train(
        ["experiment=detector_shapes", SIZES, *tiny_detector(4, 30), *FEW_STEPS, "data.batch_size=4",
         "data.eval_batch_size=6", "callbacks.detection_images=null"],
        root / "runs" / "detector_shapes" / "1", data_root,
    )  # fmt: skip
    detector = json.loads((detector_run / "test_metrics.json").read_text())["checkpoint"]
    shapes = data_root / "shapes"
    store = root / "detected.h5"
    images = [str(shapes / "images" / split) for split in ("train", "val", "test")]
    assert vqacap(["extract", "--detector", detector, "--images", *images, "--out", str(store),
                   "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    common = [SIZES, f"data.store={store}", *FEW_STEPS, "data.batch_size=4", "callbacks.attention_maps=null"]
    captioner_run = _train(
        ["experiment=caption_shapes_detected", *common, *TINY_CAPTIONER],
        root / "runs" / "caption_shapes_detected" / "1",
        data_root,
    )
    vqa_run = _train(
        ["experiment=vqa_shapes_detected", *common, *TINY_VQA],
        root / "runs" / "vqa_shapes_detected" / "1",
        data_root,
    )
    folders = root / "models"
    for name, source in (("detector", detector_run), ("captioner", captioner_run), ("vqa", vqa_run)):
        assert vqacap(["export", str(source), str(folders / name)]) == 0
    checkpoint = {
        name: json.loads((source / "test_metrics.json").read_text())["checkpoint"]
        for name, source in (("captioner", captioner_run), ("vqa", vqa_run))
    }
    return {"root": root, "shapes": shapes, "store": store, "detector": detector, "folders": folders,
            "captioner_run": captioner_run, **checkpoint}  # fmt: skip


def test_a_folder_holds_safetensors_json_and_a_model_card_and_no_pickle(runs):
    folder = runs["folders"] / "captioner"
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "vocab.json",
    ]
    assert (folder / "model.safetensors").read_bytes()[
        :1
    ] != b"\x80"  # not a pickle: a JSON header's length first
    config = json.loads((folder / "config.json").read_text())
    assert config["task"] == "captioning" and config["model"].startswith("vqacap.models.")
    assert config["init"]["hidden_dim"] == 48 and config["module"]["net"]["_target_"] == config["model"]
    words = json.loads((folder / "vocab.json").read_text())
    assert words == list(load_module(runs["captioner"]).hparams.words)
    assert (
        json.loads((runs["folders"] / "vqa" / "answers.json").read_text()) == load_module(runs["vqa"]).answers
    )
    detector = runs["folders"] / "detector"
    assert json.loads((detector / "classes.json").read_text())[0] == "__background__"
    assert (detector / "attributes.json").is_file() and not (detector / "vocab.json").exists()

    card = (folder / "README.md").read_text()
    tested = json.loads((runs["captioner_run"] / "test_metrics.json").read_text())
    assert "# caption_shapes_detected: a vqacap captioning model" in card
    assert "## Intended use" in card and "vqacap caption" in card
    assert f"| test/CIDEr | {tested['metrics']['test/CIDEr']:.4f} |" in card
    assert "data.store=" in card and "vqacap.data.captions.CaptionDataModule" in card
    assert "- commit: " in card and "- exported: 20" in card
    assert "blind control" not in card  # no run of caption_shapes_detected_blind here


def test_the_card_shows_the_blind_controls_metrics_where_the_runs_folder_has_one(runs, tmp_path):
    blind = runs["captioner_run"].parent.parent / "caption_shapes_detected_blind" / "1"
    blind.mkdir(parents=True)
    metrics = {"test/CIDEr": 0.125, "test/Bleu_4": 0.5}
    (blind / "test_metrics.json").write_text(json.dumps({"experiment": "caption_shapes_detected_blind",
                                                          "metrics": metrics}))  # fmt: skip
    try:
        assert vqacap(["export", str(runs["captioner_run"]), str(tmp_path / "out")]) == 0
    finally:
        shutil.rmtree(blind.parent)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "blind control (regions zeroed)" in card and "| 0.1250 |" in card
    assert "`caption_shapes_detected_blind`" in card


def _printed(capsys) -> str:
    return capsys.readouterr().out


def test_caption_and_answer_from_folders_print_what_the_checkpoints_print(runs, capsys):
    images = [str(p) for p in sorted((runs["shapes"] / "images" / "test").glob("*.png"))]
    folders = runs["folders"]
    assert vqacap(["caption", *images, "--detector", runs["detector"], "--captioner", runs["captioner"]]) == 0
    from_checkpoints = _printed(capsys)
    assert vqacap(["caption", *images, "--detector", str(folders / "detector"),
                   "--captioner", str(folders / "captioner")]) == 0  # fmt: skip
    assert _printed(capsys) == from_checkpoints and len(from_checkpoints.splitlines()) == len(images)
    # its model.safetensors names the folder too
    assert vqacap(["caption", *images, "--detector", runs["detector"],
                   "--captioner", str(folders / "captioner" / "model.safetensors")]) == 0  # fmt: skip
    assert _printed(capsys) == from_checkpoints

    question = ["--question", "what color is the circle?"]
    assert vqacap(["answer", images[0], *question, "--detector", runs["detector"], "--vqa", runs["vqa"]]) == 0
    answered = _printed(capsys)
    assert vqacap(["answer", images[0], *question, "--detector", str(folders / "detector"),
                   "--vqa", str(folders / "vqa")]) == 0  # fmt: skip
    assert _printed(capsys) == answered and len(answered.splitlines()) > 1


def test_from_pretrained_gives_the_checkpoints_model_and_captions(runs):
    module = load_module(runs["captioner"])
    net = type(module.net).from_pretrained(runs["folders"] / "captioner")
    assert not net.training and type(net) is type(module.net)
    assert all(torch.equal(a, b) for a, b in zip(module.net.state_dict().values(), net.state_dict().values()))
    paper = UpDownCaptioner.from_pretrained(runs["folders"] / "captioner")  # the paper form of a fast model
    assert type(paper) is UpDownCaptioner and type(net) is not UpDownCaptioner
    from vqacap.data.store import RegionStore
    from vqacap.lightning.common import region_inputs

    regions = RegionStore(runs["store"]).read_batch([31, 32, 33])
    inputs = region_inputs(regions, module.use_spatial)
    expected = decode(module.net, inputs, regions.mask, module.decoding).tokens
    assert torch.equal(decode(net, inputs, regions.mask, module.decoding).tokens, expected)
    assert torch.equal(decode(paper, inputs, regions.mask, module.decoding).tokens, expected)

    detector = BottomUpDetector.from_pretrained(runs["folders"] / "detector")
    original = load_detector(runs["detector"])
    assert detector.classes == original.classes and detector.attributes == original.attributes
    assert all(
        torch.equal(a, b) for a, b in zip(original.state_dict().values(), detector.state_dict().values())
    )

    # save_pretrained of the loaded model writes a folder that loads again
    net.save_pretrained(runs["root"] / "again")
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 type(net).from_pretrained(runs["root"] / "again").state_dict().values()))  # fmt: skip


def test_extract_with_a_detector_folder_stores_the_checkpoints_regions(runs, tmp_path):
    images = str(runs["shapes"] / "images" / "test")
    for name, detector in (("ckpt", runs["detector"]), ("folder", runs["folders"] / "detector")):
        assert vqacap(["extract", "--detector", str(detector), "--images", images, "--out",
                       str(tmp_path / f"{name}.h5"), "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    with h5py.File(tmp_path / "ckpt.h5") as a, h5py.File(tmp_path / "folder.h5") as b:
        assert sorted(a) == sorted(b)
        for key in a:
            if isinstance(a[key], h5py.Dataset):
                assert np.array_equal(a[key][()], b[key][()]), key


def test_init_from_a_folder_starts_training_from_its_weights(runs, tmp_path, capsys):
    folder = runs["folders"] / "captioner"
    module = load_module(runs["captioner"])
    fresh = load_module(runs["captioner"])
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    load_weights(fresh, folder)
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), fresh.state_dict().values()))
    cfg = compose_train(
        ["experiment=caption_shapes_detected", SIZES, f"data.store={runs['store']}", *TINY_CAPTIONER,
         f"init_from={folder}", "train=false", "test=false", "logger=csv"],
        tmp_path / "run", runs["shapes"].parent,
    )  # fmt: skip
    run(cfg)
    assert f"initialised from {folder}" in capsys.readouterr().out


def _copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def test_weights_that_do_not_fit_the_config_end_in_one_line_naming_file_and_tensor(runs, tmp_path):
    folder = _copy(runs["folders"] / "captioner", tmp_path / "wider")
    config = json.loads((folder / "config.json").read_text())
    config["init"]["hidden_dim"] = 50
    config["module"]["net"]["hidden_dim"] = 50
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(FolderError) as err:
        UpDownCaptioner.from_pretrained(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: does not fit the UpDownCaptioner of")
    assert "is (" in message and "the model's (" in message and "\n" not in message

    image = str(runs["shapes"] / "images" / "test" / "000031.png")
    done = subprocess.run([*VQACAP, "caption", image, "--detector", runs["detector"], "--captioner", str(folder)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{folder / 'model.safetensors'}: checkpoint does not fit this model (" in done.stderr
    assert "net." in done.stderr

    # a captioner's folder given as the detector
    with pytest.raises(FolderError, match="holds a FastUpDownCaptioner, not a BottomUpDetector"):
        load_detector(runs["folders"] / "captioner")
    with pytest.raises(FolderError, match="a detector's folder, where a captioner or VQA model is needed"):
        load_module(runs["folders"] / "detector")


def test_a_folder_is_never_unpickled(runs, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    # weights as a pickle beside the config: refused without reading it
    folder = _copy(runs["folders"] / "captioner", tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(
        FolderError, match=r"pytorch_model\.bin: refused: a model folder's weights are model\."
    ):
        read_checkpoint(folder)
    with pytest.raises(FolderError, match="refused"):
        UpDownCaptioner.from_pretrained(folder)

    # a pickle under the safetensors name: not read as one
    (folder / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(FolderError, match=r"model\.safetensors: not a readable safetensors file"):
        UpDownCaptioner.from_pretrained(folder)
    image = str(runs["shapes"] / "images" / "test" / "000031.png")
    assert vqacap(["caption", image, "--detector", runs["detector"], "--captioner", str(folder)]) == 2
    assert not marker.exists()


def test_export_never_overwrites_and_says_what_it_needs(runs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert vqacap(["export", str(runs["captioner_run"]), str(out)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert vqacap(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a run folder with a checkpoint" in capsys.readouterr().err
    # a checkpoint file exports as its run folder does
    assert vqacap(["export", runs["captioner"], str(tmp_path / "from_file")]) == 0
    assert "caption_shapes_detected" in (tmp_path / "from_file" / "README.md").read_text()


def test_visualize_draws_the_same_maps_from_a_folder(make_cfg, data_root, tmp_path, capsys):
    cfg = make_cfg("experiment=caption_shapes", *TINY_CAPTIONER, "callbacks.attention_maps=null")
    run(cfg)
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert vqacap(["export", str(checkpoint), str(tmp_path / "folder")]) == 0
    drawn = {}
    for name, source in (("ckpt", checkpoint), ("folder", tmp_path / "folder")):
        args = [
            "--checkpoint",
            str(source),
            "--data-dir",
            str(data_root / "shapes"),
            "--image-ids",
            "61",
            "62",
        ]
        capsys.readouterr()
        assert vqacap(["visualize", *args, "--out", str(tmp_path / f"maps_{name}")]) == 0
        drawn[name] = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
        assert sorted(p.name for p in (tmp_path / f"maps_{name}").iterdir()) == ["61.png", "62.png"]
    assert drawn["folder"] == drawn["ckpt"]
    for image in ("61.png", "62.png"):
        assert (tmp_path / "maps_folder" / image).read_bytes() == (
            tmp_path / "maps_ckpt" / image
        ).read_bytes()


def _small_models():
    from vqacap.models.fast import FastUpDownCaptioner
    from vqacap.models.fast.vqa import FastReferenceVQA, FastUpDownVQA
    from vqacap.models.show_attend_tell import ShowAttendTell
    from vqacap.models.vqa import ReferenceVQA, UpDownVQA
    from vqacap.models.vqa_generative import GenerativeVQA

    glove = torch.randn(9, 6)  # an initialisation the weights carry: not in config.json
    return [
        UpDownCaptioner(9, 8, embed_dim=5, hidden_dim=7, attention_dim=4),
        FastUpDownCaptioner(9, 8, embed_dim=5, hidden_dim=7, attention_dim=4),
        ShowAttendTell(9, 8, embed_dim=5, hidden_dim=7, attention_dim=4),
        UpDownVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6, dropout=0.3, word_embeddings=glove),
        FastUpDownVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6),
        ReferenceVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6),
        FastReferenceVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6),
        GenerativeVQA(
            9, 5, feature_dim=8, hidden_size=6, embedding_dim=6, answer_embedding_dim=4, attention_dim=4
        ),
    ]


@pytest.mark.parametrize("index", range(8))
def test_every_pure_model_saves_and_loads_itself(index, tmp_path):
    model = _small_models()[index]
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["model"] == f"{type(model).__module__}.{type(model).__qualname__}"
    assert config["init"].get("word_embeddings") is None and config["init"]["feature_dim"] == 8
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert model.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FolderError, match="exists and is not an empty folder"):
        model.save_pretrained(tmp_path / "m")


def test_a_fast_form_and_its_paper_form_load_each_others_folders(tmp_path):
    from vqacap.models.fast.vqa import FastUpDownVQA
    from vqacap.models.show_attend_tell import ShowAttendTell
    from vqacap.models.vqa import TopDownVQA, UpDownVQA

    fast = FastUpDownVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6)
    fast.save_pretrained(tmp_path / "fast")
    assert type(UpDownVQA.from_pretrained(tmp_path / "fast")) is UpDownVQA
    assert type(TopDownVQA.from_pretrained(tmp_path / "fast")) is FastUpDownVQA  # a base: the folder's class
    UpDownVQA(9, 3, feature_dim=8, hidden_size=6, embedding_dim=6).save_pretrained(tmp_path / "paper")
    assert type(FastUpDownVQA.from_pretrained(tmp_path / "paper")) is FastUpDownVQA
    with pytest.raises(FolderError, match="holds a FastUpDownVQA, not a ShowAttendTell"):
        ShowAttendTell.from_pretrained(tmp_path / "fast")
