"""The talk pipeline: transcribe, generate, synthesize.

The three stages are separate callables with small, JSON-friendly results, because each
becomes a Durable Functions activity; `talk` runs them in one process for the CLI and
tests. Every stage is timed and logs the operator lines of the original backend.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from shared.answer import TalkResult
from shared.audio import decode_isolated
from shared.config import Settings
from shared.errors import NoInput, NoSpeech, ProviderError, TextTooLong
from shared.languages import offline_reply, split_notice
from shared.llm import (
    ChatMessage,
    ReplyGenerator,
    build_messages,
    compose_system_prompt,
    get_generator,
    language_instruction,
)
from shared.llm.speech_text import clean_for_speech
from shared.providers import default_secrets
from shared.security.budget import (
    LLM_TOKENS,
    STT_SECONDS,
    TTS_CHARACTERS,
    BudgetExhausted,
    Share,
    budgets,
    share_of,
)
from shared.security.identity import SHARED_OWNER
from shared.security.secrets import MissingSecret, SecretStore
from shared.storage import StorageUnavailable
from shared.storage.cache import cache_key, response_cache
from shared.storage.conversations import conversation_store, new_turn
from shared.stt import Transcriber, Transcript, get_transcriber, local_transcriber
from shared.telemetry import log_content, stage_span
from shared.telemetry.metrics import cache_lookup, llm_tokens, stt_seconds, tts_characters
from shared.tts import SpeechSynthesizer, embedded_synthesizer, get_synthesizer

log = logging.getLogger("talk")


def new_request_id() -> str:
    """128 random bits: an id no one can guess, and that no two requests share."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Transcription:
    text: str
    language: str
    audio_seconds: float
    elapsed_ms: int
    provider: str


@dataclass(frozen=True)
class Reply:
    text: str
    elapsed_ms: int
    provider: str
    cached: bool = False


@dataclass(frozen=True)
class Speech:
    mp3: bytes
    elapsed_ms: int
    provider: str
    cached: bool = False


@dataclass(frozen=True)
class TalkRequest:
    audio: bytes | None = None
    text: str | None = None
    voice: str | None = None
    language: str | None = None
    system_prompt: str | None = None
    conversation_id: str | None = None
    request_id: str = field(default_factory=new_request_id)


def transcribe(
    audio: bytes,
    *,
    request_id: str,
    settings: Settings,
    language: str | None = None,
    secrets: SecretStore | None = None,
    spender: str | None = None,
) -> Transcription:
    """The words in `audio`. `spender` is whose share of the daily budget a paid
    transcription counts against."""
    started = time.perf_counter()
    with stage_span("stt", request_id) as span:
        decoded = decode_isolated(
            audio, max_bytes=settings.max_audio_bytes, max_seconds=settings.max_audio_seconds
        )
        span.set(audio_seconds=round(decoded.duration_s, 3))
        transcriber = get_transcriber(settings, secrets)
        transcriber, result = _hear(
            transcriber,
            decoded.samples,
            language or settings.whisper_language or None,
            request_id,
            settings,
            share_of(spender, settings),
        )
        model = settings.hf_stt_model if transcriber.billed else settings.whisper_model
        span.set(provider=transcriber.name, model=model)
        if result.billed_s:
            span.set(stt_billed_seconds=round(result.billed_s, 3))
        elapsed = time.perf_counter() - started
        if not result.text:
            log.info("[%s] STT found no speech in %.2fs of audio", request_id, decoded.duration_s)
            raise NoSpeech(f"no speech found in {decoded.duration_s:.1f} s of audio")
        span.set(language=result.language, transcript=result.text)
        log.info("[%s] STT done in %.2fs chars=%d", request_id, elapsed, len(result.text))
        log_content(request_id, "heard", result.text)
    return Transcription(
        text=result.text,
        language=result.language,
        audio_seconds=round(decoded.duration_s, 3),
        elapsed_ms=_ms(elapsed),
        provider=transcriber.name,
    )


