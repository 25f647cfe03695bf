"""The languages users speak, by the codes Whisper gives them, and the reply of an embedded
model to a language it does not know.

SmolLM2, the embedded model, reads and writes English only: given a Finnish question it
repeats it and runs on in Finnish-looking words, whatever it is told and however (nine
prompts tried on 12 questions: no answer in English; nor with Finnish letters and the
question's words banned from its output; docs/languages.md). It is not asked: the reply is a
fixed sentence in the user's language saying that the offline model understands only
English, then the same in English. The voices recognise that sentence (`split_notice`)
and speak it in the user's language, the rest in English.
"""

from __future__ import annotations

NAMES = {
    "fi": "Finnish",
    "en": "English",
    "sv": "Swedish",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "et": "Estonian",
    "ru": "Russian",
    "no": "Norwegian",
    "da": "Danish",
    "it": "Italian",
    "nl": "Dutch",
    "pl": "Polish",
    "pt": "Portuguese",
}

# "The offline model understands only English.", as a speaker of each language says it.
_NOTICES = {
    "fi": "Paikallinen malli ymmärtää vain englantia.",
    "sv": "Den lokala modellen förstår bara engelska.",
    "de": "Das lokale Modell versteht nur Englisch.",
    "fr": "Le modèle local ne comprend que l'anglais.",
    "es": "El modelo local solo entiende inglés.",
    "et": "Kohalik mudel saab aru ainult inglise keelest.",
}
ENGLISH_REPLY = "Offline, I understand only English: please ask me again in English."


def name_of(language: str) -> str:
    return NAMES.get(language, f"the language with the code {language!r}")


def offline_reply(language: str) -> str:
    """What the embedded model's turn answers to a user who speaks `language`, which it
    does not know: the notice in that language where one is written, then in English."""
    notice = _NOTICES.get(language)
    return f"{notice} {ENGLISH_REPLY}" if notice else ENGLISH_REPLY


def split_notice(text: str, language: str | None) -> tuple[str, str]:
    """(the notice in `language`, the rest, in English) of a reply that opens with the
    notice; ("", text) for any other."""
    notice = _NOTICES.get(language or "")
    if notice and text.startswith(notice):
        return notice, text[len(notice) :].lstrip()
    return "", text
