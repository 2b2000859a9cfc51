"""Bad endings: the fraction of generated captions whose last word is a function word ("a man riding a horse on the").

Self-critical training with a reward that ignores the end of a caption learns to stop mid-sentence; this figure makes
that visible beside CIDEr-D. The words are the list ruotianluo/self-critical.pytorch counts in its evaluation
(`eval_utils.bad_endings`: articles, prepositions, forms of "be") plus "and".
"""

from __future__ import annotations

from collections.abc import Iterable

BAD_ENDINGS = frozenset(
    {"a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon", "near", "to", "is", "are",
     "am", "and"}
)  # fmt: skip


def bad_endings(captions: Iterable[str]) -> float:
    """Fraction of the (tokenized, space-separated) captions whose last word is in BAD_ENDINGS; empty ones do not."""
    captions = list(captions)
    if not captions:
        return 0.0
    bad = sum(1 for c in captions if c.split() and c.split()[-1] in BAD_ENDINGS)
    return bad / len(captions)
