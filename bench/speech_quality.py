"""Speech quality, English and Finnish, for each Whisper model shipped, side by side.

The sets, each upload heard by every model in turn (interleaved, after warm-up):

- real people (`tests/data/speech`, licences in `tests/data/README.md`): 16 English
  utterances (LJ Speech, a TIMIT sample, a LibriSpeech sentence, six spoken commands, JFK)
  and one Finnish (CSS10, a LibriVox reader), each as recorded (16 kHz FLAC), as a
  32 kbit/s phone AAC, and as that with noise at 15 dB SNR;
- synthetic: the benchmark's English questions (Piper) as the app uploads them, and
  Finnish questions and short phrases from espeak-ng's male and female voices at two
  speeds, as 96 and 32 kbit/s AAC.

For each: the word error rate (English) or character error rate (Finnish), with numbers
written as words on both sides ("3 hours" is "three hours"); uploads refused as no
speech, and as unintelligible; uploads heard in the wrong language; time p50. A refusal
counts as every word missed. Nothing here asserts a number.

`STT_PROVIDER=huggingface` is not measured: the router is not reachable from here.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

from shared.audio import decode_audio
from shared.config import Settings
from shared.errors import NoSpeech, Unintelligible
from shared.pipeline import transcribe
from tools.phone_audio import encode, speak

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "tests" / "data" / "speech"
PHONE_32K = 32_000  # bits a second: AAC as a recorder set to save space makes it
NOISE_SNR_DB = 15
FINNISH_PHRASES = (
    "Mitä kuuluu?",
    "Onko huomenna sadetta?",
    "Paljonko kello on?",
    "Kerro vitsi.",
    "Soita äidille.",
    "Hyvää yötä.",
    "Missä on asema?",
    "Mikä sää on Helsingissä?",
)
FINNISH_VOICES = (("fi+m3", 140), ("fi+f2", 190))
_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + (" " + number_words(rest) if rest else "")
    if 1100 <= n < 2000 and n % 100:  # a year: "fourteen fifty-five"
        return number_words(n // 100) + " " + number_words(n % 100)
    return " ".join(_ONES[int(d)] for d in str(n))


def normalised(text: str) -> str:
    """Lower case, numbers as words, no punctuation: what a listener would call the words."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("%", " percent").replace("mr.", "mister")
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} ", text)
    text = re.sub(r"[^\w\s']|_", " ", text.replace("-", " "))
    return re.sub(r"\s+", " ", text).strip()


def real_recordings() -> list[tuple[str, str, bytes, np.ndarray]]:
    """(language, reference, the file, its 16 kHz int16 samples) of each real recording."""
    recordings = []
    for entry in json.loads((REAL / "manifest.json").read_text(encoding="utf-8")):
        data = (REAL / entry["file"]).read_bytes()
        samples = decode_audio(data, max_bytes=len(data) + 1, max_seconds=60).samples
        pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
        recordings.append((entry["language"], entry["text"], data, pcm))
    return recordings


def _conditions(
    data: bytes, samples: np.ndarray, rng: np.random.Generator
) -> Iterator[tuple[str, bytes]]:
    yield "as recorded", data
    yield "phone 32 kbit/s", encode(samples, 16_000, "m4a", bit_rate=PHONE_32K)
    speech = samples.astype(np.float32)
    noise = rng.normal(0, 1, len(speech)).astype(np.float32)
    noise *= np.sqrt(np.mean(speech**2) / np.mean(noise**2) / 10 ** (NOISE_SNR_DB / 10))
    noisy = np.clip(speech + noise, -32768, 32767).astype(np.int16)
    yield (
        f"phone 32 kbit/s + noise {NOISE_SNR_DB} dB",
        encode(noisy, 16_000, "m4a", bit_rate=PHONE_32K),
    )


