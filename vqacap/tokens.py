"""The reserved token ids every vocabulary starts with, shared by the data (vqacap.data.vocab) and the models, which
need only these numbers and nothing else of the tokenizer."""

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)
