"""The benchmark's code, on a tiny input: it runs and writes its three files."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run import run


def test_quick_benchmark_writes_json_markdown_and_chart(tmp_path: Path) -> None:
    results = run(quick=True, out=tmp_path)
    saved = json.loads((tmp_path / "latest.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {
        "machine",
        "clips",
        "repeats",
        "stt",
        "stt_models",
        "speech_quality",
        "round_trip",
        "cold_start",
        "throughput",
        "request_checks",
        "decoding",
        "end_to_end",
        "telemetry",
        "stt_cost",
        "polling",
        "first_audio",
    }
    assert saved["machine"]["cores"] >= 1
    assert set(saved["stt"]) == {
        "openai-whisper (original)",
        "faster-whisper (ours)",
        "speed_ratio",
    }
    assert set(saved["stt_models"]["english"]) == {"tiny.en", "base"}
    quality = {(r["model"], r["set"], r["condition"]): r for r in saved["speech_quality"]["rows"]}
    assert quality["base (default)", "real en", "as recorded"]["no_speech"] == 0
    assert quality["base (default)", "real fi", "as recorded"]["no_speech"] == 0
    assert quality["base (default)", "real fi", "as recorded"]["wrong_language"] == 0
    assert "| base (default) | real fi |" in (tmp_path / "latest.md").read_text()
    assert saved["cold_start"]["models_loaded_at_health"] is False
    assert saved["cold_start"]["talk_status"] == 200
    assert saved["throughput"]["model_loads"] == {"whisper": 1, "llm": 1, "piper": 1}
    assert "| STT engine |" in (tmp_path / "latest.md").read_text()
    assert all(row["p50"] >= 0 for row in saved["request_checks"].values())
    assert (tmp_path / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "end_to_end.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    end_to_end = saved["end_to_end"]
    assert end_to_end["requests"] == 1 and len(end_to_end["paths"]) == 2
    assert "end noticed by the HTTP function" in end_to_end["added_split_ms_p50"]
    telemetry = saved["telemetry"]
    assert telemetry["requests_per_setting"] == 1 and telemetry["spans_per_turn"] >= 8
    assert telemetry["workbook"]["cold_starts"] == 1
    assert set(telemetry["workbook"]["latency_ms"]) >= {"talk.stt", "talk.llm", "talk.tts"}
    assert "| tracing |" in (tmp_path / "latest.md").read_text()
    assert saved["stt_cost"]["25 s"]["speech"]["outcome"] == "transcript"
    [turn] = saved["polling"]["turns"].values()
    assert set(turn) == {"2 s", "10 s"}
    assert (tmp_path / "workbook.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first_audio = saved["first_audio"]
    assert set(first_audio) == {"loopback providers", "embedded models"}
    for row in first_audio.values():
        assert row["requests"] == 1
        assert 0 < row["stream_first_audio_ms"]["p50"] <= row["stream_done_ms"]["p50"]
        assert row["audio_length"]["replies_compared"] == 1
    assert "| first audio, split (p50 ms) |" in (tmp_path / "latest.md").read_text()
