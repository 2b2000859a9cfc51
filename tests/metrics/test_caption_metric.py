"""CaptionMetrics: the torchmetrics validation metric over generated token ids."""

from __future__ import annotations

import pytest
import torch

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.metrics.captions import CaptionMetrics, evaluate_captions

WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "cat", "on", "the", "grass", "sits", "red", "car"]
ID = {w: i for i, w in enumerate(WORDS)}
REFERENCES = {
    7: ["A dog on the grass.", "The dog sits on grass!"],
    8: ["A cat sits.", "a cat on the car"],
    9: ["A red car.", "The car is red."],
}
METRICS = ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr")


def _ids(text: str, width: int) -> list[int]:
    ids = [BOS_ID, *(ID[w] for w in text.split()), EOS_ID]
    return ids + [PAD_ID] * (width - len(ids))


def test_equals_evaluate_captions_on_the_images_seen_with_repeats_and_varying_widths():
    metric = CaptionMetrics(REFERENCES, WORDS, metrics=METRICS)
    metric.update(torch.tensor([7, 8]), torch.tensor([_ids("a dog on grass", 8), _ids("a cat", 8)]))
    # The distributed sampler repeats image 7 to fill the last batch; tokens after <eos> are ignored.
    repeat = _ids("a dog on grass", 11)
    repeat[7:] = [ID["red"]] * 4
    metric.update(torch.tensor([7]), torch.tensor([repeat]))
    scores = metric.compute()
    expected = evaluate_captions(
        {i: REFERENCES[i] for i in (7, 8)}, {7: "a dog on grass", 8: "a cat"}, metrics=METRICS
    )
    assert scores == {**expected, "bad_endings": 0.0}
    assert list(scores) == [*METRICS, "bad_endings"] and scores["CIDEr"] > 0


def test_first_copy_of_a_repeated_image_is_kept():
    metric = CaptionMetrics(REFERENCES, WORDS, metrics=["Bleu_1"])
    metric.update(torch.tensor([9, 9]), torch.tensor([_ids("a red car", 6), _ids("the dog", 6)]))
    expected = evaluate_captions({9: REFERENCES[9]}, {9: "a red car"}, metrics=["Bleu_1"])
    assert metric.compute() == {**expected, "bad_endings": 0.0}


def test_decoding_stops_at_pad_skips_bos_and_keeps_unk_as_a_word():
    metric = CaptionMetrics(REFERENCES, WORDS, metrics=["Bleu_1"])
    tokens = torch.tensor([[BOS_ID, ID["a"], UNK_ID, ID["car"], PAD_ID, ID["dog"], EOS_ID]])
    metric.update(torch.tensor([9]), tokens)
    expected = evaluate_captions({9: REFERENCES[9]}, {9: "a <unk> car"}, metrics=["Bleu_1"])
    assert metric.compute() == {**expected, "bad_endings": 0.0}


def test_states_merged_from_two_processes_equal_one_process():
    # What torchmetrics does under DDP: the flat tensor states of each rank are concatenated.
    single = CaptionMetrics(REFERENCES, WORDS, metrics=METRICS)
    rank0 = CaptionMetrics(REFERENCES, WORDS, metrics=METRICS)
    rank1 = CaptionMetrics(REFERENCES, WORDS, metrics=METRICS)
    batches = [
        (torch.tensor([7, 8]), torch.tensor([_ids("a dog sits", 8), _ids("a cat on the car", 8)])),
        (torch.tensor([9, 7]), torch.tensor([_ids("the red car", 5), _ids("a dog sits", 5)])),
    ]
    for metric, (ids, tokens) in zip((rank0, rank1), batches):
        metric.update(ids, tokens)
    for ids, tokens in batches:
        single.update(ids, tokens)
    rank0.merge_state(rank1)
    assert rank0.compute() == single.compute()


def test_no_update_gives_no_scores_and_unknown_images_are_errors():
    metric = CaptionMetrics(REFERENCES, WORDS)
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert metric.compute() == {}
    metric.update(torch.tensor([5]), torch.tensor([_ids("a dog", 4)]))
    with pytest.raises(ValueError, match="1 generated captions are for images without references"):
        metric.compute()


def test_compute_accepts_states_concatenated_by_a_distributed_sync():
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "dog", "cat"]
    metric = CaptionMetrics({1: ["a dog"], 2: ["a cat"]}, words, metrics=("Bleu_1", "CIDEr"))
    metric.update(torch.tensor([1, 2]), torch.tensor([[4, 5, 2], [4, 6, 2]]))
    expected = metric.compute()
    # What torchmetrics' sync leaves in list states: one tensor per state, already concatenated over ranks.
    metric.image_ids = torch.cat(metric.image_ids)
    metric.lengths = torch.cat(metric.lengths)
    metric.tokens = torch.cat(metric.tokens)
    assert metric.compute() == expected and expected["Bleu_1"] > 0.99


def test_bad_endings_is_the_fraction_of_captions_ending_in_a_function_word():
    metric = CaptionMetrics(REFERENCES, WORDS, metrics=["CIDEr"])
    captions = {7: "a dog sits on the", 8: "a cat on the car", 9: "the red car a"}
    metric.update(torch.tensor(list(captions)), torch.tensor([_ids(c, 8) for c in captions.values()]))
    assert metric.compute()["bad_endings"] == pytest.approx(2 / 3)  # "the" and "a" end two of the three
