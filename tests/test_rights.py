"""Unit tests of zmqws/rights.py: Rights, the authenticate hook's result, topic resolution and
caps, TopicPolicy, the token file.  (The attacks these rules answer are in tests/test_attacks.py.)"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.rights import (ALL_RIGHTS, Rights, TokenFile, TopicPolicy, TopicRefused, parse_token_file,
                          resolve_topics, rights_from_hook, topic_matches)

# -- Rights ------------------------------------------------------------------------------------


def test_rights_of_takes_str_and_bytes_and_none_is_everything():
    rights = Rights.of(read=["a.", b"b."], write=["w"], name="n")
    assert rights.read == frozenset({b"a.", b"b."}) and rights.write == frozenset({b"w"})
    assert rights.restricted and rights.name == "n"
    assert Rights.of() == ALL_RIGHTS and not ALL_RIGHTS.restricted
    assert Rights.of(read=["a"], name="x") == Rights.of(read=["a"], name="y")  # the name is for logs


def test_may_read_is_a_prefix_rule():
    rights = Rights.of(read=["prices."])
    assert rights.may_read(b"prices.") and rights.may_read(b"prices.eu")
    assert not rights.may_read(b"prices") and not rights.may_read(b"") and not rights.may_read(b"news.")
    assert ALL_RIGHTS.may_read(b"") and ALL_RIGHTS.may_read(b"anything")
    assert not Rights.of(read=[]).may_read(b"a")


def test_may_write_is_a_prefix_rule():
    rights = Rights.of(read=None, write=["orders."])
    assert rights.may_write(b"orders.1") and not rights.may_write(b"order")
    assert ALL_RIGHTS.may_write(b"x")
    assert not Rights.of(write=[]).may_write(b"")


def test_everything_is_all_it_may_read():
    assert ALL_RIGHTS.everything() == [b""]
    assert Rights.of(read=["b", "a"]).everything() == [b"a", b"b"]
    assert Rights.of(read=[]).everything() == []


def test_topic_matches_is_zeromqs_rule():
    assert topic_matches(b"abc", [b"x", b"ab"])
    assert topic_matches(b"abc", [b""])
    assert not topic_matches(b"ab", [b"abc"])
    assert not topic_matches(b"abc", [])


# -- what the authenticate hook returns ----------------------------------------------------------


def test_rights_from_hook_none_is_every_right():
    assert rights_from_hook(None) is ALL_RIGHTS


def test_rights_from_hook_rights_as_they_are():
    rights = Rights.of(read=["a"], write=None)
    assert rights_from_hook(rights) is rights


@pytest.mark.parametrize("prefixes", [["a.", "b."], ("a.", b"b."), {"a.", "b."}, (p for p in ["a.", "b."])])
def test_rights_from_hook_iterable_reads_and_writes_there_only(prefixes):
    assert rights_from_hook(prefixes) == Rights.of(read=["a.", "b."], write=["a.", "b."])


def test_rights_from_hook_empty_iterable_is_nothing():
    assert rights_from_hook([]) == Rights(frozenset(), frozenset())


@pytest.mark.parametrize("value", ["prices.", b"prices."])
def test_rights_from_hook_one_string_is_a_type_error(value):
    with pytest.raises(TypeError, match="one string"):
        rights_from_hook(value)


# -- resolve_topics -----------------------------------------------------------------------------


def test_resolve_topics_sorts_and_deduplicates():
    assert resolve_topics(["b", b"a", "b"], ALL_RIGHTS) == [b"a", b"b"]


def test_resolve_topics_nothing_asked_is_everything_allowed():
    assert resolve_topics([], ALL_RIGHTS) == [b""]
    assert resolve_topics([], Rights.of(read=["x", "w"])) == [b"w", b"x"]
    with pytest.raises(TopicRefused) as refused:
        resolve_topics([], Rights.of(read=[]))
    assert refused.value.status == 403


def test_resolve_topics_count_cap_is_400_on_distinct_prefixes():
    assert resolve_topics(["a", "a", "b"], ALL_RIGHTS, max_topics=2) == [b"a", b"b"]
    with pytest.raises(TopicRefused) as refused:
        resolve_topics(["a", "b", "c"], ALL_RIGHTS, max_topics=2)
    assert refused.value.status == 400 and "2 topics" in refused.value.reason
    assert len(resolve_topics([str(i) for i in range(500)], ALL_RIGHTS, max_topics=0)) == 500  # 0: no cap


def test_resolve_topics_count_cap_stops_early_on_a_huge_request():
    def endless():
        i = 0
        while True:
            yield str(i)
            i += 1
    with pytest.raises(TopicRefused):
        resolve_topics(endless(), ALL_RIGHTS, max_topics=10)


def test_resolve_topics_length_cap_counts_utf8_bytes():
    assert resolve_topics(["é" * 2], ALL_RIGHTS, max_topic_length=4) == ["éé".encode()]
    with pytest.raises(TopicRefused) as refused:
        resolve_topics(["é" * 3], ALL_RIGHTS, max_topic_length=5)
    assert refused.value.status == 400 and "5 bytes" in refused.value.reason


def test_resolve_topics_refusal_names_the_topic():
    with pytest.raises(TopicRefused) as refused:
        resolve_topics(["a.1", "b"], Rights.of(read=["a."]))
    assert refused.value.status == 403
    assert refused.value.topic == "b" and refused.value.message == "topic not allowed: b"


PREFIX = st.binary(max_size=6, min_size=0).map(lambda b: bytes(c % 4 + 97 for c in b))  # a-d: overlaps


@settings(max_examples=300, deadline=None)
@given(read=st.frozensets(PREFIX, max_size=4), requested=st.lists(PREFIX, max_size=6))
def test_resolve_topics_never_returns_a_prefix_outside_the_read_rights(read, requested):
    rights = Rights(read, read)
    try:
        prefixes = resolve_topics(requested, rights)
    except TopicRefused as refused:
        assert refused.status == 403
        assert requested == [] and not read or any(not topic_matches(p, read) for p in requested)
        return
    assert prefixes, "an accepted request routes on something"
    assert all(topic_matches(p, read) for p in prefixes)
    if requested:
        assert prefixes == sorted(set(requested))  # never narrowed, never widened


# -- TopicPolicy ---------------------------------------------------------------------------------


class Policy:
    """A TopicPolicy over a set standing for the SUB socket's subscriptions, counting refusals."""

    def __init__(self, max_topics: int = 3, max_topic_length: int = 8, max_upstream: int = 4) -> None:
        self.subscribed = set()
        self.refusals = 0
        self.policy = TopicPolicy(max_topics, max_topic_length, max_upstream, self.subscribed, self._refused)

    def _refused(self) -> None:
        self.refusals += 1