def _hear(
    transcriber: Transcriber,
    samples: np.ndarray,
    language: str | None,
    request_id: str,
    settings: Settings,
    share: Share | None,
) -> tuple[Transcriber, Transcript]:
    """`samples` transcribed by `transcriber`, or by the local model when the paid one
    fails, is not configured, or has spent the day's budget."""
    budget = settings.stt_daily_seconds_budget if transcriber.billed else 0
    try:
        if budget:
            budgets(settings).check(STT_SECONDS, budget, share)
        result = transcriber.transcribe(samples, language=language)
    except (ProviderError, MissingSecret, BudgetExhausted, StorageUnavailable) as error:
        if not transcriber.billed:
            raise
        log.warning(
            "[%s] STT %s failed (%s): transcribing with the local model",
            request_id,
            transcriber.name,
            error,
        )
        transcriber = local_transcriber(settings)
        return transcriber, transcriber.transcribe(samples, language=language)
    if result.billed_s:
        stt_seconds(transcriber.name, result.billed_s)
        if budget:
            charged = math.ceil(result.billed_s)
            budgets(settings).charge(STT_SECONDS, budget, charged, share)
    return transcriber, result


def generate(
    question: str,
    *,
    request_id: str,
    settings: Settings,
    system_prompt: str | None = None,
    secrets: SecretStore | None = None,
    history: Sequence[tuple[str, str]] = (),
    owner: str = SHARED_OWNER,
    in_conversation: bool = False,
    language: str | None = None,
    spender: str | None = None,
) -> Reply:
    """The reply to `question`. `system_prompt` is the client's, applied as
    `CLIENT_SYSTEM_PROMPT` says; `owner` scopes the reply cache to its caller; `spender`
    is whose share of the daily budget the call counts against."""
    question = checked_question(question, settings)
    started = time.perf_counter()
    with stage_span("llm", request_id) as span:
        generator = get_generator(settings, secrets or default_secrets(settings))
        span.set(provider=generator.name, model=generator.model)
        if language and not generator.writes(language):
            text = offline_reply(language)
            log.info(
                "[%s] LLM %s does not write %r: the offline reply",
                request_id,
                generator.name,
                language,
            )
            span.set(reply_chars=len(text), reply=text)
            return Reply(text, _ms(time.perf_counter() - started), generator.name)
        system_prompt = system_prompt_for(settings, system_prompt, language)
        # A warm assistant need not say the same thing twice: replies are cached only on
        # request, and never within a conversation.
        cacheable = settings.llm_cache == "on" and not (history or in_conversation)
        cache = response_cache(settings) if cacheable else None
        key = cache_key(
            "llm",
            {
                "provider": generator.name,
                "model": generator.model,
                "system_prompt": system_prompt,
                "temperature": settings.llm_temperature,
                "max_tokens": settings.llm_max_tokens,
                "max_sentences": settings.reply_max_sentences,
            },
            question.lower(),
            scope=owner,
        )
        if cache:
            hit = cache.get(key)
            cache_lookup("llm", hit is not None)
            span.set(cache_hit=hit is not None)
            if hit is not None:
                elapsed = time.perf_counter() - started
                log.info("[%s] LLM cache hit in %.2fs chars=%d", request_id, elapsed, len(hit))
                span.set(reply_chars=len(hit))
                return Reply(hit.decode(), _ms(elapsed), generator.name, cached=True)
        messages = chat_messages(generator, settings, system_prompt, question, history)
        budget = settings.llm_daily_token_budget if generator.billed else 0
        share = share_of(spender, settings)
        if budget:
            budgets(settings).check(LLM_TOKENS, budget, share)
        tokens = 0
        try:
            # A sampled reply can come out empty once cleaned (all emoji, say): retry
            # greedily.
            for temperature in dict.fromkeys((settings.llm_temperature, 0.0)):
                completion = generator.generate(
                    messages, max_tokens=settings.llm_max_tokens, temperature=temperature
                )
                tokens += completion.tokens
                text = clean_for_speech(completion.text, settings.reply_max_sentences)
                if text:
                    break
        finally:  # a second attempt that failed does not un-bill the first
            llm_tokens(generator.name, tokens)
            if budget:
                budgets(settings).charge(LLM_TOKENS, budget, tokens, share)
            span.set(llm_tokens=tokens)
        if not text:
            raise ProviderError(generator.name, "the model gave an empty reply")
        if cache:
            cache.put(key, text.encode(), "text/plain; charset=utf-8")
        elapsed = time.perf_counter() - started
        span.set(reply_chars=len(text), reply=text)
        log.info("[%s] LLM reply in %.2fs chars=%d", request_id, elapsed, len(text))
        log_content(request_id, "replied", text)
    return Reply(text=text, elapsed_ms=_ms(elapsed), provider=generator.name)


