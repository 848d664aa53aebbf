from __future__ import annotations

import base64
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from gateway.keys.format import (
    KEY_LENGTH,
    PREFIX,
    ApiKey,
    MalformedKey,
    generate,
    hash_secret,
    is_key_id,
    parse,
    verify,
)
from gateway.keys.records import KeyChanges, new_key, new_secret, record_from_json, record_to_json
from gateway.principal import Limits, Principal

PEPPER = b"a-test-pepper-of-32-bytes-length"


def test_generated_key_round_trips_through_parse() -> None:
    key = generate()
    assert re.fullmatch(r"vgw_[a-z2-7]{16}_[a-z2-7]{52}", key.token)
    assert len(key.token) == KEY_LENGTH
    assert parse(key.token) == key


def test_secret_carries_32_random_bytes_and_ids_differ() -> None:
    key = generate()
    raw = base64.b32decode(key.secret.upper() + "====")
    assert len(raw) == 32
    keys = {generate() for _ in range(200)}
    assert len({k.id for k in keys}) == 200
    assert len({k.secret for k in keys}) == 200


def test_rotation_keeps_the_id_and_changes_the_secret() -> None:
    key = generate()
    rotated = generate(key.id)
    assert rotated.id == key.id
    assert rotated.secret != key.secret
    with pytest.raises(MalformedKey):
        generate("not-an-id")


def test_repr_and_str_hide_the_secret() -> None:
    key = generate()
    assert key.secret not in repr(key)
    assert key.secret not in str(key)
    assert key.id in repr(key)


def _valid() -> str:
    return generate().token


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "vgw_",
        "sk-" + "a" * 70,
        "Bearer " + "a" * 66,
        "vgw-" + "a" * 16 + "-" + "a" * 52,  # wrong separators
        "vgw_" + "a" * 15 + "_" + "a" * 53,  # separator in the wrong place
        "vgw_" + "a" * 16 + "_" + "a" * 51,  # too short
        "vgw_" + "a" * 16 + "_" + "a" * 53,  # too long
        "vgw_" + "a" * 16 + "__" + "a" * 51,  # extra separator
        "vgw_" + "a" * 16 + "_" + "a" * 25 + "_" + "a" * 26,  # extra separator
        "vgw_" + "a" * 16 + "_" + "a" * 51 + "\n",  # trailing newline
        "VGW_" + "A" * 16 + "_" + "A" * 52,  # upper case
        "vgw_" + "a" * 16 + "_" + "a" * 51 + "1",  # 1 is not base32
        "vgw_" + "a" * 16 + "_" + "a" * 51 + "=",
        "vgw_" + "é" * 16 + "_" + "a" * 52,  # non-ASCII, right length
        "vgw_" + "a" * 16 + "_" + "a" * 51 + "\u0430",  # Cyrillic a
        "vgw_" + "a" * 16 + "_" + "a" * 51 + "\x00",
        "vgw_" + "a" * 10_000,  # 10 kB
        "x" * 10_240,
        "🔑" * 73,
    ],
)
def test_parse_refuses_malformed_strings_with_its_own_error(text: str) -> None:
    with pytest.raises(MalformedKey) as info:
        parse(text)
    # The message never echoes the input: it may be a secret.
    if len(text) > 8:
        assert text not in str(info.value)
        assert text[4:] not in str(info.value)


def test_parse_never_raises_anything_else_for_mutated_keys() -> None:
    valid = _valid()
    alphabet = "_-=+/. \t\x00é€aZ27" + PREFIX
    for position in range(len(valid)):
        for char in alphabet:
            mutated = valid[:position] + char + valid[position + 1 :]
            try:
                parse(mutated)
            except MalformedKey:
                continue
        truncated = valid[:position]
        with pytest.raises(MalformedKey):
            parse(truncated)


def test_parse_rejects_non_strings_with_its_own_error() -> None:
    with pytest.raises(MalformedKey):
        parse(b"vgw_" + b"a" * 69)  # type: ignore[arg-type]
    with pytest.raises(MalformedKey):
        parse(None)  # type: ignore[arg-type]


def test_is_key_id() -> None:
    assert is_key_id(generate().id)
    assert not is_key_id("")
    assert not is_key_id("a" * 17)
    assert not is_key_id("A" * 16)


def test_hash_is_hmac_sha256_hex_and_depends_on_the_pepper() -> None:
    key = generate()
    digest = hash_secret(PEPPER, key.secret)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert key.secret not in digest
    assert digest != hash_secret(b"another pepper", key.secret)
    assert digest == hash_secret(PEPPER, key.secret)
    with pytest.raises(ValueError, match="pepper"):
        hash_secret(b"", key.secret)


