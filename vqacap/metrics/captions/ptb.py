"""PTB tokenization of captions as coco-caption does it, in Python (no Java).

coco-caption (pycocoevalcap 1.2) writes all captions of a call, one per line, to a file, runs Stanford CoreNLP 3.4.1's
`edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase` on it, splits the output into lines and drops the
tokens in `PUNCTUATIONS`. This module re-implements that tokenizer's lexer (a JFlex scanner: at each position the rule
with the longest match wins, ties go to the earlier rule, `a/b` rules match `a` only when `b` follows) with Python
regular expressions, rule by rule, and is tested against the Java tokenizer on many captions.

Quirks reproduced on purpose: lower-casing happens after normalisation, so `(` becomes `-lrb-` and survives the
punctuation filter (the filter lists `-LRB-`); a rule's trailing context can look into the next caption (`Calif.` then
a caption starting with a capital gives `calif. .`); spaces inside phone numbers, fractions and SGML tags become
non-breaking spaces inside one token.

Not for: general English text processing (use CoreNLP); this mirrors one old version's behaviour, bugs included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache

import numpy as np

from vqacap.data.formats import normal_text

PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_NL = "\n"  # the lexer's newline token (CoreNLP's *NL*)


# ---- Macros (names as in CoreNLP's PTBLexer.flex) ----------------------------------------------------------------
# Letters and digits Unicode added after the version CoreNLP 3.4.1's lexer tables were built from (found by running the
# Java tokenizer on every BMP character); they are not part of words there.
_NEWER_UNICODE = re.compile(
    "[\u037f\u0528-\u052f\u0560\u0588\u05ef\u0860-\u086a\u0870-\u0887\u0889-\u088e\u08a1\u08ad-\u08c9\u0978\u0980"
    "\u09fc\u0af9\u0c34\u0c5a\u0c5d\u0c80\u0cdd\u0d04\u0d54-\u0d56\u0d5f\u0de6-\u0def\u0e86\u0e89\u0e8c\u0e8e-\u0e93"
    "\u0e98\u0ea0\u0ea8-\u0ea9\u0eac\u13f5\u13f8-\u13fd\u16f1-\u16f8\u170d\u171f\u1878\u191d-\u191e\u19b0-\u19c0"
    "\u19c8-\u19c9\u1b4c\u1c80-\u1c88\u1c90-\u1cba\u1cbd-\u1cbf\u1cf2-\u1cf3\u1cfa\u2c2f\u2c5f\u312e-\u312f"
    "\u31bb-\u31bf\u4db6-\u4dbf\u9fcd-\u9fff\ua698-\ua69d\ua78f\ua794-\ua79f\ua7ab-\ua7ca\ua7d0-\ua7d1\ua7d3"
    "\ua7d5-\ua7d9\ua7f2-\ua7f7\ua8fd-\ua8fe\ua9e0-\ua9e4\ua9e6-\ua9fe\uaa7e-\uaa7f\uab30-\uab5a\uab5c-\uab69"
    "\uab70-\uabbf]"
)


_BMP = "".join(map(chr, [*range(0xD800), *range(0xE000, 0x10000)]))


def _char_class(predicate: Callable[[str], bool]) -> str:
    """A regex character class body (no brackets): the BMP characters satisfying `predicate` in CoreNLP's Unicode."""
    chars = _NEWER_UNICODE.sub("", "".join(filter(predicate, _BMP)))
    codes = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    breaks = np.flatnonzero(np.diff(codes) != 1)
    starts, ends = codes[np.r_[0, breaks + 1]], codes[np.r_[breaks, len(codes) - 1]]
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in zip(starts, ends))


