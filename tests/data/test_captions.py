import json

import pytest
import torch

from vqacap.data.captions import CaptionDataModule, load_caption_annotations
from vqacap.data.store import RegionStoreError
from vqacap.data.vocab import BOS_ID, EOS_ID
from vqacap.shapes import generate


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("shapes"), sizes={"train": 20, "val": 6, "test": 6}, feature_dim=32
    )


def test_shapes_is_deterministic_and_in_public_formats(shapes, tmp_path):
    again = generate(tmp_path / "again", sizes={"train": 20, "val": 6, "test": 6}, feature_dim=32)
    for name in ("captions_train.json", "vqa_val_annotations.json", "vqa_test_questions.json"):
        assert (shapes / name).read_text() == (again / name).read_text()
    captions = json.loads((shapes / "captions_train.json").read_text())
    assert {"images", "annotations"} <= captions.keys()
    assert len(captions["annotations"]) == 5 * len(captions["images"]) == 100
    questions = json.loads((shapes / "vqa_val_questions.json").read_text())["questions"]
    annotations = json.loads((shapes / "vqa_val_annotations.json").read_text())["annotations"]
    assert [q["question_id"] for q in questions] == [a["question_id"] for a in annotations]
    assert {a["answer_type"] for a in annotations} == {"yes/no", "number", "other"}
    assert all(len(a["answers"]) == 10 for a in annotations)
    assert (shapes / captions["images"][0]["file_name"]).is_file()


def test_train_batches_carry_regions_and_tokens(shapes):
    dm = CaptionDataModule(str(shapes), batch_size=8, captions_per_image=3, min_count=1)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.regions.features.shape[0] == 8 and batch.regions.features.shape[2] == 32
    assert batch.regions.features.dtype == torch.float32
    assert batch.tokens.shape == (8, 3, 18)
    assert (batch.tokens[..., 0] == BOS_ID).all() and ((batch.tokens == EOS_ID).sum(-1) == 1).all()
    # the G captions of an image are distinct references of that image
    refs = {
        i: set(dm.vocab.decode_batch(dm.vocab.encode_batch(c))) for i, c in dm.references["train"].items()
    }
    for image_id, captions in zip(batch.image_ids.tolist(), batch.tokens):
        texts = dm.vocab.decode_batch(captions)
        assert len(set(texts)) == 3 and set(texts) <= refs[image_id]
    assert (batch.regions.mask.sum(1) >= 5).all()  # >= 3 objects + >= 2 background regions
    assert dm.model_kwargs() == {"words": dm.vocab.words, "feature_dim": 32, "references": dm.references}


def test_images_with_few_captions_repeat_some(shapes):
    dm = CaptionDataModule(str(shapes), batch_size=4, captions_per_image=7, min_count=1)
    dm.prepare_data()
    batch = dm.train_set().collate([0, 1, 2, 3])
    assert batch.tokens.shape[:2] == (4, 7)
    for captions in batch.tokens:
        assert len({tuple(c.tolist()) for c in captions}) <= 5


def test_eval_batches_cover_each_image_once_with_references(shapes):
    dm = CaptionDataModule(str(shapes), eval_batch_size=4, zero_regions=True)
    dm.prepare_data()
    dm.setup("test")
    ids = torch.cat([b.image_ids for b in dm.test_dataloader()])
    assert sorted(ids.tolist()) == sorted(dm.references["test"]) and len(ids) == 6
    batch = next(iter(dm.test_dataloader()))
    assert batch.tokens is None and (batch.regions.features == 0).all() and (batch.regions.boxes == 0).all()


def test_image_absent_from_the_store_is_named(shapes, tmp_path):
    data = json.loads((shapes / "captions_val.json").read_text())
    data["images"].append({"id": 424242, "file_name": "x.png"})
    data["annotations"].append({"id": 999, "image_id": 424242, "caption": "a red circle"})
    (tmp_path / "captions_val.json").write_text(json.dumps(data))
    dm = CaptionDataModule(str(shapes), annotations={"val": str(tmp_path / "captions_val.json")})
    with pytest.raises(RegionStoreError, match="first: image id 424242"):
        dm.setup("validate")


def test_empty_caption_and_wrong_file_kind_are_named(shapes, tmp_path):
    data = json.loads((shapes / "captions_train.json").read_text())
    data["annotations"][3]["caption"] = " ... "
    (tmp_path / "captions_train.json").write_text(json.dumps(data))
    dm = CaptionDataModule(str(shapes), annotations={"train": str(tmp_path / "captions_train.json")})
    with pytest.raises(ValueError, match=r"captions_train.json: caption\[3\]: empty text"):
        dm.train_set()
    with pytest.raises(ValueError, match="not a COCO caption-annotation file"):
        load_caption_annotations(shapes / "vqa_train_questions.json")
