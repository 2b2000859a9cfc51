import pytest
import torch

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Vocabulary, tokenize


def test_tokenize_lowercases_and_strips_punctuation():
    assert tokenize("A man, riding a HORSE.") == ["a", "man", "riding", "a", "horse"]
    assert tokenize("  two-tone  dog's  bowl!!") == ["two", "tone", "dog", "s", "bowl"]
    assert tokenize("...") == []


def test_build_keeps_frequent_words_and_maps_rare_to_unk():
    vocab = Vocabulary.build(["a red circle", "a blue circle", "a zebra"], min_count=2)
    assert vocab.words[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert vocab.words[4:] == ["a", "circle"]
    assert vocab.encode("a zebra circle") == [vocab.index["a"], UNK_ID, vocab.index["circle"]]


def test_round_trip_through_file(tmp_path):
    vocab = Vocabulary.build(["a red circle above a blue square"], min_count=1, max_length=5)
    vocab.save(tmp_path / "v.json")
    loaded = Vocabulary.load(tmp_path / "v.json")
    assert loaded.words == vocab.words and loaded.max_length == 5
    ids = loaded.encode_batch(["A red circle above a blue square."], add_bos_eos=True)
    assert ids.shape == (1, 7)
    assert ids[0, 0] == BOS_ID and ids[0, -1] == EOS_ID  # truncated to 5 words, then <eos>
    assert loaded.decode(ids[0]) == "a red circle above a"
    assert loaded.decode_batch(torch.tensor([[4, 5, EOS_ID, 6], [4, PAD_ID, 5, 5]])) == ["a above", "a"]


def test_empty_caption_is_an_error_naming_the_field():
    vocab = Vocabulary(["a"])
    with pytest.raises(ValueError, match=r"captions.json: caption\[1\]: empty text"):
        vocab.encode_batch(["a", " . "], field="captions.json: caption")


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Vocabulary.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: not a vocabulary file"):
        Vocabulary.load(tmp_path / "bad.json")


def test_decomposed_text_is_one_word_for_the_vocabulary_and_the_metric():
    """ "e\u0301cole" (e + combining accent) was "e", "cole" for the vocabulary and "école" for the metric."""
    from vqacap.metrics.captions.ptb import tokenize_captions

    decomposed, composed = "Une e\u0301cole.", "Une \u00e9cole."
    assert tokenize(decomposed) == tokenize(composed) == ["une", "\u00e9cole"]
    assert tokenize_captions([decomposed]) == tokenize_captions([composed]) == ["une \u00e9cole"]


def test_from_words_reads_a_full_word_list_and_refuses_one_without_specials():
    vocab = Vocabulary.build(["a circle", "a square"], min_count=1, max_length=5)
    again = Vocabulary.from_words(vocab.words, max_length=5)
    assert again.words == vocab.words and again.max_length == 5
    with pytest.raises(ValueError, match="starts with <pad>"):
        Vocabulary.from_words(["a", "circle"])
