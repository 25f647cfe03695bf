"""Write the samples: spoken questions recorded the way the Android app does.

- `samples/question.m4a`: English, by the embedded Piper voice;
- `samples/kysymys.m4a`: Finnish, by espeak-ng (installed by `make test`).
"""

from __future__ import annotations

from pathlib import Path

from shared.tts import espeak
from tools.phone_audio import encode, speak

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SAMPLE_QUESTION = "What is a good way to relax after a long day?"
FINNISH_SAMPLE_QUESTION = "Mihin aikaan apteekki sulkeutuu sunnuntaisin?"


def main() -> None:
    for name, (pcm, rate) in (
        ("question.m4a", speak(SAMPLE_QUESTION)),
        ("kysymys.m4a", espeak.speak(FINNISH_SAMPLE_QUESTION)),
    ):
        out = SAMPLES / name
        out.write_bytes(encode(pcm, rate, "m4a"))
        print(f"wrote {out} ({len(pcm) / rate:.1f} s)")


if __name__ == "__main__":
    main()
