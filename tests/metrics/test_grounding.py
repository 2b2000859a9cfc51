"""Grounding accuracy: hand-made cases with known values, the cross-rank gather, and the real modules on tiny Shapes."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from hydra.utils import instantiate
from torchmetrics.utilities import dim_zero_cat

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.runs import logged
from vqacap.data.vocab import EOS_ID, tokenize
from vqacap.metrics.grounding import GroundingAccuracy, box_iou, caption_targets, named_objects
from vqacap.models.decoding import Decoded
from vqacap.train import run

TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]

# Three regions: two objects and a background crop that covers the second object.
BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [18.0, 18.0, 32.0, 32.0]])


def one_hot(k: int, size: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(k), size).float()


def test_box_iou_of_known_boxes():
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 2, 2], [0, 0, 0, 0]])
    b = torch.tensor([[0.0, 0, 2, 2], [1, 0, 3, 2], [5, 5, 6, 6], [0, 0, 0, 0]])
    assert box_iou(a, b).tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0])


def test_a_shape_word_names_an_object_only_after_its_colour_and_when_unique():
    scene = [
        {"shape": "circle", "colour": "red", "box": [0, 0, 10, 10]},
        {"shape": "square", "colour": "blue", "box": [20, 20, 30, 30]},
        {"shape": "square", "colour": "blue", "box": [40, 40, 50, 50]},
    ]
    words = tokenize("a large red circle to the left of a blue square and a circle and a green circle")
    named = named_objects(words, scene)
    assert named[3] == [0, 0, 10, 10]  # "red circle": one red circle
    assert named[9] is None  # "blue square": two of them
    assert named[12] is None  # "a circle": no colour
    assert named[16] is None  # "green circle": none in the scene
    assert sum(box is not None for box in named) == 1

    targets, grounded = caption_targets([words, ["red", "circle"]], [scene, scene], length=4)
    assert targets.shape == (2, 4, 4) and grounded.tolist() == [
        [False, False, False, True],
        [False, True, False, False],
    ]
    assert targets[1, 1].tolist() == [0, 0, 10, 10]


def test_accuracy_is_hits_over_grounded_items():
    metric = GroundingAccuracy()
    # Example 1: the word at t=1 names region 0 and attends it (hit); t=2 names region 1 but attends region 0 (miss);
    # t=0 is not grounded, whatever it attends. Example 2: one grounded word attending the background crop, whose IoU
    # with the object's box is 100/196 = 0.51 (hit at 0.5).
    attention = torch.stack([
        torch.stack([one_hot(1), one_hot(0), one_hot(0)]),
        torch.stack([one_hot(2), one_hot(0), one_hot(0)]),
    ])  # (B, T, K)  # fmt: skip
    targets = torch.zeros(2, 3, 4)
    targets[0, 1], targets[0, 2], targets[1, 0] = BOXES[0], BOXES[1], BOXES[1]
    grounded = torch.tensor([[False, True, True], [True, False, False]])
    metric.update(attention, BOXES.expand(2, -1, -1), targets, grounded, torch.tensor([1, 2]))
    assert float(metric.compute()) == pytest.approx(2 / 3)

    strict = GroundingAccuracy(iou_threshold=0.6)
    strict.update(attention, BOXES.expand(2, -1, -1), targets, grounded, torch.tensor([1, 2]))
    assert float(strict.compute()) == pytest.approx(1 / 3)


def test_nothing_grounded_gives_nan():
    metric = GroundingAccuracy()
    metric.update(one_hot(0).view(1, 1, 3), BOXES[None], torch.zeros(1, 1, 4), torch.zeros(1, 1, dtype=torch.bool),
                  torch.tensor([7]))  # fmt: skip
    assert math.isnan(metric.compute())


def test_ranks_are_gathered_and_a_repeated_example_counts_once():
    """Two ranks; the DistributedSampler pads rank 1 with a repeat of example 1, which must count once."""

    def question(example_id: int, attended: int, rank: GroundingAccuracy) -> None:  # a VQA item: T = 1
        rank.update(one_hot(attended).view(1, 1, 3), BOXES[None], BOXES[1].view(1, 1, 4),
                    torch.ones(1, 1, dtype=torch.bool), torch.tensor([example_id]))  # fmt: skip

    ranks = [GroundingAccuracy(), GroundingAccuracy()]
    question(1, 1, ranks[0])  # hit
    question(2, 0, ranks[0])  # miss
    question(3, 1, ranks[1])  # hit
    question(1, 1, ranks[1])  # the repeat
    # What all_gather gives rank 0: its own states, then rank 1's (states are gathered in the order they were added).
    other = iter([dim_zero_cat(getattr(ranks[1], name)) for name in ranks[1]._reductions])
    ranks[0].sync(dist_sync_fn=lambda t, group=None: [t, next(other)], distributed_available=lambda: True)
    assert dim_zero_cat(ranks[0].example_id).tolist() == [1, 2, 3, 1]
    assert float(GroundingAccuracy.compute(ranks[0])) == pytest.approx(2 / 3)  # not 3 / 4


def hand_made_captions(cfg):
    """The captioning module on tiny Shapes and two captions written by hand, "a <size> <colour> <shape>", naming an
    object that is unique in its scene: image 0's shape word attends that object, every other step of both images
    attends a background region."""
    dm = instantiate(cfg.data, _recursive_=False)
    dm.prepare_data()
    dm.setup("validate")
    module = instantiate(cfg.model, **dm.model_kwargs())
    chosen = []  # (image id, object index = its region index, as Shapes stores object regions first, object, #objects)
    for image_id, objects in sorted(dm.scenes("val").items()):
        names = [(o["colour"], o["shape"]) for o in objects]
        unique = [k for k, name in enumerate(names) if names.count(name) == 1]
        if unique and len(chosen) < 2:
            chosen.append((image_id, unique[0], objects[unique[0]], len(objects)))
    batch = dm.examples("val", [c[0] for c in chosen])
    k = batch.regions.mask.size(1)
    tokens, attention = [], torch.zeros(2, 1, 5, k)
    for b, (_, _, o, background) in enumerate(chosen):
        tokens.append(dm.vocab.encode(f"a {o['size']} {o['colour']} {o['shape']}") + [EOS_ID])
        attention[b, 0, :] = one_hot(background, k)  # the first region after the objects
    attention[0, 0, 3] = one_hot(chosen[0][1], k)
    decoded = Decoded(torch.tensor(tokens).unsqueeze(1), attention, torch.zeros(2, 1, 5), torch.zeros(2, 1))
    return module, batch, decoded


def test_caption_words_are_grounded_on_the_scene_objects(make_cfg):
    module, batch, decoded = hand_made_captions(make_cfg("experiment=caption_shapes", *TINY_CAPTIONER))
    module._update_grounding(batch, "val", decoded)
    assert module.grounding["val"].compute_and_reset() == pytest.approx(1 / 2)
    assert module.grounding["val"].compute_and_reset() is None  # reset for the next epoch


def test_vqa_run_logs_grounding_in_validation_and_test(make_cfg):
    cfg = make_cfg("experiment=vqa_shapes", *TINY_VQA, "callbacks.attention_maps=null")
    metrics = run(cfg)
    assert 0 <= metrics["test/grounding"] <= 1
    assert logged(cfg.paths.output_dir, "val/grounding")


def test_data_without_scenes_or_target_boxes_logs_no_grounding(make_cfg, data_root, tmp_path):
    """Real data has no scenes_<split>.json and no target_box: no grounding is logged, and nothing fails."""
    module, batch, decoded = hand_made_captions(make_cfg("experiment=caption_shapes", *TINY_CAPTIONER))
    real = tmp_path / "real"
    shutil.copytree(data_root / "shapes", real)
    for path in real.glob("scenes_*.json"):
        path.unlink()
    for path in real.glob("vqa_*_annotations.json"):
        data = json.loads(path.read_text())
        for ann in data["annotations"]:
            ann.pop("target_box", None)
        path.write_text(json.dumps(data))

    captions = instantiate(
        make_cfg("experiment=caption_shapes", f"data.data_dir={real}").data, _recursive_=False
    )
    assert captions.scenes("val") is None
    batch = captions.examples("val", batch.image_ids.tolist())
    assert batch.objects is None  # the batches of data without scenes carry no objects
    module._update_grounding(batch, "val", decoded)
    assert not module.grounding["val"].update_called

    cfg = make_cfg("experiment=vqa_shapes", *TINY_VQA, f"data.data_dir={real}", "debug=fdr")
    metrics = run(cfg)
    assert "test/accuracy" in metrics and "test/grounding" not in metrics


def test_evaluation_batches_carry_the_grounding_targets(make_cfg, data_root):
    """What grounding needs comes with the batch: the scene objects of each image, the target box of each question."""
    captions = instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False)
    captions.prepare_data()
    scenes = json.loads((data_root / "shapes" / "scenes_val.json").read_text())["scenes"]
    image_ids = [scene["image_id"] for scene in scenes[:3]]
    batch = next(iter(captions.val_dataloader()))
    by_id = {scene["image_id"]: scene["objects"] for scene in scenes}
    assert batch.objects == [by_id[i] for i in batch.image_ids.tolist()]
    assert captions.examples("val", image_ids).objects == [by_id[i] for i in image_ids]

    vqa = instantiate(make_cfg("experiment=vqa_shapes").data, _recursive_=False)
    vqa.prepare_data()
    annotations = json.loads((data_root / "shapes" / "vqa_val_annotations.json").read_text())["annotations"]
    batch = next(iter(vqa.val_dataloader()))
    by_question = {a["question_id"]: a for a in annotations}
    for q, box, has in zip(
        batch.question_ids.tolist(), batch.target_boxes.tolist(), batch.has_target.tolist()
    ):
        assert has == ("target_box" in by_question[q])
        expected = by_question[q]["target_box"] if has else [0.0] * 4
        assert box == torch.tensor(expected, dtype=torch.float32).tolist()
    assert batch.has_target.any() and not batch.has_target.all()