def checked_question(question: str, settings: Settings) -> str:
    question = question.strip()
    if not question:
        raise NoInput("the question is empty")
    if len(question) > settings.max_text_chars:
        raise TextTooLong(
            f"text is {len(question)} characters; the limit is {settings.max_text_chars}"
        )
    return question


def system_prompt_for(settings: Settings, client_prompt: str | None, language: str | None) -> str:
    """The operator's prompt with the client's as `CLIENT_SYSTEM_PROMPT` allows, and the
    language to answer in."""
    return compose_system_prompt(
        settings.system_prompt, client_prompt, settings.client_system_prompt
    ) + language_instruction(language)


def chat_messages(
    generator: ReplyGenerator,
    settings: Settings,
    system_prompt: str,
    question: str,
    history: Sequence[tuple[str, str]],
) -> list[ChatMessage]:
    """The chat for `question`, as much of `history` as the model's context holds."""
    return build_messages(
        system_prompt,
        question,
        history,
        room=generator.room(settings.llm_max_tokens),
        size=generator.size,
    )


def synthesize(
    text: str,
    *,
    request_id: str,
    settings: Settings,
    voice: str | None = None,
    secrets: SecretStore | None = None,
    owner: str = SHARED_OWNER,
    language: str | None = None,
    spender: str | None = None,
) -> Speech:
    """`text` spoken as MP3. Speech is cached for everyone in key mode (there is one
    owner); a signed-in caller's speech is cached under that caller, so it is erased with
    them."""
    started = time.perf_counter()
    with stage_span("tts", request_id) as span:
        synthesizer = get_synthesizer(settings, secrets or default_secrets(settings), language)
        span.set(provider=synthesizer.name, tts_chars=len(text))
        cache = response_cache(settings) if settings.tts_cache == "on" else None
        scope = "" if owner == SHARED_OWNER else owner
        key = cache_key("tts", synthesizer.identity(voice, language), text, scope=scope)
        if cache:
            hit = cache.get(key)
            cache_lookup("tts", bool(hit))
            span.set(cache_hit=bool(hit))
            if hit:
                elapsed = time.perf_counter() - started
                log.info("[%s] TTS cache hit in %.2fs bytes=%d", request_id, elapsed, len(hit))
                return Speech(hit, _ms(elapsed), synthesizer.name, cached=True)
        share = share_of(spender, settings)
        # Two languages: the paid voice hears them itself.
        mixed = synthesizer.billed and bool(split_notice(text, language)[0])
        synthesizer, mp3 = _speak(
            synthesizer, text, voice, None if mixed else language, request_id, settings, share
        )
        span.set(provider=synthesizer.name)
        tts_characters(synthesizer.name, len(text))
        if cache:
            key = cache_key("tts", synthesizer.identity(voice, language), text, scope=scope)
            cache.put(key, mp3, "audio/mpeg")
        elapsed = time.perf_counter() - started
        log.info("[%s] TTS done in %.2fs bytes=%d", request_id, elapsed, len(mp3))
    return Speech(mp3=mp3, elapsed_ms=_ms(elapsed), provider=synthesizer.name)


def _speak(
    synthesizer: SpeechSynthesizer,
    text: str,
    voice: str | None,
    language: str | None,
    request_id: str,
    settings: Settings,
    share: Share | None,
) -> tuple[SpeechSynthesizer, bytes]:
    """`text` spoken by `synthesizer`, or by the embedded voice (`TTS_FALLBACK=piper`) when
    the paid voice fails, is saturated, or has spent the day's budget."""
    budget = settings.tts_daily_character_budget if synthesizer.billed else 0
    try:
        if budget:
            budgets(settings).check(TTS_CHARACTERS, budget, share)
        mp3 = synthesizer.synthesize(text, voice=voice, language=language)
    except (ProviderError, MissingSecret, BudgetExhausted, StorageUnavailable) as error:
        # StorageUnavailable: the budget could not be read; the free voice needs none.
        if settings.tts_fallback != "piper" or not synthesizer.billed:
            raise
        log.warning(
            "[%s] TTS %s failed (%s): answering with the embedded voice",
            request_id,
            synthesizer.name,
            error,
        )
        synthesizer = embedded_synthesizer(settings, language)
        return synthesizer, synthesizer.synthesize(text, voice=voice, language=language)
    if budget:
        budgets(settings).charge(TTS_CHARACTERS, budget, len(text), share)
    return synthesizer, mp3