def refused_status(call, *args) -> int:
    with pytest.raises(TopicRefused) as refused:
        call(*args)
    return refused.value.status


def test_policy_join_applies_rights_and_caps_and_counts_refusals():
    p = Policy()
    assert p.policy.join(ALL_RIGHTS, ["b", "a"]) == [b"a", b"b"]
    assert refused_status(p.policy.join, Rights.of(read=["a"]), ["b"]) == 403
    assert refused_status(p.policy.join, ALL_RIGHTS, ["a", "b", "c", "d"]) == 400
    assert refused_status(p.policy.join, ALL_RIGHTS, ["123456789"]) == 400
    assert p.refusals == 3


def test_policy_room_upstream_is_503_for_new_prefixes_only():
    p = Policy(max_upstream=2)
    p.subscribed.update({b"a", b"b"})
    assert p.policy.join(ALL_RIGHTS, ["a", "b"]) == [b"a", b"b"]
    assert refused_status(p.policy.join, ALL_RIGHTS, ["c"]) == 503
    assert refused_status(p.policy.subscribe, ALL_RIGHTS, [b"a"], [b"c"]) == 503
    assert p.refusals == 2
    assert Policy(max_upstream=0).policy.join(ALL_RIGHTS, [str(i) for i in range(3)]) == [b"0", b"1", b"2"]


