"""A turn answered as it is made: the first words are heard while the rest is written.

STT first (the whole question is needed), then the model's reply as a token stream, cut
into sentences (`shared.llm.sentences`); each sentence is cleaned for speech and spoken as
soon as it is complete, by one speech session for the whole reply, so the MP3 pieces
concatenate into one stream. A paid voice that fails, is saturated or has spent its budget
hands the rest of the reply to the embedded voice (`TTS_FALLBACK=piper`), in the same
format. Speech from the paid voice is cached per sentence; budgets are charged as spent.

The turn is recorded as `/talk` records one (`shared.storage.turns`): the reply's MP3
under the request's prefix, its outcome, and the conversation's new turn when the reply was
complete, so `GET /talk/{id}`, conversations, idempotency and erasure treat it as any turn.

`StreamedTurn.events()` is a plain iterator of `Event`s, run on a worker thread; `close()`
(from any thread: the client went away) stops the model and the voice at their next piece.
"""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.accept import Accepted
from shared.config import Settings
from shared.errors import ProviderError, TalkError
from shared.languages import offline_reply, split_notice
from shared.llm import ReplyStream, get_generator
from shared.llm.sentences import SentenceSplitter, ends_sentence, split_sentences
from shared.llm.speech_text import clean_for_speech
from shared.pipeline import (
    chat_messages,
    checked_question,
    system_prompt_for,
    transcribe,
)
from shared.providers import default_secrets
from shared.security.budget import LLM_TOKENS, TTS_CHARACTERS, BudgetExhausted, budgets, share_of
from shared.security.identity import SHARED_OWNER
from shared.security.secrets import MissingSecret
from shared.storage import StorageUnavailable, blob_store, turns
from shared.storage.cache import cache_key, response_cache
from shared.storage.conversations import conversation_store, new_turn
from shared.storage.erasure import check_not_raced
from shared.telemetry import log_content, stage_span
from shared.telemetry.metrics import cache_lookup, first_audio, llm_tokens, tts_characters
from shared.tts import SpeechSession, SpeechSynthesizer, embedded_synthesizer, get_synthesizer

log = logging.getLogger("talk")