def speak_back(
    audio: bytes, *, request_id: str, settings: Settings
) -> tuple[Transcription, Speech]:
    """A deployment's own check, free of charge: `audio` heard by the installed Whisper model
    and said back by the embedded voice. What a deploy can break on the way to an answer (the
    package, its models, the decoder, the MP3 encoder) without a paid call, a budget, or
    anything stored."""
    # Heard by the local model: the check must not spend the paid one's budget.
    local = replace(settings, stt_provider="local")
    heard = transcribe(audio, request_id=request_id, settings=local)
    started = time.perf_counter()
    with stage_span("tts", request_id) as span:
        voice = embedded_synthesizer(settings, heard.language)
        span.set(provider=voice.name, tts_chars=len(heard.text))
        mp3 = voice.synthesize(heard.text, voice=None, language=heard.language)
    elapsed_ms = _ms(time.perf_counter() - started)
    log.info("[%s] Spoken back by the embedded voice in %d ms", request_id, elapsed_ms)
    return heard, Speech(mp3=mp3, elapsed_ms=elapsed_ms, provider=voice.name)


def talk(
    request: TalkRequest, settings: Settings, secrets: SecretStore | None = None
) -> TalkResult:
    """Answer one spoken or written question with a spoken reply."""
    started = time.perf_counter()
    rid = request.request_id
    heard: Transcription | None = None
    if request.audio is not None:
        heard = transcribe(
            request.audio, request_id=rid, settings=settings, language=request.language
        )
        question = heard.text
    elif request.text is not None and request.text.strip():
        question = request.text
    else:
        raise NoInput("send audio or text")
    language = heard.language if heard else request.language
    # The command line is its operator's own: a conversation id it names is started on
    # first use (the HTTP API only continues conversations it issued).
    conversations = conversation_store(settings) if request.conversation_id else None
    history = []
    if conversations and request.conversation_id:
        conversations.start(SHARED_OWNER, request.conversation_id)
        turns = conversations.turns(SHARED_OWNER, request.conversation_id) or []
        history = [(turn.question, turn.reply) for turn in turns[-settings.conversation_turns :]]
    reply = generate(
        question,
        request_id=rid,
        settings=settings,
        system_prompt=request.system_prompt,
        secrets=secrets,
        history=history,
        language=language,
    )
    speech = synthesize(
        reply.text,
        request_id=rid,
        settings=settings,
        voice=request.voice,
        secrets=secrets,
        language=language,
    )
    if conversations and request.conversation_id:
        conversations.append(
            SHARED_OWNER,
            request.conversation_id,
            new_turn(rid, question.strip(), reply.text, language),
        )
    total = time.perf_counter() - started
    log_success(rid, total, len(reply.text), len(speech.mp3))
    return TalkResult(
        request_id=rid,
        transcript=heard.text if heard else None,
        text=reply.text,
        language=language,
        mp3=speech.mp3,
        timings_ms=_timings(
            heard.elapsed_ms if heard else 0, reply.elapsed_ms, speech.elapsed_ms, total
        ),
        providers={
            "stt": heard.provider if heard else None,
            "llm": reply.provider,
            "tts": speech.provider,
        },
        conversation_id=request.conversation_id,
        cache=[stage for stage, result in (("llm", reply), ("tts", speech)) if result.cached],
    )


def log_success(request_id: str, total_s: float, reply_chars: int, audio_bytes: int) -> None:
    """The operator lines that confirm an answered request, as the original logged them."""
    log.info(
        "[%s] /talk success total=%.2fs reply_chars=%d audio_bytes=%d",
        request_id,
        total_s,
        reply_chars,
        audio_bytes,
    )
    log.info("[%s] MP3 bytes=%d", request_id, audio_bytes)


def _timings(stt_ms: int, llm_ms: int, tts_ms: int, total_s: float) -> dict[str, int]:
    # Each stage is rounded on its own: never let the rounded stages add up to more than
    # the total, so `total - stt - llm - tts` is the time spent between them.
    stages = {"stt": stt_ms, "llm": llm_ms, "tts": tts_ms}
    return {**stages, "total": max(_ms(total_s), sum(stages.values()))}


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