_ALPHA = _char_class(str.isalpha) + "\u1885\u1886"  # JFlex [:letter:] (Java Character.isLetter)
_UPPER = _char_class(str.isupper)
_LET = f"[{_ALPHA}]"
_SPLET = r"&[aeiouAEIOU](?i:acute|grave|uml);"
# Characters the lexer counts as letters although Unicode does not (combining marks, soft hyphen, ...).
_LETTER_EXTRA = (
    r"\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D\u0384\u0385\u03CF\u03F6"
    r"\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4"
    r"\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F"
    r"\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963"
    r"\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F"
    r"\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44"
    r"\u0D46-\u0D48\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD"
)
_LETTER = rf"(?:[{_ALPHA}{_LETTER_EXTRA}]|{_SPLET})"
_DIGIT = f"[{_char_class(str.isdecimal)}\\u07C0-\\u07C9]"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACES = f"{_SPACE}+"
_NEWLINE = r"(?:\r\n|[\r\n\u2028\u2029\u000B\u000C\u0085])"
_SPACENL = rf"(?:{_SPACE}|{_NEWLINE})"
_ATTR_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
_SGML = (
    rf"<(?:[!?][A-Za-z\-][^>\r\n]*|{_ATTR_NAME}(?:[ ]+(?:{_ATTR_NAME}[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\"|{_ATTR_NAME})"
    rf"|{_ATTR_NAME}))*[ ]*/?|/{_ATTR_NAME})[ ]*>"
)
_SENTEND = rf"{_SPACENL}(?:{_SPACENL}|[{_UPPER}]|{_SGML})"
_WORD = rf"{_LETTER}(?:{_LETTER}|{_DIGIT})*(?:[.!?]{_LETTER}(?:{_LETTER}|{_DIGIT})*)*"
_APOS = r"(?:['\u0092\u2019]|&(?i:apos);)"
_APOSETC = rf"(?:{_APOS}|[`\u0091\u2018\u201B])"
_REDAUX = rf"{_APOS}(?:[msdMSD]|(?i:re|ve|ll))"
_SWORD = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_SREDAUX = rf"[nN]{_APOSETC}[tT]"
_NUM_ALTS = (rf"{_DIGIT}+", rf"{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+")
_HYPHEN = r"[\-_\u058A\u2010\u2011]"
_ACRO_SPECIAL = r"(?i:canada|sino|korean|eu|japan|non)-(?i:u\.s)|(?i:u\.s\.-)(?i:u\.k|u\.s\.s\.r)"
_ACRO_ALTS = (r"[A-Za-z](?:\.[A-Za-z])*", _ACRO_SPECIAL)  # a single letter counts (as in "I.")
_ACRO2 = rf"(?:[A-Za-z](?:\.[A-Za-z])+|{_ACRO_SPECIAL})"
_DOLSIGN2 = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_MISCSYMBOL = (
    r"[+%&~\^|\\\u00A6\u00A7\u00A8\u00A9\u00AC\u00AE\u00AF\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE\u05C0"
    r"\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A\u066D\u0703-\u070D\u07F6"
    r"\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F"
    r"\u208A-\u208E\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40"
    r"\uFF5B-\uFF65]"
)
_QUOTES_ALTS = (
    _APOS,
    "''",
    r"[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}",
)


