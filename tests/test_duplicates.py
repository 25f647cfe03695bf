"""A request sent again without an `Idempotency-Key` (the Android app's retry) joins the
turn it repeats: the same body from the same caller, while that turn is being answered or
for `DUPLICATE_WINDOW_SECONDS` after. Anything else is a turn of its own."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import QUESTIONS, phone_upload, reset_app_caches
from tests.test_functions import android_upload, body_of, post
from tests.test_isolation import bearer

JSON = "application/json"
PHONE = {"X-Forwarded-For": "198.51.100.7:51234"}
OTHER_PHONE = {"X-Forwarded-For": "203.0.113.9:40000"}


def rid_of(response) -> str:
    assert response.status_code == 200, response.get_body()
    return body_of(response)["request_id"]


def test_a_recording_sent_again_gets_the_first_ones_answer(chat, host, caplog) -> None:
    body, content_type = android_upload(phone_upload(QUESTIONS[0], "m4a"))
    with caplog.at_level(logging.INFO, logger="talk"):
        first = post(host, body, content_type, **PHONE)
        again = post(host, body, content_type, **PHONE)
    assert rid_of(first) == rid_of(again)
    assert body_of(first)["audio_base64"] == body_of(again)["audio_base64"]
    assert host.started == [rid_of(first)]
    assert len(chat.requests) == 1
    assert f"sent again within DUPLICATE_WINDOW_SECONDS: answering {rid_of(first)}" in caplog.text


def test_a_copy_that_arrives_while_the_first_is_answered_joins_it(chat, host) -> None:
    body, content_type = android_upload(phone_upload(QUESTIONS[1], "m4a"))
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: post(host, body, content_type, **PHONE), range(2)))
    assert rid_of(answers[0]) == rid_of(answers[1])
    assert len(host.started) == 1
    assert host.activity_calls.count("transcribe") == 1
    assert len(chat.requests) == 1


def test_two_different_recordings_are_two_turns(chat, host) -> None:
    answers = [
        post(host, *android_upload(phone_upload(question, "m4a")), **PHONE)
        for question in QUESTIONS[:2]
    ]
    assert rid_of(answers[0]) != rid_of(answers[1])
    assert len(host.started) == 2


def test_the_same_question_from_another_phone_is_another_turn(chat, host) -> None:
    """Key mode has one owner for every caller: the client address tells phones apart."""
    first = post(host, b'{"text": "Good morning!"}', JSON, **PHONE)
    other = post(host, b'{"text": "Good morning!"}', JSON, **OTHER_PHONE)
    assert rid_of(first) != rid_of(other)
    assert len(chat.requests) == 2


def test_a_field_that_differs_makes_another_turn(chat, host) -> None:
    first = post(host, b'{"text": "Good night!", "voice": "Kim"}', JSON, **PHONE)
    other = post(host, b'{"text": "Good night!", "voice": "Lily"}', JSON, **PHONE)
    assert rid_of(first) != rid_of(other)


def test_the_same_question_after_the_window_is_a_new_turn(chat, host, app_settings) -> None:
    app_settings.setenv("DUPLICATE_WINDOW_SECONDS", "1")
    reset_app_caches()
    first = post(host, b'{"text": "Tell me a joke."}', JSON, **PHONE)
    time.sleep(1.5)
    later = post(host, b'{"text": "Tell me a joke."}', JSON, **PHONE)
    assert rid_of(first) != rid_of(later)
    assert len(chat.requests) == 2
    # The new turn is what a copy sent now joins.
    assert rid_of(post(host, b'{"text": "Tell me a joke."}', JSON, **PHONE)) == rid_of(later)


def test_a_window_of_0_turns_it_off(chat, host, app_settings) -> None:
    app_settings.setenv("DUPLICATE_WINDOW_SECONDS", "0")
    reset_app_caches()
    answers = [post(host, b'{"text": "Hello there"}', JSON, **PHONE) for _ in range(2)]
    assert rid_of(answers[0]) != rid_of(answers[1])


def test_signed_in_callers_are_told_apart_by_who_they_are(chat, host, issuer) -> None:
    alice, bob = bearer(issuer, "alice"), bearer(issuer, "bob")
    first = post(host, b'{"text": "What is on today?"}', JSON, **PHONE, **alice)
    # Alice's phone moved from Wi-Fi to mobile data: her retry still joins her turn...
    moved = post(host, b'{"text": "What is on today?"}', JSON, **OTHER_PHONE, **alice)
    # ...and Bob, behind the same carrier address, asks his own.
    bobs = post(host, b'{"text": "What is on today?"}', JSON, **PHONE, **bob)
    assert rid_of(first) == rid_of(moved)
    assert rid_of(bobs) != rid_of(first)
    assert len(chat.requests) == 2


def test_an_idempotency_key_works_as_documented_beside_it(chat, host) -> None:
    keyed = {**PHONE, "Idempotency-Key": "tap-1"}
    first = post(host, b'{"text": "Sing a song"}', JSON, **keyed)
    assert rid_of(post(host, b'{"text": "Sing a song"}', JSON, **keyed)) == rid_of(first)
    reused = post(host, b'{"text": "Something else"}', JSON, **keyed)
    assert reused.status_code == 422
    assert body_of(reused)["code"] == "idempotency_key_reused"
    assert len(chat.requests) == 1


def test_the_same_words_again_in_a_conversation_are_the_next_turn(chat, host) -> None:
    """In a conversation, "yes" after the answer to "yes" is a new turn, not a retry."""
    started = post(host, b'{"text": "Shall we plan a trip?", "conversation_id": "new"}', JSON)
    conversation_id = body_of(started)["conversation_id"]
    again = json.dumps({"text": "yes", "conversation_id": conversation_id}).encode()
    first, second = (post(host, again, JSON, **PHONE) for _ in range(2))
    assert rid_of(first) != rid_of(second)
    assert len(chat.requests) == 3


def test_two_people_behind_one_address_never_share_a_new_conversation(chat, host) -> None:
    """Key mode tells callers apart only by address: the same opening words from one
    carrier address are two conversations, never one handed to both."""
    opening = b'{"text": "Hello!", "conversation_id": "new"}'
    first, second = (post(host, opening, JSON, **PHONE) for _ in range(2))
    assert body_of(first)["conversation_id"] != body_of(second)["conversation_id"]
