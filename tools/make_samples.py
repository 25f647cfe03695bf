"""Write `samples/question.m4a`: a spoken question recorded the way the Android app does."""

from __future__ import annotations

from pathlib import Path

from tools.phone_audio import encode, speak

SAMPLE_QUESTION = "What is a good way to relax after a long day?"


def main() -> None:
    pcm, rate = speak(SAMPLE_QUESTION)
    out = Path(__file__).resolve().parent.parent / "samples" / "question.m4a"
    out.write_bytes(encode(pcm, rate, "m4a"))
    print(f"wrote {out} ({len(pcm) / rate:.1f} s)")


if __name__ == "__main__":
    main()