def _caseless(pattern: str) -> str:
    """JFlex %caseless: letters outside character classes match both cases; classes stay as written."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c.isalpha():
            c = f"[{c.lower()}{c.upper()}]"
        out.append(c)
        i += 1
    return "".join(out)


def _words(*lists: str) -> str:
    """Caseless alternatives, given as whitespace-separated lists (JFlex `a|b|c` under %caseless)."""
    return "(?:" + "|".join(_caseless(a) for words in lists for a in words.split()) + ")"


_ABMONTH = "jan feb mar apr jun jul aug sep sept oct nov dec"
_ABDAYS = "mon tue tues wed thu thurs fri"
_ABSTATE = (
    "ala ariz [A]z [A]rk calif colo conn ct dak [D]el fla ga [I]ll ind kans? ky [L]a [M]ass md mich minn [M]iss mo "
    "mont neb nev okla [O]re [P]a penn tenn [T]ex va vt [W]ash wisc? wyo"
)
_ABCOMP = "inc cos? corp pp?t[ye]s? ltd plc rt bancorp bhd assn univ intl sys"
_ABNUM = "tel est ext sq"
_ABPTIT = "jr sr bros (?:ed|ph)\\.d blvd rd esq"
_ABBREV1 = _words(_ABMONTH, _ABDAYS, _ABSTATE, _ABCOMP, _ABNUM, _ABPTIT, "etc al seq bldg") + r"\."
_ABTITLE = (
    "mr mrs ms [M]iss drs? profs? sens? reps? attys? lt col gen messrs govs? adm rev maj sgt cpl pvt mt capt ste? "
    "ave pres lieut hon brig co?mdr pfc spc supts? det ft adj adv asst assoc ens insp mlle mme msgr sfc"
)
_ABCOMP2 = "invt elec natl m[ft]g dept"
_ABBREV4_ALTS = (
    _words(_ABTITLE, r"vs alex wm jos cie a\.k\.a cf treas ph", _ABCOMP2),
    *_ACRO_ALTS,
)
_ABBREV3 = _words("ca figs? prop nos? art bldg pp op") + r"\."
_ACRONYM_NEXT = _words(
    "[A]bout [A]ccording [A]dditionally [A]fter [A]n [A] [A]s [A]t [B]ut [E]arlier [H]e [H]er [H]ere [H]owever [I]f "
    "[I]n [I]t [L]ast [M]any [M]ore [N]ow [O]nce [O]ne [O]ther [O]ur [S]he [S]ince [S]o [S]ome [S]uch [T]hat [T]he "
    "[T]heir [T]hen [T]here [T]hese [T]hey [T]his [W]e [W]hen [W]hile [W]hat [Y]et [Y]ou",
    r"[M]r\. [M]s\.",
)
_APOWORD_ALTS = (
    rf"{_APOS}(?i:n){_APOS}?",
    rf"[lLdDjJ]{_APOS}",
    rf"(?i:dunkin){_APOS}",
    rf"(?i:somethin){_APOS}",
    rf"(?i:ol){_APOS}",
    rf"{_APOS}(?i:em)",
    rf"[A-HJ-XZn]{_APOSETC}{_LET}{{2}}{_LET}*",
    rf"{_APOS}[2-9]0(?i:s)",
    rf"{_APOS}(?i:till?)",
    rf"{_LET}{_LET}*[aeiouyAEIOUY]{_APOSETC}[aeiouA-Z]{_LET}*",
    rf"{_APOS}(?i:cause)",
    r"(?i:cont'd)\.?",
    r"(?i:'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l)",
    rf"[oO]{_APOSETC}[oO]",
)
_PHONE_ALTS = (
    r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}",
    r"(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}",
)
_THING = (
    rf"(?:[dDoOlL]{_APOSETC}(?:{_LET}|{_DIGIT}))?(?:{_LET}|{_DIGIT})+"
    rf"(?:{_HYPHEN}(?:[dDoOlL]{_APOSETC}(?:{_LET}|{_DIGIT}))?(?:{_LET}|{_DIGIT})+)*"
)
_FILENAME_EXT = _words(
    "bat bmp c class cgi cpp dll doc docx exe gif gz h htm html jar java jpeg jpg mov mp3 pdf php pl png ppt ps py sql "
    "tar txt wav x xml zip"
)
_FILENAME = rf"(?:{_LET}|{_DIGIT})+(?:\.(?:{_LET}|{_DIGIT})+)*\.{_FILENAME_EXT}"
_THINGA = r"[A-Z]+(?:(?:[+&]|&(?i:amp);)[A-Z]+)+"
_THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_HTHING = rf"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{_ACRO2}\.))+"
_INSENTP = r"[,;:\u3001]"


# ---- Token normalisations ------------------------------------------------------------------------------------------
def _remove_soft_hyphens(text: str) -> str:
    return text.replace("\u00ad", "") or "-"


def _normalize_amp(text: str) -> str:
    return re.sub("(?i:&amp;)", "&", text)


_LEFT_SINGLE = re.compile("[\u0091\u2018\u201b\u2039]")
_RIGHT_SINGLE = re.compile("[\u0092\u2019\u203a]")
_LEFT_DOUBLE = re.compile("[\u0093\u201c\u00ab]")
_RIGHT_DOUBLE = re.compile("[\u0094\u201d\u00bb]")


def _latex_quotes(text: str, probably_left: bool) -> str:
    text = re.sub("&apos;|'", "`" if probably_left else "'", text)
    text = re.sub('"|&quot;', "``" if probably_left else "''", text)
    text = _LEFT_SINGLE.sub("`", text)
    text = _RIGHT_SINGLE.sub("'", text)
    text = _LEFT_DOUBLE.sub("``", text)
    return _RIGHT_DOUBLE.sub("''", text)


def _normalize_currency(text: str) -> str:
    text = text.replace("\u00a2", "cents").replace("\u00a3", "#")
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", text)


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}

# ---- Rules, in the lexer's order --------------------------------------------------------------------------------------
# An action gets the token text (without trailing context) and returns (output or None to skip, characters consumed);
# consuming fewer characters than the token is JFlex's yypushback: the rest is lexed again.
_Action = Callable[[str], tuple]


def _same(tok: str) -> tuple:
    return tok, len(tok)


def _skip(tok: str) -> tuple:
    return None, len(tok)


def _with_final_period(tok: str) -> tuple:
    # The abbreviation keeps its period and the period is also returned again as a sentence end.
    return tok, len(tok) - 1


def _acronym(tok: str) -> tuple:
    if len(tok) == 2:  # "I." before "The": the letter, then the period
        return tok[0], 1
    return tok, len(tok) - 1


def _pushback(n: int) -> _Action:
    return lambda tok: (tok[:-n], len(tok) - n)


def _quote(probably_left: bool) -> _Action:
    return lambda tok: (_latex_quotes(tok, probably_left), len(tok))


def _replace(out: str) -> _Action:
    return lambda tok: (out, len(tok))


def _nbsp(tok: str) -> tuple:
    return tok.replace(" ", "\u00a0"), len(tok)


def _phone(tok: str) -> tuple:
    return tok.replace(" ", "\u00a0").replace("(", "-LRB-").replace(")", "-RRB-"), len(tok)


def _hyphens(tok: str) -> tuple:
    return ("--" if 3 <= len(tok) <= 4 else tok), len(tok)


def _soft(tok: str) -> tuple:
    return _remove_soft_hyphens(tok), len(tok)


def _amp(tok: str) -> tuple:
    return _normalize_amp(tok), len(tok)


def _smiley(tok: str) -> tuple:
    return tok.replace("(", "-LRB-").replace(")", "-RRB-"), len(tok)


# (name, alternatives, trailing context or None, action, longest): with `longest`, the rule's longest match is searched
# explicitly (Python's regex engine returns the first match, JFlex the longest).
_RULES_SPEC: list[tuple[str, Sequence[str], str | None, _Action, bool]] = [
    ("PROG_LANGS", [r"(?i:c\+\+|[cf]#)"], None, _same, False),
    ("ASSIMILATIONS3", [r"(?i:cannot|'twas)"], None, _pushback(3), False),
    ("ASSIMILATIONS2", [r"(?i:'tis|gonna|gotta|lemme|gimme|wanna)"], None, _pushback(2), False),
    ("SGML", [_SGML], None, _nbsp, True),
    ("SPMDASH", [r"&(?i:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]"], None, _replace("--"), False),
    ("SPAMP", [r"&(?i:amp);"], None, _amp, False),
    ("SPPUNC", [r"&(?i:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"], None, _same, False),
    ("WORD/REDAUX", [_WORD], _REDAUX, _soft, False),
    ("SWORD/SREDAUX", [_SWORD], _SREDAUX, _soft, False),
    ("WORD", [_WORD], None, _soft, False),
    ("APOWORD", _APOWORD_ALTS, None, _same, False),
    ("APOWORD2", [rf"[yY]{_APOS}"], _LET, _same, False),
    ("FULLURL", [r"(?i:https?)://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-]"], None, _same, True),
    (
        "LIKELYURL",  # `,-_` in the second class is a range (0x2C-0x5F: digits, capitals, ...), as in the Java grammar
        [
            r"(?:(?:(?i:www)\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){}$,-_]+\.)+"
            r"(?i:com|net|org|edu)))(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},\-])?"
        ],
        None,
        _same,
        True,
    ),
    (
        "EMAIL",
        [
            r"(?:&(?i:lt);|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|()\u00A0{}]*@(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*"
            r"[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:&(?i:gt);|>)?"
        ],
        None,
        _same,
        True,
    ),
    ("TWITTER", [r"@[a-zA-Z_][a-zA-Z_0-9]*", rf"#{_LETTER}+"], None, _same, False),
    ("REDAUX/", [_REDAUX], r"[^A-Za-z]", _quote(False), False),
    ("SREDAUX", [_SREDAUX], None, _quote(False), False),
    ("DATE", [rf"{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{1,2}}[\-/]{_DIGIT}{{2,4}}"], None, _same, False),
    ("NUMBER", [rf"[\-+]?{alt}" for alt in _NUM_ALTS], None, _soft, False),
    (
        "SUBSUPNUM",
        [r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"],
        None,
        _same,
        False,
    ),
    (
        "FRAC",
        [rf"(?:{_DIGIT}{{1,4}}[\- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}"],
        None,
        _nbsp,
        True,
    ),
    ("FRAC2", [r"[\u00BC\u00BD\u00BE\u2153-\u215E]"], None, lambda t: (_FRACTIONS.get(t, t), 1), False),
    (
        "TBSPEC",
        [
            r"-(?i:rrb|lrb|rcb|lcb|rsb|lsb)-|(?i:c\.d\.s|pro-|anti-|s(?:&|&amp;)p-500|s(?:&|&amp;)ls)",
            rf"(?i:cap){_APOS}(?i:n)|(?i:c){_APOS}(?i:est)",
        ],
        None,
        _amp,
        False,
    ),
    ("THING3", [_THING3], None, _same, True),
    ("DOLSIGN", [r"[A-Z]*\$|#"], None, _same, False),
    ("DOLSIGN2", [_DOLSIGN2], None, lambda t: (_normalize_currency(t), 1), False),
    (
        "ACRONYM/",
        [rf"{a}\." for a in _ACRO_ALTS],
        rf"{_SPACENL}+(?:{_ACRONYM_NEXT}|{_SGML}){_SPACENL}",
        _acronym,
        False,
    ),
    ("ABBREV3/", [_ABBREV3], rf"{_SPACENL}?{_DIGIT}", _same, False),
    ("PTY/", [r"(?i:pt[ey]|co)\."], rf"{_SPACE}(?i:ltd|lim)", _same, False),
    ("ABBREV1/SENTEND", [_ABBREV1], _SENTEND, _with_final_period, False),
    ("ABBREV1/", [_ABBREV1], r"[\s\S][\s\S]", _same, False),
    ("ABBREV1", [_ABBREV1], None, _with_final_period, False),
    ("ABBREV2", [rf"{a}\." for a in _ABBREV4_ALTS], None, _same, False),
    ("ABBREV4/", _ABBREV4_ALTS, _SPACE, _same, False),
    ("ACRO/", _ACRO_ALTS, _SPACENL, _same, False),
    ("TBSPEC2/", [rf"{_APOS}[0-9][0-9]"], _SPACENL, _same, False),
    ("FILENAME/", [_FILENAME], rf"{_SPACENL}|[.?!,]", _same, True),
    ("WORD./", [rf"{_WORD}\."], _INSENTP, _soft, False),
    ("PHONE", _PHONE_ALTS, None, _phone, True),
    ("DBLQUOT/", [r'"|&(?i:quot);'], r"[A-Za-z0-9$]", _quote(True), False),
    ("DBLQUOT", [r'"|&(?i:quot);'], None, _quote(False), False),
    ("DEL", [r"\x7f"], None, _skip, False),
    ("LESSTHAN", [r"<|&(?i:lt);"], None, _replace("<"), False),
    ("GREATERTHAN", [r">|&(?i:gt);"], None, _replace(">"), False),
    ("SMILEY/", [r"[<>]?[:;=][\-o*']?[()DPdpO\\{@|\[\]]"], r"[^A-Za-z0-9]", _smiley, False),
    (
        "ASIANSMILEY",
        [
            r"[\^x=~<>]\.\[\^x=~<>]",
            r"[\-\^x=~<>']_[\-\^x=~<>']",
            r"\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)",
            r"\([\^x=~<>']-[\^x=~<>'`]\)",
        ],
        None,
        _smiley,
        False,
    ),
    ("LCB", [r"\{"], None, _replace("-LCB-"), False),
    ("RCB", [r"\}"], None, _replace("-RCB-"), False),
    ("LSB", [r"\["], None, _replace("-LSB-"), False),
    ("RSB", [r"\]"], None, _replace("-RSB-"), False),
    ("LRB", [r"\("], None, _replace("-LRB-"), False),
    ("RRB", [r"\)"], None, _replace("-RRB-"), False),
    ("HYPHENS", [r"-+"], None, _hyphens, False),
    ("LDOTS", [r"\.{3,5}", r"(?:\.[ \u00A0]){2,4}\.", r"[\u0085\u2026]"], None, _replace("..."), True),
    ("FNMARKS", [r"@+|#+|_+"], None, _same, False),
    ("ASTS", [r"\*+|(?:\\\*){1,3}"], None, _same, False),
    ("INSENTP", [_INSENTP], None, _same, False),
    ("BANGS", [r"[?!]+"], None, _same, False),
    ("PERIOD", ["[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"], None, _same, False),
    ("EQUALS", [r"="], None, _same, False),
    ("SLASH", [r"/"], None, _same, False),
    ("HTHING./", [rf"{_HTHING}\."], _INSENTP, _soft, True),
    ("HTHING", [_HTHING], None, _soft, True),
    ("THING./", [rf"{_THING}\."], _INSENTP, _same, False),
    ("THING", [_THING], None, _same, False),
    ("THINGA./", [rf"{_THINGA}\."], _INSENTP, _amp, False),
    ("THINGA", [_THINGA], None, _amp, False),
    ("LEFTQUOTE/", [r"'"], r"[A-Za-z][^ \t\n\r\u00A0]", _quote(True), False),
    ("REDAUX", [_REDAUX], None, _quote(False), False),
    ("QUOTES", _QUOTES_ALTS, None, _quote(False), False),
    ("FAKEDUCKFEET", [r"<<|>>"], None, _same, False),
    ("MISCSYMBOL", [_MISCSYMBOL], None, _same, False),
    ("SPACES", [rf"\x00|{_SPACES}|[\u200B\u200E\u200F\uFEFF]"], None, _skip, False),
    ("NEWLINE", [_NEWLINE], None, lambda t: (_NL, len(t)), False),
    ("NBSP", [r"&(?i:nbsp);"], None, _skip, False),
]


class _Rule:
    __slots__ = ("name", "patterns", "action", "longest", "has_context")

    def __init__(
        self, name: str, alternatives: Sequence[str], context: str | None, action: _Action, longest: bool
    ):
        self.name = name
        self.has_context = context is not None
        # One pattern per top-level alternative: JFlex takes the longest, Python's `|` the first that matches.
        if context is not None:
            self.patterns = [re.compile(f"(?P<tok>{a})(?:{context})") for a in alternatives]
        else:
            self.patterns = [re.compile(a) for a in alternatives]
        self.action = action
        self.longest = longest


_MAX_TOKEN = 200  # longest-match search window (characters)

# Fast paths for what most captions are made of; each is exactly what the rules above give in that context.
# A plain ASCII word followed by a space, a newline, the end, or one of , ; : ! ? . that is itself followed by a space,
# a newline or the end (and for "." not by a spaced ellipsis); a lone such punctuation mark; a run of spaces; a newline.
_END = r"(?:[ \t\n]|\Z)"
_FAST = (
    rf"(?P<word>[A-Za-z]+)(?=[ \t\n]|\Z|[,;:!?]{_END}|(?P<dot>\.)(?:[\n]|\Z|[ \t](?!\.)))"
    rf"|(?P<punct>[,;:!?](?={_END})|\.(?=[\n]|\Z|[ \t](?!\.)))"
    r"|(?P<space>[ \t]+)|(?P<newline>\n)"
)
# Words the fast path must leave to the rules: assimilations, and abbreviations when a period follows.
_NOT_PLAIN = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ABBREVIATION = "|".join(
    [_ABBREV1, _ABBREV3, r"(?i:pt[ey]|co)\."] + [rf"(?:{a})\." for a in (*_ABBREV4_ALTS, *_ACRO_ALTS)]
)


@cache
def _compiled() -> tuple[list[_Rule], re.Pattern, re.Pattern]:
    """The rules, the fast path and the abbreviation test, compiled on first use (it takes about a second)."""
    return [_Rule(*spec) for spec in _RULES_SPEC], re.compile(_FAST), re.compile(_ABBREVIATION)


_abbreviation_cache: dict[str, bool] = {}


def _is_abbreviation(word: str) -> bool:
    known = _abbreviation_cache.get(word)
    if known is None:
        known = _abbreviation_cache[word] = _compiled()[2].fullmatch(word + ".") is not None
    return known


def _longest(pattern: re.Pattern, text: str, pos: int, first_end: int) -> int:
    end = min(len(text), pos + _MAX_TOKEN)
    for stop in range(end, first_end, -1):
        if pattern.fullmatch(text, pos, stop):
            return stop
    return first_end


def _lex(text: str) -> list[str]:
    """Tokens of `text` as CoreNLP 3.4.1's PTBLexer with tokenizeNLs gives them; newlines are "\\n" tokens."""
    out: list[str] = []
    pos, n = 0, len(text)
    rules, fast_path, _ = _compiled()
    fast = fast_path.match
    while pos < n:
        m = fast(text, pos)
        if m is not None:
            kind = m.lastgroup
            if kind == "word" or kind == "dot":
                word = m.group("word")
                if word.lower() not in _NOT_PLAIN and not (m.group("dot") and _is_abbreviation(word)):
                    out.append(word)
                    pos = m.end("word")
                    continue
            elif kind != "space":
                out.append(m.group())
                pos = m.end()
                continue
            else:
                pos = m.end()
                continue
        best_end, best_rule, best_match = pos, None, None
        for rule in rules:
            for pattern in rule.patterns:
                m = pattern.match(text, pos)
                if m is None:
                    continue
                end = m.end()
                if rule.longest:
                    end = _longest(pattern, text, pos, end)
                    if end != m.end():
                        m = pattern.fullmatch(text, pos, end)
                if end > best_end:
                    best_end, best_rule, best_match = end, rule, m
        if best_rule is None:  # untokenizable character: CoreNLP deletes it (and logs a warning)
            pos += 1
            continue
        token = best_match.group("tok") if best_rule.has_context else best_match.group()
        output, consumed = best_rule.action(token)
        if output is not None:
            out.append(output)
        pos += consumed
    return out


