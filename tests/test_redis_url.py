"""AUTHCAR_REDIS_URL parsing and the options around it: every form the contract names, every way
to get it wrong named clearly, and no password in any message or repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from authcar.redis_url import RedisTarget, parse_redis_url, redact_url
from authcar.store.redis import RedisOptions


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", RedisTarget("standalone", False, (("localhost", 6379),))),
        ("redis://h:6380/3", RedisTarget("standalone", False, (("h", 6380),), db=3)),
        ("redis://h/", RedisTarget("standalone", False, (("h", 6379),))),
        ("rediss://u:p%40ss@h:6380", RedisTarget("standalone", True, (("h", 6380),), "u", "p@ss")),
        ("redis://:pw@h", RedisTarget("standalone", False, (("h", 6379),), None, "pw")),
        ("redis://[::1]:7000", RedisTarget("standalone", False, (("::1", 7000),))),
        ("REDIS://H", RedisTarget("standalone", False, (("H", 6379),))),
        (
            "redis+sentinel://a,b:26380/main/2",
            RedisTarget("sentinel", False, (("a", 26379), ("b", 26380)), db=2, master="main"),
        ),
        (
            "redis+sentinel://u:p@a:1/main",
            RedisTarget("sentinel", False, (("a", 1),), "u", "p", master="main"),
        ),
        ("redis+cluster://a:7000,b:7001", RedisTarget("cluster", False, (("a", 7000), ("b", 7001)))),
        ("redis+cluster://a/0", RedisTarget("cluster", False, (("a", 6379),))),
    ],
)
def test_urls_parse(url: str, expected: RedisTarget) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://h", "scheme must be one of"),
        ("h:6379", "scheme must be one of"),
        ("unix:///tmp/redis.sock", "scheme must be one of"),
        ("redis://", "host is missing"),
        ("redis://h:0", "bad port"),
        ("redis://h:65536", "bad port"),
        ("redis://h:abc", "bad port"),
        ("redis://a,b", "names one server"),
        ("redis://h/x", "database must be a number"),
        ("redis://h/-1", "database must be a number"),
        ("redis://h/1/2", "the path is /<db>"),
        ("redis://h?db=1", "query strings"),
        ("redis://h#x", "query strings"),
        ("redis://h o", "whitespace"),
        ("redis://h\n", "whitespace"),
        ("redis+sentinel://h", "needs the master's name"),
        ("redis+sentinel://h/", "needs the master's name"),
        ("redis+sentinel://h/a b", "whitespace"),
        ("redis+sentinel://h/m%20x", "master name"),
        ("redis+sentinel://h/m/1/2", "the path is /<db> after the master name"),
        ("redis+cluster://h/1", "only database 0"),
        ("redis+cluster://a,,b", "host is missing"),
        ("redis://[::1", "bad or missing host"),
        ("redis://[::1]x", "bad host"),
        ("redis://h_ost!", "bad or missing host"),
        ("redis://:pa/ss@h", "percent-encode them"),
        ("redis://:pa?ss@h", "percent-encode them"),
        ("redis://:p@ss@h", "percent-encode them"),
    ],
)
def test_bad_urls_are_named_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="AUTHCAR_REDIS_URL") as caught:
        parse_redis_url(url)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:hunter2-secret@h:6379/0",
        "rediss://:hunter2-secret@h",
        "redis+sentinel://user:hunter2-secret@a,b/main",
        "redis+cluster://:hunter2-secret@a:1,b:2",
        "redis://:hunter2-secret@h?db=1",  # refused, and still redacted in the refusal
        "redis://:hunter2-secret@h/x",
        "http://:hunter2-secret@h",
        "redis+sentinel://:hunter2-secret@h",
        "redis://:hunter2-secret@@h",
        # Unencoded '/', '?', '#' or '@' in a password: refused, and none of it shown.
        "redis://:hunter2-secret/x@h",
        "redis://:x/hunter2-secret@h",
        "redis://:hunter2-secret?x@h",
        "redis://:x#hunter2-secret@h",
        "redis://:x@hunter2-secret@h",
        "redis://us/er:hunter2-secret@h",
        "redis+sentinel://:a/hunter2-secret@s1/main",
    ],
)
def test_passwords_never_appear(url: str) -> None:
    assert "hunter2-secret" not in redact_url(url)
    try:
        target = parse_redis_url(url)
    except ValueError as error:
        refusal = str(error)
    else:
        refusal = ""
        assert "hunter2-secret" not in str(target)
        assert "hunter2-secret" not in repr(target)
        assert ":***@" in str(target)
        options = RedisOptions(url, password="other-secret")
        assert "hunter2-secret" not in repr(options)
        assert "other-secret" not in repr(options)
    assert "hunter2-secret" not in refusal
    assert not refusal or "***" in refusal


def test_the_printed_url_is_the_normalised_one() -> None:
    assert (
        str(parse_redis_url("redis+sentinel://u:p@a,b:1/main/2"))
        == "redis+sentinel://u:***@a:26379,b:1/main/2"
    )
    assert str(parse_redis_url("rediss://[::1]")) == "rediss://[::1]:6379"
    assert redact_url("no-scheme-user:pw@h") == "***"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"key_prefix": ""}, "key prefix"),
        ({"key_prefix": "a b"}, "key prefix"),
        ({"key_prefix": "ключ:"}, "key prefix"),
        ({"key_prefix": "p" * 65}, "key prefix"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": 61}, "timeout"),
        ({"ca_file": Path("/ca.pem")}, "needs a rediss:// URL"),
        ({"max_members": 0}, "max_members"),
        ({"max_members": True}, "max_members"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        RedisOptions("redis://h", **options)  # type: ignore[arg-type]


def test_tls_options_are_accepted() -> None:
    assert RedisOptions("rediss://h", ca_file=Path("/ca.pem")).target.tls
