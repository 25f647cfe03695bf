"""Make a model's reply fit to be spoken: plain sentences, nothing a voice would read out."""

from __future__ import annotations

import re
import unicodedata

from shared.llm.sentences import CLAUSE_ENDS, ends_sentence, split_sentences

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"https?://\S+")
_LINE_MARKUP = re.compile(r"^\s*(#{1,6}\s+|[-*+•]\s+|\d+[.)]\s+|>\s*)", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|\*|~~|`)")
_UNDERSCORED = re.compile(r"(?<!\w)_(\S(?:.*?\S)?)_(?!\w)")
_SPEAKER = re.compile(r"^\s*(assistant|ai|bot)\s*:\s*", re.IGNORECASE)
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,!?;:…])")
_INVISIBLE = {"\u200d", "\ufe0f", "\ufe0e"}


def clean_for_speech(text: str, max_sentences: int) -> str:
    """Strip markdown and emoji, and cut the reply at a sentence end."""
    text = _CODE_BLOCK.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub("", text)
    text = _LINE_MARKUP.sub("", text)
    text = _EMPHASIS.sub("", text)
    text = _UNDERSCORED.sub(r"\1", text)
    text = "".join(ch for ch in text if not _is_emoji(ch))
    text = _SPEAKER.sub("", " ".join(text.split()))
    text = _SPACE_BEFORE_PUNCTUATION.sub("", text)
    return _cut_at_sentence_end(text, max_sentences)


def _is_emoji(ch: str) -> bool:
    return ch in _INVISIBLE or unicodedata.category(ch) in ("So", "Sk", "Cs", "Co")


def _cut_at_sentence_end(text: str, max_sentences: int) -> str:
    # The streaming splitter's rules: never after "24." in "24. joulukuuta", "Mr." or "3.14".
    sentences = split_sentences(text)
    if not sentences:
        return ""
    if len(sentences) > 1 and not ends_sentence(sentences[-1]):
        sentences.pop()  # the model stopped mid-sentence at its token limit
    kept = sentences[:max_sentences]
    last = kept[-1]
    if not ends_sentence(last):
        clause_ends = [i for i, ch in enumerate(last) if ch in CLAUSE_ENDS]
        if clause_ends and clause_ends[-1] > len(last) // 3:
            last = last[: clause_ends[-1]]
        kept[-1] = last.rstrip() + "."
    return " ".join(kept)
