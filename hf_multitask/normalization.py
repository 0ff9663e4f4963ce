"""Text normalisers for inference: `normalize_ptb` rewrites raw text into the tokenised Penn Treebank form of the
SST sentences (checked on every sentence of ../shared/data), so that a model trained on them reads raw text as it
read its training data."""

from __future__ import annotations

import re
from collections.abc import Callable

# ---- PTB normalisation (the form of the SST sentences, checked on every sentence of ../shared/data) ----

_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "jr", "sr", "st", "vs", "etc", "inc", "co", "corp", "ltd", "no", "bros",
                  "al", "sept", "wash"}  # the ones SST keeps with their period (Mr. / vs. / Bros. / Wash.)
_INITIALS = re.compile(r"^(?:[A-Za-z]\.)+$")  # J. / U.S. / i.e. / P.O.V.
_NOT_AN_OPENING_QUOTE = r"(?:s|re|ve|ll|d|m|em|til|n)\b|\d"  # 'em / 'til / 'n' / '70s start with an apostrophe
_PTB_RULES = [  # (pattern, replacement), applied in this order
    (re.compile("[\u201c\u201e]"), ' " '),  # curly double quotes: resolved to `` / '' below
    (re.compile("\u201d"), " '' "),
    (re.compile("\u2018"), "`"),
    (re.compile("[\u2019\u02bc]"), "'"),
    (re.compile("\u2026"), " ... "),
    (re.compile("[\u2013\u2014]"), " -- "),
    (re.compile(r'(?<![^\s(\[{])"'), " `` "),  # a double quote at the start of a word opens
    (re.compile(r'"'), " '' "),
    (re.compile(r"\("), " -LRB- "),
    (re.compile(r"\)"), " -RRB- "),
    (re.compile(r"\\?([/*])"), r"\\\1"),  # co-writer\/director, \*\*\*
    (re.compile(r"\.{3,}"), " ... "),
    (re.compile(r"-{2,}"), " -- "),  # hyphenated words stay whole
    (re.compile(r"([,:])(?!\d)|(?<!\d)([,:])"), r" \1\2 "),  # 10,000 stays whole
    (re.compile(r"[;!?]+|[$#%=+]|(?<![A-Z])&|&(?![A-Z])"), r" \g<0> "),  # ?!? is one token; R&B stays whole
    (re.compile(r"''"), " '' "),
    (re.compile(r"(?i)\b(can)(not)\b"), r"\1 \2"),
    (re.compile(r"(?i)(\w)(n't)\b"), r"\1 \2"),  # does n't / ca n't / wo n't
    (re.compile(r"(?i)(\w)('(?:s|re|ve|ll|d|m))\b"), r"\1 \2"),
    (re.compile(r"(?<=\w)(?<!\bol)(?<!\s'n)(?<!^'n)'(?=[^\w']|$)"), " ' "),  # filmmakers ' eye / a quote's end
    (re.compile(rf"(?<!\S)'(?!{_NOT_AN_OPENING_QUOTE})(?=\w)"), "` "),  # an opening single quote is `
    (re.compile(r"`+"), r" \g<0> "),
]


def normalize_ptb(text: str) -> str:
    """Rewrite raw English text in the Penn Treebank form of the SST sentences the model was trained on.

    What the SST files show, and what this does: punctuation split off (`film .`, `hits , a`, `?!?` kept whole,
    but `10,000`, `U.S.`, `Mr.` kept), clitics split (`does n't`, `ca n't`, `he 's`, `filmmakers '`,
    `can not`), `(` `)` as `-LRB-` `-RRB-`, double quotes as `` `` `` and `''`, single quotes as `` ` `` and `'`,
    `/` and `*` escaped as `\\/` and `\\*`, `--` and `...` as tokens; case and hyphenated words unchanged. Every
    sentence of SST train and dev is left unchanged by it (up to whitespace), so it is idempotent on such text.

    Args:
        text: A raw sentence.

    Example:

    ```python
    >>> from hf_multitask import normalize_ptb
    >>> normalize_ptb('I can\\'t believe "Conan" (2002) isn\\'t co-writer/director Jackson\\'s best.')
    "I ca n't believe `` Conan '' -LRB- 2002 -RRB- is n't co-writer\\\\/director Jackson 's best ."
    ```
    """
    for pattern, replacement in _PTB_RULES:
        text = pattern.sub(replacement, text)
    tokens = []
    for token in text.split():
        if token.endswith(".") and token.strip(".") and not _is_abbreviation(token):
            tokens.extend((token[:-1], "."))
        else:
            tokens.append(token)
    return " ".join(tokens)


def _is_abbreviation(token: str) -> bool:
    return bool(_INITIALS.match(token)) or token[:-1].lower() in _ABBREVIATIONS


NORMALIZERS: dict[str, Callable[[str], str]] = {"ptb": normalize_ptb}


def get_normalizer(name: str | None) -> Callable[[str], str] | None:
    """The text normaliser called `name` (`"ptb"`), or `None` for `None`."""
    if name is None:
        return None
    if name not in NORMALIZERS:
        raise ValueError(f"Unknown normalize={name!r}; choose one of {sorted(NORMALIZERS)} or None")
    return NORMALIZERS[name]
