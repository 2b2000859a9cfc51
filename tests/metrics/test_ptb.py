"""The Python PTB tokenizer against coco-caption's (Stanford CoreNLP 3.4.1 in Java, via pycocoevalcap's PTBTokenizer)."""

from __future__ import annotations

import random
import shutil

import pytest

from tests.helpers.references import import_reference
from vqacap.metrics.captions.ptb import ptb_lines, tokenize, tokenize_captions

# Hand-written captions that exercise the tokenizer's rules (contractions, abbreviations, numbers, quotes, ...).
TRICKY = [
    "A man (wearing a hat) doesn't like \"cats\" & dogs' toys.",
    "The colour of the centre is grey... isn't it?",
    "It's 3,000.50 dollars, e.g. U.S.A. Mr. Smith's car -- fast!",
    "A dog/cat * star {braces} [brackets] can't won't gonna",
    "Two-year-old boy's half-eaten sandwich; 1/2 cup: yes",
    "'Quoted' `back' ``double'' \u201ccurly\u201d \u2018single\u2019 \u2014 dash \u2026 ellipsis",
    "email a@b.com http://www.x.com :) <html> 5pm $5 \u00a33 \u20ac4 #tag @user",
    "",
    "   ",
    "He lives in Calif.",
    "A man sits.",
    "He lives in Calif.",
    "a man sits.",
    "gonna wanna gotta lemme gimme cannot dunno 'tis 'twas nno",
    "Yahoo! is OK! magazine c++ c# f# e.g. i.e.",
    "12:30 1.5:30 3.14 .5 -3 +4 1,000 5 7/8 1/2 \u00bd 2-3 5-year-old",
    "x.jpg file.txt abc.com www.google.com http://a.b/c?d=e. 4.x 4.zzz my-file.txt",
    "I'm you're he'll we've she'd don't can't won't ain't isn't y'all o'clock O'Neil rock'n'roll",
    "'90s '70s 'em 'cause the dogs' bones. \"hello\" 'hi' ``quote''",
    "St. Louis Mr. Dr. Jr. Inc. Corp. vs. etc. al. No. 5 fig. 3 ca. 1990 a.m. p.m.",
    "well-known x-ray mid-1990s 1990s co-op e-mail re-do pre-war non-U.S.",
    ";-) :-( :P :D <3 ^_^ (-: :( (^_^) x_x",
    "hello...world . . . ... .... wait.. ok?! !! ?? -- --- - ---- \u2014\u2014 \u2013",
    "&amp; &lt; &gt; &quot; &apos; &nbsp; &mdash; &#123; &eacute;",
    "U.S. U.S.A The U.S. is big. It's U.S. policy. U.S. Their U.S. Who",
    "Pty. Field PTY. Field Pty. Ltd co. ltd So. Africa approx. 5 fig.3 pp. 12 Art. 3",
    "I. The Z. we A.B. It (555) 123-4567 555-1234 123-456-7890",
    "don'ts shouldn't've y'know can't've gov't int'l ma'am c'mon li'l o'o diff'rent",
    "caf\u00e9 na\u00efve \u03a9mega \u0130stanbul stra\u00dfe \u4e2d\u6587 emoji \U0001f600 ab\U0001f600cd",
    "A WOMAN IN A RED DRESS. Two Dogs Playing In The Snow.",
    "a\u00a0b tab\tsep  double  space",
    "x Calif.",
]


_WORDS = "a an the man woman dog cat sitting on in with of and is riding horse table pizza street two people"
_PIECES = (
    "don't can't won't it's that's o'clock y'all '90s 'em cannot gonna 3 12.5 1,000 3:30 1/2 5-year-old 2nd $5 50% "
    "e.g. i.e. etc. a.m. U.S. vs. ca. no. fig. well-known t-shirt x-ray www.x.com a@b.com @user #tag c++ AT&T R&D x/y "
    ":) ^_^ <b> x.jpg a.b.c yes!no O'Neil Mt. Jan. Calif. Inc. Co. Ltd. Jr. . , ; : ! ? ... -- - ( ) [ ] { } \" ' ` `` "
    "'' & / * # @ $ % + = < > _ ~ ^ | \\ \u2026 \u2014 \u2013 \u201c \u201d \u2018 \u2019 \u00ab \u00bb \u00bd \u00b0 "
    "\u00a9 \u20ac \u00a3 \u00a2 \u00e9 \u00f1 &amp; &quot; &lt; &nbsp;"
)


