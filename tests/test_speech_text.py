from __future__ import annotations

import pytest

from shared.llm.speech_text import clean_for_speech


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Sure!** Take a _deep_ breath.", "Sure! Take a deep breath."),
        ("# Tips\n- Drink water.\n- Rest well.", "Tips Drink water. Rest well."),
        ("1. Breathe in.\n2. Breathe out.", "Breathe in. Breathe out."),
        ("See [this guide](https://example.com) today.", "See this guide today."),
        ("Use `sleep` wisely.\n```python\nprint(1)\n```", "Use sleep wisely."),
        ("You did great! 🎉😊 Keep going 👍🏽.", "You did great! Keep going."),
        ("Assistant: Hello there.", "Hello there."),
        ("snake_case_name stays.", "snake_case_name stays."),
        ("It costs 3.50 euros. That is cheap.", "It costs 3.50 euros. That is cheap."),
    ],
)
def test_markup_and_emoji_are_removed(raw: str, spoken: str) -> None:
    assert clean_for_speech(raw, max_sentences=3) == spoken


def test_reply_is_cut_to_whole_sentences() -> None:
    raw = "One. Two! Three? Four. Five"
    assert clean_for_speech(raw, max_sentences=3) == "One. Two! Three?"
    assert clean_for_speech(raw, max_sentences=10) == "One. Two! Three? Four."


def test_a_reply_cut_off_mid_sentence_ends_at_a_clause() -> None:
    raw = "Try a warm bath, some calm music, and then maybe a walk in the"
    assert clean_for_speech(raw, max_sentences=3) == "Try a warm bath, some calm music."


def test_a_reply_that_is_only_markup_is_empty() -> None:
    assert clean_for_speech("🎉🎉 **", max_sentences=3) == ""


def test_a_reply_is_cut_at_sentence_ends_not_at_every_period() -> None:
    """An ordinal, a title or a number's period is not a sentence end (it was: "Joulu on
    24." was the whole reply)."""
    assert clean_for_speech("Joulu on 24. joulukuuta. Se on kivaa.", 1) == (
        "Joulu on 24. joulukuuta."
    )
    assert clean_for_speech("Mr. Smith is here. He says hi. Bye.", 2) == (
        "Mr. Smith is here. He says hi."
    )
    assert clean_for_speech("Pi is 3.14 or so. That is all.", 1) == "Pi is 3.14 or so."