__all__ = ["Event", "StreamedTurn"]


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: `meta`, `text`, `audio`, `done` or `error`."""

    name: str
    data: dict[str, Any]


# A turn takes seconds; one still going after this (a provider that trickles, a client
# that reads slowly) stops, well before its record would count as dead (turns.STALE_S).
MAX_TURN_S = 120.0


class Cancelled(Exception):
    """The client went away."""

    code = turns.CLIENT_CLOSED


class TurnTooLong(TalkError):
    status = 504
    code = "timed_out"


@dataclass
class _Reply:
    """What the turn has said so far."""

    sentences: list[str] = field(default_factory=list)  # the sentences said, as counted
    said: list[str] = field(default_factory=list)  # the pieces said, as spoken
    mp3: list[bytes] = field(default_factory=list)
    seq: int = 0


class StreamedTurn:
    def __init__(
        self,
        job: dict[str, Any],
        *,
        settings: Settings,
        audio: bytes | None = None,
        recorded: bool = True,
        started: float | None = None,
    ) -> None:
        """The turn `job` asks for (the accepted request's job: request id, owner, prefix,
        text or the `audio`, voice, language, conversation). `recorded`: kept in storage as
        `/talk/stream` keeps it; without it (`python -m talk --stream`) nothing is stored,
        cached or counted against a budget (its caller refuses to run with one). `started`:
        when the request arrived (`time.perf_counter()`), which the first audio and the total
        are timed from; by default, now."""
        self.settings = settings
        self.job = job
        self.rid = job["request_id"]
        self._audio_in = audio
        self._recorded = recorded
        self._closed = threading.Event()
        self._reply_stream: ReplyStream | None = None
        self._session: SpeechSession | None = None
        self._started = time.perf_counter() if started is None else started
        self._first_audio_ms: int | None = None
        self._stt_provider: str | None = None
        self._llm_provider = ""
        self._timings = {"stt": 0, "llm": 0, "tts": 0}
        self._cache_hits: set[str] = set()
        self._record = turns.StreamedTurn(
            self.rid, job["owner"], job["blob_prefix"], turns.RUNNING, time.time()
        )

    @classmethod
    def of(cls, accepted: Accepted, started: float | None = None) -> StreamedTurn:
        """The turn of a request `shared.accept` accepted, recorded."""
        return cls(
            accepted.job,
            settings=accepted.settings,
            audio=accepted.talk_input.audio,
            started=started,
        )

    def close(self) -> None:
        """Stop: the client went away. Safe from any thread."""
        self._closed.set()
        if self._reply_stream is not None:
            self._reply_stream.close()
        if self._session is not None:
            self._session.close()

    def events(self) -> Iterator[Event]:
        """The turn's events. A failure before the first event is raised (the caller answers
        it as `/talk` would); after it, it is the last event, `error`."""
        if self._recorded:
            turns.begin(self.rid, self.job["owner"], self.job["blob_prefix"], self.settings)
        sent_any = False
        try:
            for event in self._run():
                sent_any = True
                yield event
        except Exception as error:
            # Whatever a stream closed under a provider's read raised: the client left.
            if not isinstance(error, Cancelled) and not self._closed.is_set():
                yield from self._failed(error, sent_any)
                return
            log.info("[%s] /talk/stream: the client went away", self.rid)
            self._finish({"error": _error_fields(Cancelled.code, "the client went away", 499)})

    def _failed(self, error: Exception, sent_any: bool) -> Iterator[Event]:
        """A failure: raised before the first event (the caller answers it as `/talk`
        would), else the last event."""
        if isinstance(error, TalkError):
            fields = _error_fields(error.code, error.message, error.status, error)
            event = _client_error(error)
        else:
            log.error("[%s] /talk/stream failed", self.rid, exc_info=error)
            fields = _error_fields("internal", "the reply failed", 500)
            event = {"code": "internal", "error": "the reply failed, try again"}
        self._finish({"error": fields})
        if not sent_any:
            raise error
        yield Event("error", event)

    # --- the turn ------------------------------------------------------------------------

    def _run(self) -> Iterator[Event]:
        settings, job = self.settings, self.job
        marks = job.get("erasure_marks") or {}
        check_not_raced(marks, settings)
        secrets_ = default_secrets(settings)
        generator = get_generator(settings, secrets_)
        self._llm_provider = generator.name
        llm_budget = settings.llm_daily_token_budget if generator.billed else 0
        share = share_of(job.get("spender"), settings)
        if llm_budget:  # before the upload is transcribed: a spent budget answers 503 at once
            budgets(settings).check(LLM_TOKENS, llm_budget, share)
        question, language, transcript = self._question()
        conversation = job.get("conversation")
        yield Event(
            "meta",
            {
                "request_id": self.rid,
                "transcript": transcript,
                "language": language,
                "conversation_id": conversation["id"] if conversation else None,
            },
        )
        self._check_open()
        check_not_raced(marks, settings)  # before anything is spent on the reply
        reply = _Reply()
        synthesizer = get_synthesizer(settings, secrets_, language)
        if language and not generator.writes(language):
            # The embedded model neither reads nor writes it: the offline reply, said
            # sentence by sentence as a model's would be.
            for sentence in split_notice(offline_reply(language), language):
                yield from self._say(sentence, reply, synthesizer, language)
            yield from self._end(question, transcript, language, reply)
            return
        system_prompt = system_prompt_for(settings, job.get("system_prompt"), language)
        history = conversation["history"] if conversation else []
        messages = chat_messages(generator, settings, system_prompt, question, history)
        llm_started = time.perf_counter()
        tokens = 0
        with stage_span("llm", self.rid) as span:
            span.set(provider=generator.name, model=generator.model)
            try:
                self._reply_stream = generator.stream(
                    messages,
                    max_tokens=settings.llm_max_tokens,
                    temperature=settings.llm_temperature,
                )
                with self._reply_stream as stream:
                    splitter = SentenceSplitter(language)
                    for delta in stream:
                        self._check_open()
                        for piece in splitter.feed(delta):
                            yield from self._say(piece, reply, synthesizer, language)
                            if len(reply.sentences) >= settings.reply_max_sentences:
                                break
                        else:
                            continue
                        break  # enough said: the model stops here
                    else:
                        # A stream closed for a client that went away ends as a whole one does.
                        self._check_open()
                        for piece in _finished(splitter.flush(), reply):
                            yield from self._say(piece, reply, synthesizer, language)
            finally:
                tokens = self._reply_stream.tokens if self._reply_stream else 0
                llm_tokens(generator.name, tokens)
                if llm_budget:
                    budgets(settings).charge(LLM_TOKENS, llm_budget, tokens, share)
                span.set(llm_tokens=tokens, reply_chars=len(" ".join(reply.said)))
        self._timings["llm"] = _ms(time.perf_counter() - llm_started) - self._timings["tts"]
        if not reply.said:
            raise ProviderError(generator.name, "the model gave an empty reply")
        yield from self._end(question, transcript, language, reply)

    def _end(
        self, question: str, transcript: str | None, language: str | None, reply: _Reply
    ) -> Iterator[Event]:
        """The reply's last audio, kept, and the `done` event."""
        if self._session is not None:
            tail = self._session.finish()
            if tail:
                yield self._audio(tail, reply)
        text = " ".join(reply.said)
        log_content(self.rid, "replied", text)
        outcome = self._store(question, transcript, language, text, reply)
        yield Event("done", {k: v for k, v in outcome.items() if k != "audio_blob"})

    def _question(self) -> tuple[str, str | None, str | None]:
        job, settings = self.job, self.settings
        audio = self._audio_in
        if audio is None:
            return checked_question(job["text"], settings), job.get("language"), None
        heard = transcribe(
            audio,
            request_id=self.rid,
            settings=settings,
            language=job.get("language"),
            spender=job.get("spender"),
        )
        self._timings["stt"] = heard.elapsed_ms
        self._stt_provider = heard.provider
        return heard.text, heard.language, heard.text

    def _say(
        self, piece: str, reply: _Reply, synthesizer: SpeechSynthesizer, language: str | None
    ) -> Iterator[Event]:
        """Speak one piece of the reply: a `text` event, then its audio as it is made."""
        left = self.settings.reply_max_sentences - len(reply.sentences)
        text = clean_for_speech(piece, left)
        if not text:
            return
        # Counted as `/talk` counts them, on what the model wrote: a line without a sentence
        # end (a list's item) runs on into the next sentence there, so it is not one of its
        # own here either, though it is spoken as one.
        reply.sentences.extend(s for s in split_sentences(piece) if ends_sentence(s))
        reply.said.append(text)
        reply.seq += 1
        yield Event("text", {"seq": reply.seq, "text": text})
        started = time.perf_counter()
        with stage_span("tts", self.rid) as span:
            for mp3 in self._speech(text, synthesizer, language):
                self._check_open()
                yield self._audio(mp3, reply)
            span.set(provider=self._session.name if self._session else "", tts_chars=len(text))
        self._timings["tts"] += _ms(time.perf_counter() - started)

    def _speech(
        self, text: str, synthesizer: SpeechSynthesizer, language: str | None
    ) -> Iterator[bytes]:
        """`text` in the reply's voice: from the cache, the session, or, when the paid voice
        cannot, from the embedded voice for the rest of the reply."""
        settings, job = self.settings, self.job
        if self._session is None:
            self._session = synthesizer.open_session(voice=job.get("voice"), language=language)
        session = self._session
        voice = job.get("voice")
        cached = self._recorded and settings.tts_cache == "on" and session.billed
        cache = response_cache(settings) if cached else None
        scope = "" if job["owner"] == SHARED_OWNER else job["owner"]
        key = cache_key("tts", synthesizer.identity(voice, language), text, scope=scope)
        if cache is not None:
            hit = cache.get(key)
            cache_lookup("tts", hit is not None)
            if hit is not None:
                if scope:  # a shared hit is never told: it would tell what others heard
                    self._cache_hits.add("tts")
                yield hit
                return
        budget = settings.tts_daily_character_budget if session.billed else 0
        share = share_of(job.get("spender"), settings)
        made: list[bytes] = []
        try:
            if budget:
                budgets(settings).check(TTS_CHARACTERS, budget, share)
            for mp3 in session.speak(text):
                made.append(mp3)
                yield mp3
        except (ProviderError, MissingSecret, BudgetExhausted, StorageUnavailable) as error:
            if made:  # the paid voice began it, and bills it: it counts
                tts_characters(session.name, len(text))
                if budget:
                    budgets(settings).charge(TTS_CHARACTERS, budget, len(text), share)
            if settings.tts_fallback != "piper" or not session.billed:
                raise
            log.warning(
                "[%s] TTS %s failed (%s): the embedded voice says the rest",
                self.rid,
                session.name,
                error,
            )
            self._session = embedded_synthesizer(settings, language).open_session(
                voice=voice, language=language, match=session.format
            )
            session.close()
            yield from self._session.speak(text)
            tts_characters(self._session.name, len(text))
            return
        tts_characters(session.name, len(text))
        if budget:
            budgets(settings).charge(TTS_CHARACTERS, budget, len(text), share)
        self._check_open()  # a sentence cut off when the client went away is not cached
        if cache is not None:
            cache.put(key, b"".join(made), "audio/mpeg")

    def _audio(self, mp3: bytes, reply: _Reply) -> Event:
        if self._first_audio_ms is None:
            elapsed = time.perf_counter() - self._started
            self._first_audio_ms = _ms(elapsed)
            first_audio(self._session.name if self._session else "", elapsed)
        reply.mp3.append(mp3)
        return Event("audio", {"seq": reply.seq, "audio_base64": base64.b64encode(mp3).decode()})

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Cancelled
        if time.perf_counter() - self._started > MAX_TURN_S:
            raise TurnTooLong(f"the reply took more than {MAX_TURN_S:g} s; ask again")

    # --- recording it ----------------------------------------------------------------------

    def _store(
        self,
        question: str,
        transcript: str | None,
        language: str | None,
        text: str,
        reply: _Reply,
    ) -> dict[str, Any]:
        settings, job = self.settings, self.job
        check_not_raced(job.get("erasure_marks") or {}, settings)
        mp3 = b"".join(reply.mp3)
        name = None
        if self._recorded:
            name = f"{job['blob_prefix']}reply-{secrets.token_hex(4)}.mp3"
            if not blob_store(settings).put(name, mp3, "audio/mpeg", overwrite=False):
                raise StorageUnavailable("the reply could not be stored")
        conversation = job.get("conversation")
        saved = None
        if conversation and self._recorded:
            saved = self._save_turn(conversation, question, text, language)
        outcome = {
            "request_id": self.rid,
            "transcript": transcript,
            "text": text,
            "language": language,
            "audio_blob": name,
            "audio_bytes": len(mp3),
            "timings_ms": {
                **self._timings,
                "first_audio": self._first_audio_ms or 0,
                "total": _ms(time.perf_counter() - self._started),
            },
            "providers": {
                "stt": self._stt_provider,
                "llm": self._llm_provider,
                "tts": self._session.name if self._session else None,
            },
            "conversation_id": conversation["id"] if conversation else None,
            "turn_saved": saved,
            "cache": sorted(self._cache_hits),
        }
        self._finish(outcome)
        return outcome

    def _save_turn(
        self, conversation: dict[str, Any], question: str, text: str, language: str | None
    ) -> bool:
        store = conversation_store(self.settings)
        try:
            if conversation["new"]:
                store.start(self.job["owner"], conversation["id"])
            turn = new_turn(self.rid, question, text, language)
            return store.append(self.job["owner"], conversation["id"], turn)
        except TalkError as error:
            log.warning("[%s] turn not saved: %s", self.rid, error.message)
            return False

    def _finish(self, outcome: dict[str, Any]) -> None:
        if not self._recorded:
            return
        try:
            # An erasure that began meanwhile keeps what it erased erased: no record.
            check_not_raced(self.job.get("erasure_marks") or {}, self.settings)
            turns.finish(self._record, outcome, self.settings)
        except TalkError as error:
            log.error("[%s] streamed turn not recorded: %s", self.rid, error.message)


def _error_fields(
    code: str, message: str, status: int, error: TalkError | None = None
) -> dict[str, Any]:
    fields: dict[str, Any] = {"code": code, "message": message, "status": status}
    retry_after = getattr(error, "retry_after_s", None)
    if isinstance(retry_after, int):
        fields["retry_after_s"] = retry_after
    return fields


def _client_error(error: TalkError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": error.code, "error": error.message}
    retry_after = getattr(error, "retry_after_s", None)
    if isinstance(retry_after, int):
        body["retry_after"] = retry_after
    return body


def _finished(pieces: list[str], reply: _Reply) -> list[str]:
    """The reply's last pieces, less one the model left unfinished (its token limit) when
    something was said before it: `/talk` drops that sentence too."""
    if pieces and (reply.said or len(pieces) > 1) and not ends_sentence(pieces[-1]):
        return pieces[:-1]
    return pieces


def _ms(seconds: float) -> int:
    return round(seconds * 1000)