def _captions(seed: int, count: int) -> list[str]:
    """Caption-like strings with the pieces real captions and typos are made of."""
    rng = random.Random(seed)
    words = _WORDS.split()
    pieces = [*_PIECES.split(), "(555) 123-4567", "1 1/2", ". . .", "\u00a0", "\t"]
    affixes = [
        "n't",
        "'s",
        "'re",
        "'ve",
        "'ll",
        "'d",
        "'m",
        "\u2019s",
        "'",
        "s'",
        ".",
        ",",
        "!",
        "?",
        "...",
        "-",
        "'S",
    ]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(0, 16)):
            x = rng.random()
            if x < 0.45:
                token = rng.choice(words)
            elif x < 0.7:
                token = rng.choice(pieces)
            elif x < 0.85:
                token = rng.choice(words) + rng.choice(affixes)
            else:  # a few characters of anything printable
                token = "".join(chr(rng.randint(0x21, 0x7E)) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.1:
                token = token.capitalize() if rng.random() < 0.7 else token.upper()
            parts.append(token + rng.choice([" ", " ", " ", "", "  "]))
        out.append("".join(parts).rstrip() + rng.choice(["", ".", ".", " .", "!", "?"]))
    return out


def test_contractions_are_split_and_punctuation_dropped():
    assert tokenize_captions(["A man doesn't like the dog's toys."]) == [
        "a man does n't like the dog 's toys"
    ]


def test_parentheses_survive_because_lowercasing_comes_after_normalisation():
    # coco-caption's punctuation list names -LRB-, but the tokenizer lower-cases it to -lrb- first.
    assert tokenize_captions(["A cat (black) on a mat"]) == ["a cat -lrb- black -rrb- on a mat"]


def test_abbreviation_before_a_capitalised_next_caption_repeats_its_period():
    lines = ptb_lines("He lives in Calif.\nA man\nHe lives in Calif.\na man")
    assert lines == ["he lives in calif. .", "a man", "he lives in calif.", "a man"]


def test_numbers_hyphens_and_abbreviations_stay_whole():
    assert tokenize_captions(["A 5-year-old paid $1,000.50 at 3:30 p.m. for U.S. goods, e.g. hats"]) == [
        "a 5-year-old paid $ 1,000.50 at 3:30 p.m. for u.s. goods e.g. hats"
    ]


def test_quotes_ellipses_and_dashes_are_normalised_then_removed():
    assert tokenize_captions(["\u201cHi\u201d -- she said\u2026 \u2018ok\u2019"]) == ["hi she said ok"]


def test_spaces_inside_a_phone_number_or_fraction_become_non_breaking():
    assert ptb_lines("call 555 123 4567 for 5 7/8 cups") == [
        "call 555\u00a0123\u00a04567 for 5\u00a07/8 cups"
    ]


def test_empty_and_blank_captions_give_empty_strings():
    assert tokenize_captions(["", "   ", "a dog"]) == ["", "", "a dog"]


def test_drop_in_tokenize_groups_by_image():
    captions = {1: [{"caption": "A dog."}, {"caption": "The cat!"}], 2: [{"caption": "It's red"}]}
    assert tokenize(captions) == {1: ["a dog", "the cat"], 2: ["it 's red"]}


@pytest.fixture(scope="module")
def java_tokenizer():
    if shutil.which("java") is None:
        pytest.skip("java is not installed: cannot run coco-caption's Stanford PTBTokenizer for reference")
    ptbtokenizer = import_reference("pycocoevalcap.tokenizer.ptbtokenizer")
    return ptbtokenizer.PTBTokenizer()


def test_equals_cocos_java_tokenizer_on_tricky_and_generated_captions(java_tokenizer):
    captions = TRICKY + _captions(seed=0, count=2500)
    # Odd line breaks (\r, U+2028) shift coco-caption's lines; they go last so the shift touches only them.
    captions += ["a\rb c", "x\u2028y", "the end"]
    images = {i: [{"caption": c}] for i, c in enumerate(captions)}
    expected = java_tokenizer.tokenize(images)
    got = tokenize(images)
    different = [(captions[i], expected[i], got[i]) for i in expected if expected[i] != got.get(i)]
    assert not different, different[:5]
    assert got.keys() == expected.keys()


def test_equals_cocos_java_tokenizer_on_random_characters(java_tokenizer):
    rng = random.Random(1)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] * 8 + list(
        "\u00a0\u00ad\u2019\u201c\u2026\u00e9\u00bd\u20ac\u4e2d\u0416"
    )
    captions = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(1500)]
    images = {i: [{"caption": c}] for i, c in enumerate(captions)}
    expected = java_tokenizer.tokenize(images)
    got = tokenize(images)
    different = [(captions[i], expected[i], got[i]) for i in expected if expected[i] != got[i]]
    assert not different, different[:5]