def uploads(quick: bool) -> list[tuple[str, str, str, str, bytes]]:
    """(set, condition, language, reference, upload) for every measured upload."""
    from bench.run import FINNISH_QUESTIONS, QUESTIONS
    from shared.tts.espeak import speak as espeak

    rng = np.random.default_rng(7)
    made = []
    recordings = real_recordings()
    if quick:  # the first of each language
        firsts = {}
        for recording in recordings:
            firsts.setdefault(recording[0], recording)
        recordings = list(firsts.values())
    for language, text, data, samples in recordings:
        for condition, upload in _conditions(data, samples, rng):
            made.append((f"real {language}", condition, language, text, upload))
    for question in QUESTIONS[: 1 if quick else None]:
        pcm, rate = speak(question)
        made.append(("synthetic en", "phone 96 kbit/s", "en", question, encode(pcm, rate, "m4a")))
    finnish = FINNISH_QUESTIONS + FINNISH_PHRASES
    for text in finnish[: 2 if quick else None]:
        for voice, words_per_minute in FINNISH_VOICES:
            pcm, rate = espeak(text, voice=voice, words_per_minute=words_per_minute)
            made.append(("synthetic fi", "phone 96 kbit/s", "fi", text, encode(pcm, rate, "m4a")))
            low = encode(pcm, rate, "m4a", bit_rate=PHONE_32K)
            made.append(("synthetic fi", "phone 32 kbit/s", "fi", text, low))
    return made


def bench_speech_quality(quick: bool) -> dict[str, Any]:
    models = {
        "base (default)": Settings(),
        "tiny.en": Settings(whisper_model="tiny.en"),
    }
    measured = uploads(quick)
    for settings in models.values():
        transcribe(measured[0][4], request_id="warmup", settings=settings)
    heard: dict[tuple[str, str, str], list[tuple[str, str, str, float]]] = {}
    for kind, condition, language, reference, upload in measured:
        for name, settings in models.items():
            started = time.perf_counter()
            try:
                result = transcribe(upload, request_id="bench", settings=settings)
                outcome, text, language_heard = "transcript", result.text, result.language
            except (NoSpeech, Unintelligible) as refused:
                outcome, text, language_heard = refused.code, "", ""
            elapsed_ms = (time.perf_counter() - started) * 1000
            heard.setdefault((name, kind, condition), []).append(
                (
                    reference,
                    text,
                    outcome if language_heard in ("", language) else "wrong",
                    elapsed_ms,
                )
            )
    rows = []
    for (name, kind, condition), items in heard.items():
        references = [normalised(reference) for reference, *_ in items]
        hypotheses = [normalised(text) for _, text, *_ in items]
        finnish = kind.endswith("fi")
        rows.append(
            {
                "model": name,
                "set": kind,
                "condition": condition,
                "uploads": len(items),
                "metric": "CER" if finnish else "WER",
                "error_rate": round(
                    (jiwer.cer if finnish else jiwer.wer)(references, hypotheses), 3
                ),
                "no_speech": sum(outcome == "no_speech" for *_, outcome, _ in items),
                "unintelligible": sum(outcome == "unintelligible" for *_, outcome, _ in items),
                "wrong_language": sum(outcome == "wrong" for *_, outcome, _ in items),
                "p50_ms": round(statistics.median(ms for *_, ms in items)),
            }
        )
    return {"rows": rows, "pooled": _pooled(heard)}


def _pooled(heard: dict) -> dict[str, dict[str, float]]:
    """Each model's error rate over all of a set's uploads, whatever the condition."""
    pooled: dict[str, dict[str, float]] = {}
    for name, kind in {(name, kind) for name, kind, _ in heard}:
        items = [i for (n, k, _), rows in heard.items() if (n, k) == (name, kind) for i in rows]
        references = [normalised(reference) for reference, *_ in items]
        hypotheses = [normalised(text) for _, text, *_ in items]
        rate = jiwer.cer if kind.endswith("fi") else jiwer.wer
        pooled.setdefault(kind, {})[name] = round(rate(references, hypotheses), 3)
    return pooled


def speech_quality_markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "Speech quality (real recordings and synthetic voices; WER for English, CER for "
        "Finnish; refusals count as all words missed):",
        "",
        "| model | set | condition | uploads | error rate | no speech | unintelligible "
        "| wrong language | p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in sorted(results["rows"], key=lambda r: (r["set"], r["condition"], r["model"])):
        lines.append(
            f"| {row['model']} | {row['set']} | {row['condition']} | {row['uploads']} | "
            f"{row['metric']} {row['error_rate']:.1%} | {row['no_speech']} | "
            f"{row['unintelligible']} | {row['wrong_language']} | {row['p50_ms']} |"
        )
    lines += ["", "Pooled over the conditions:"]
    for kind, models in sorted(results["pooled"].items()):
        lines.append(f"- {kind}: " + ", ".join(f"{n} {r:.1%}" for n, r in sorted(models.items())))
    return lines