def ptb_lines(text: str) -> list[str]:
    """What `PTBTokenizer -preserveLines -lowerCase` prints for `text`, split into lines."""
    pieces, line_start = [], True
    for token in _lex(text):
        if token == _NL:
            pieces.append(_NL)
            line_start = True
        else:
            if not line_start:
                pieces.append(" ")
            pieces.append(token.lower())
            line_start = False
    # A token may itself hold a newline (an SGML tag spanning lines): it breaks the line as in Java's output.
    return "".join(pieces).split(_NL)


def _strip_punctuation(line: str) -> str:
    return " ".join(w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)


def tokenize_captions(captions: Iterable[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on a list of captions: lower-cased, PTB-tokenized, punctuation tokens removed.

    The captions are lexed together, one per line, exactly as pycocoevalcap feeds them to Java (so a caption's last token
    may depend on the next caption's first characters). The result has one string per caption.
    """
    captions = [normal_text(c).replace("\n", " ") for c in captions]  # as the training vocabulary reads them
    if not captions:
        return []
    lines = ptb_lines("\n".join(captions))
    # A caption containing another newline character (\r, U+2028, ...) shifts the lines, as it does in pycocoevalcap.
    return [_strip_punctuation(line) for line, _ in zip(lines, captions)]


def tokenize(captions_for_image: dict) -> dict:
    """Drop-in for pycocoevalcap's `PTBTokenizer().tokenize`: {id: [{"caption": str}, ...]} -> {id: [str, ...]}."""
    ids = [k for k, v in captions_for_image.items() for _ in range(len(v))]
    captions = [c["caption"] if isinstance(c, dict) else c for v in captions_for_image.values() for c in v]
    result: dict = {}
    for k, caption in zip(ids, tokenize_captions(captions)):
        result.setdefault(k, []).append(caption)
    return result