def test_verify() -> None:
    key, other = generate(), generate()
    digest = hash_secret(PEPPER, key.secret)
    assert verify(PEPPER, key.secret, digest)
    assert not verify(PEPPER, other.secret, digest)
    assert not verify(b"another pepper", key.secret, digest)
    assert not verify(PEPPER, key.secret, "")
    assert not verify(PEPPER, key.secret, "é" * 64)


def test_api_key_is_a_plain_value() -> None:
    key = ApiKey(id="a" * 16, secret="b" * 52)
    assert key.token == "vgw_" + "a" * 16 + "_" + "b" * 52
    assert not hasattr(key, "__dict__")  # slots: a parsed key carries nothing else


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the API key is empty"),
        ("sk-" + "a" * 70, "an API key starts with 'vgw_'"),
        ("vgw_" + "a" * 10, "an API key is 73 characters long, this one 14"),
        ("vgw_" + "a" * 70, "an API key is 73 characters long, this one 74"),
        ("vgw_" + "a" * 69, "an API key is 'vgw_', 16 characters of a-z and 2-7, '_'"),
    ],
)
def test_a_refused_key_says_what_was_wrong_with_it(text: str, reason: str) -> None:
    with pytest.raises(MalformedKey) as info:
        parse(text)
    assert str(info.value).startswith(reason)


# Records: issuing a key, checking a secret against what is stored.

NOW = datetime.now(UTC)
HOUR = timedelta(hours=1)


def test_new_key_stores_only_the_hash_and_hides_it_from_repr() -> None:
    key, record = new_key(
        PEPPER, tenant="acme", name="ci", created_at=NOW, models=frozenset({"m"}),
        limits=Limits(max_tokens=64), metadata={"team": "ml"},
    )  # fmt: skip
    assert record.id == key.id
    assert record.secret_hash == hash_secret(PEPPER, key.secret)
    assert key.secret not in repr(record)
    assert record.secret_hash not in repr(record)
    assert record.secret_matches(PEPPER, key.secret, NOW)
    assert not record.secret_matches(PEPPER, generate().secret, NOW)
    assert record.principal() == Principal(
        id=key.id, tenant="acme", kind="key", models=frozenset({"m"}), limits=Limits(max_tokens=64)
    )


def test_usable_until_expired_or_revoked() -> None:
    _, record = new_key(PEPPER, tenant="t", name="n", created_at=NOW, expires_at=NOW + HOUR)
    assert record.is_usable(NOW)
    assert not record.is_usable(NOW + HOUR)
    assert not replace(record, revoked_at=NOW).is_usable(NOW)


def test_rotation_grace_applies_to_the_stored_hash() -> None:
    old, record = new_key(PEPPER, tenant="t", name="n", created_at=NOW)
    new, rotation = new_secret(PEPPER, old.id, grace_until=NOW + HOUR)
    rotated = KeyChanges(rotation=rotation).apply(record)
    assert new.id == old.id
    assert rotated.secret_matches(PEPPER, new.secret, NOW)
    assert rotated.secret_matches(PEPPER, old.secret, NOW)
    assert not rotated.secret_matches(PEPPER, old.secret, NOW + HOUR)
    assert not rotated.secret_matches(PEPPER, old.secret, NOW + 2 * HOUR)  # long after, too
    assert rotated.previous_secret_hash not in repr(rotated)
    _, at_once = new_secret(PEPPER, old.id)
    assert not KeyChanges(rotation=at_once).apply(rotated).secret_matches(PEPPER, new.secret, NOW)


def test_records_refuse_bad_values() -> None:
    _, record = new_key(PEPPER, tenant="t", name="n", created_at=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        replace(record, expires_at=datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="key id"):
        replace(record, id="short")
    with pytest.raises(ValueError, match="tenant"):
        replace(record, tenant="")
    with pytest.raises(ValueError, match="go together"):
        replace(record, previous_secret_hash="x")
    with pytest.raises(ValueError, match="go together"):
        replace(record, previous_valid_until=NOW + HOUR)


def test_record_json_round_trip_and_refusals() -> None:
    _, record = new_key(
        PEPPER, tenant="t", name="n", created_at=NOW, models=frozenset({"a", "b"}),
        limits=Limits(requests_per_minute=1), metadata={"k": "v"}, expires_at=NOW + HOUR,
    )  # fmt: skip
    assert record_from_json(record_to_json(record)) == record
    for bad in ["[]", "{}", '{"id": 1}', "not json", '{"created_at": "yesterday"}']:
        with pytest.raises(ValueError):
            record_from_json(bad)