def test_policy_subscribe_adds_to_the_current_prefixes_within_the_caps():
    p = Policy(max_topics=3)
    assert p.policy.subscribe(ALL_RIGHTS, [b"b"], [b"a"]) == [b"a", b"b"]
    assert p.policy.subscribe(ALL_RIGHTS, [b"a", b"b"], [b"a"]) == [b"a", b"b"]  # already there
    assert refused_status(p.policy.subscribe, ALL_RIGHTS, [b"a", b"b", b"c"], [b"d"]) == 400
    assert refused_status(p.policy.subscribe, ALL_RIGHTS, [], [b"123456789"]) == 400
    assert refused_status(p.policy.subscribe, Rights.of(read=["a"]), [b"a"], [b"b"]) == 403
    assert p.refusals == 3


# -- the token file -------------------------------------------------------------------------------

TOKENS = """\
# token       read          write
alpha         prices.,pub.  orders.
everything    *             *
reader        news.
nobody        -             -
"""


def test_parse_token_file_columns():
    tokens = parse_token_file(TOKENS, "/etc/zmqws/tokens.txt")
    assert tokens["alpha"] == Rights.of(read=["prices.", "pub."], write=["orders."])
    assert tokens["everything"] == ALL_RIGHTS
    assert tokens["reader"] == Rights.of(read=["news."], write=[])
    assert tokens["nobody"] == Rights(frozenset(), frozenset())
    assert tokens["alpha"].name == "tokens.txt:2"  # the base name and the line, for logs
    assert set(tokens) == {"alpha", "everything", "reader", "nobody"}


@pytest.mark.parametrize("text, line, what", [
    ("ok *\none\n", 2, "expected"),
    ("ok *\n\n# comment\na b c d\n", 4, "expected"),
    ("a * *\nb *\na - -\n", 3, "twice"),
])
def test_parse_token_file_errors_name_the_line(text, line, what):
    with pytest.raises(ValueError, match=rf"^tokens\.txt:{line}: .*{what}"):
        parse_token_file(text, "tokens.txt")


def test_parse_token_file_comments_after_fields():
    assert parse_token_file("t a.,b. # the dashboard\n") == {"t": Rights.of(read=["a.", "b."], write=[])}


def test_token_file_load_lookup_and_reload(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    path.write_text(TOKENS)
    tokens = TokenFile(str(path))
    assert tokens.lookup("alpha") == Rights.of(read=["prices.", "pub."], write=["orders."])
    assert tokens.lookup("alph") is None and tokens.lookup("alphaa") is None
    assert tokens.lookup(None) is None and tokens.lookup("") is None
    path.write_text("beta *\n")
    with caplog.at_level(logging.INFO, logger="zmqws"):
        assert tokens.reload() is True
    assert tokens.lookup("alpha") is None and tokens.lookup("beta") == Rights(None, frozenset())
    assert "reloaded: 1 tokens" in caplog.text


def test_token_file_reload_that_fails_keeps_the_old_tokens(tmp_path, caplog):
    path = tmp_path / "tokens.txt"
    path.write_text("beta *\n")
    tokens = TokenFile(str(path))
    for broken in ("beta\n", b"\xff\xfe not utf-8\n", None):
        if broken is None:
            path.unlink()
        elif isinstance(broken, bytes):
            path.write_bytes(broken)
        else:
            path.write_text(broken)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="zmqws"):
            assert tokens.reload() is False
        assert "previous tokens stay" in caplog.text
        assert tokens.lookup("beta") == Rights(None, frozenset())


@pytest.mark.parametrize("content, message", [
    (None, "No such file"),
    (b"\xff\xfe\n", "not UTF-8"),
    (b"a b c d\n", "tokens.txt:1"),
])
def test_token_file_load_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "tokens.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as error:
        TokenFile(str(path))
    assert str(path) in str(error.value)
