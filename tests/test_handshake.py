"""Tests of zmqws.protocol.handshake: the RFC 6455 §4 opening handshake and its HTTP/1.1 parser."""

import base64
import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.protocol.handshake import (
    HTTPError, Request, RequestParser, accept_key, error_response, http_response,
    parse_extensions, websocket_accept,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# The client handshake of RFC 6455 §1.2 (with a Connection token list, as browsers send).
BASE_HEADERS = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Origin", "http://example.com"),
    ("Sec-WebSocket-Version", "13"),
]


def raw_request(headers=None, method="GET", target="/chat", version="HTTP/1.1",
                drop=(), extra=(), replace=None):
    """Build request bytes from BASE_HEADERS, dropping/replacing/adding headers."""
    headers = list(BASE_HEADERS if headers is None else headers)
    replace = replace or {}
    lines = [f"{method} {target} {version}"]
    for name, value in headers:
        if name in drop:
            continue
        lines.append(f"{name}: {replace.get(name, value)}")
    lines += [f"{name}: {value}" for name, value in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse(data):
    request = RequestParser().feed(data)
    assert isinstance(request, Request)
    return request


def accept(data, subprotocols=()):
    return websocket_accept(parse(data), subprotocols)


def rejection(data, subprotocols=()):
    with pytest.raises(HTTPError) as info:
        accept(data, subprotocols)
    return info.value


def response_headers(response):
    head = response.decode("latin-1")
    assert head.endswith("\r\n\r\n")
    lines = head[:-4].split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers.setdefault(name.lower(), []).append(value)
    return lines[0], headers


# -- §1.3, §4.2.2 the accept key ----------------------------------------------

def test_rfc1_3_accept_key_example():
    """§1.3: key "dGhlIHNhbXBsZSBub25jZQ==" gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="."""
    assert accept_key(RFC_KEY) == RFC_ACCEPT


def test_rfc4_2_2_accept_key_is_base64_sha1_of_key_and_guid():
    """§4.2.2: base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))."""
    key = base64.b64encode(bytes(range(16))).decode()
    expected = base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    assert accept_key(key) == expected


# -- §4.2.2 the 101 response ---------------------------------------------------

def test_rfc4_2_2_valid_request_gets_101_with_the_right_headers():
    """§4.2.2: 101 Switching Protocols, Upgrade: websocket, Connection: Upgrade, Sec-WebSocket-Accept."""
    response, subprotocol, extension = accept(raw_request())
    status, headers = response_headers(response)
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert headers["upgrade"] == ["websocket"]
    assert headers["connection"] == ["Upgrade"]
    assert headers["sec-websocket-accept"] == [RFC_ACCEPT]
    assert "sec-websocket-protocol" not in headers
    assert "sec-websocket-extensions" not in headers
    assert subprotocol is None and extension is None


def test_rfc4_2_1_key_with_surrounding_whitespace_is_accepted():
    """§4.2.1: optional whitespace around a header value is not part of it (RFC 9110 §5.5)."""
    response, _, _ = accept(raw_request(replace={"Sec-WebSocket-Key": f"  {RFC_KEY}  "}))
    assert response_headers(response)[1]["sec-websocket-accept"] == [RFC_ACCEPT]


def test_rfc4_2_2_extra_headers_are_appended():
    """Extra response headers given by the server are in the 101."""
    request = parse(raw_request())
    response, _, _ = websocket_accept(request, extra_headers=[("X-Test", "1")])
    assert response_headers(response)[1]["x-test"] == ["1"]


# -- §4.2.1 rejection rules ----------------------------------------------------

@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "DELETE"])
def test_rfc4_2_1_method_must_be_get(method):
    """§4.2.1 item 1: the request method MUST be GET (else 400, or 405)."""
    assert rejection(raw_request(method=method)).status in (400, 405)


def test_rfc4_2_1_http_1_0_is_refused():
    """§4.2.1 item 1: HTTP/1.1 or higher."""
    assert rejection(raw_request(version="HTTP/1.0")).status == 400


def test_rfc4_2_1_host_header_is_required():
    """§4.2.1 item 2: a Host header field is required."""
    assert rejection(raw_request(drop=("Host",))).status == 400


def test_rfc4_2_1_upgrade_header_is_required():
    """§4.2.1 item 3: Upgrade must contain "websocket"."""
    assert rejection(raw_request(drop=("Upgrade",))).status == 400


def test_rfc4_2_1_upgrade_to_another_protocol_is_refused():
    """§4.2.1 item 3: an Upgrade without the "websocket" token is refused."""
    assert rejection(raw_request(replace={"Upgrade": "h2c"})).status == 400


@pytest.mark.parametrize("value", ["websocket, foo", "foo, websocket", "WebSocket", "WEBSOCKET"])
def test_rfc4_2_1_upgrade_is_a_case_insensitive_token_list(value):
    """§4.2.1 item 3: Upgrade is a token list; "websocket" is compared case-insensitively."""
    response, _, _ = accept(raw_request(replace={"Upgrade": value}))
    assert response.startswith(b"HTTP/1.1 101 ")


def test_rfc4_2_1_connection_header_is_required():
    """§4.2.1 item 4: Connection must contain "Upgrade"."""
    assert rejection(raw_request(drop=("Connection",))).status == 400


def test_rfc4_2_1_connection_without_upgrade_token_is_refused():
    """§4.2.1 item 4: "Connection: keep-alive" alone is not an upgrade."""
    assert rejection(raw_request(replace={"Connection": "keep-alive"})).status == 400


@pytest.mark.parametrize("value", ["keep-alive, Upgrade", "upgrade", "UPGRADE, keep-alive"])
def test_rfc4_2_1_connection_is_a_case_insensitive_token_list(value):
    """§4.2.1 item 4: "Connection: keep-alive, Upgrade" (Firefox) is accepted, any case."""
    response, _, _ = accept(raw_request(replace={"Connection": value}))
    assert response.startswith(b"HTTP/1.1 101 ")


def test_rfc4_2_1_connection_tokens_across_repeated_header_lines():
    """RFC 9110 §5.3: repeated Connection lines combine into one list."""
    data = raw_request(replace={"Connection": "keep-alive"}, extra=[("Connection", "Upgrade")])
    response, _, _ = accept(data)
    assert response.startswith(b"HTTP/1.1 101 ")


def test_rfc4_2_1_key_is_required():
    """§4.2.1 item 5: Sec-WebSocket-Key is required."""
    assert rejection(raw_request(drop=("Sec-WebSocket-Key",))).status == 400


def test_rfc4_2_1_repeated_key_is_refused():
    """§4.2.1 item 5, §11.3.1: Sec-WebSocket-Key MUST NOT appear more than once."""
    assert rejection(raw_request(extra=[("Sec-WebSocket-Key", RFC_KEY)])).status == 400


def test_rfc4_2_1_key_decoding_to_15_bytes_is_refused():
    """§4.2.1 item 5: the key, base64-decoded, must be 16 bytes long."""
    key15 = base64.b64encode(b"\x01" * 15).decode()
    assert rejection(raw_request(replace={"Sec-WebSocket-Key": key15})).status == 400


def test_rfc4_2_1_key_decoding_to_17_bytes_is_refused():
    """§4.2.1 item 5: 17 bytes is not 16 bytes either."""
    key17 = base64.b64encode(b"\x01" * 17).decode()
    assert rejection(raw_request(replace={"Sec-WebSocket-Key": key17})).status == 400


@pytest.mark.parametrize("key", ["not base64 at all!!", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBs*ZSBub25jZQ=="])
def test_rfc4_2_1_key_that_is_not_base64_is_refused(key):
    """§4.2.1 item 5: the key must be a base64-encoded value."""
    assert rejection(raw_request(replace={"Sec-WebSocket-Key": key})).status == 400


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
def test_rfc4_4_other_version_is_426_with_supported_version(version):
    """§4.2.2, §4.4: an unsupported version gets 426 and "Sec-WebSocket-Version: 13"."""
    error = rejection(raw_request(replace={"Sec-WebSocket-Version": version}))
    assert error.status == 426
    assert ("Sec-WebSocket-Version", "13") in error.headers


def test_rfc4_2_1_missing_version_is_refused():
    """§4.2.1 item 6: Sec-WebSocket-Version is required (refused; 426 tells the version)."""
    error = rejection(raw_request(drop=("Sec-WebSocket-Version",)))
    assert error.status in (400, 426)
    if error.status == 426:
        assert ("Sec-WebSocket-Version", "13") in error.headers


def test_rfc4_4_426_response_carries_the_version_header():
    """§4.4: the 426 response on the wire carries "Sec-WebSocket-Version: 13" and a correct length."""
    error = rejection(raw_request(replace={"Sec-WebSocket-Version": "8"}))
    response = error_response(error)
    head, _, body = response.partition(b"\r\n\r\n")
    status, headers = response_headers(head + b"\r\n\r\n")
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert headers["sec-websocket-version"] == ["13"]
    assert headers["content-length"] == [str(len(body))]


# -- §4.2.2 subprotocol negotiation ---------------------------------------------

def test_rfc4_2_2_subprotocol_server_preference_wins():
    """§4.2.2 /subprotocol/: the server picks, in its own order of preference, one the client offered."""
    data = raw_request(extra=[("Sec-WebSocket-Protocol", "chat, superchat")])
    response, chosen, _ = accept(data, subprotocols=["superchat", "chat"])
    assert chosen == "superchat"
    assert response_headers(response)[1]["sec-websocket-protocol"] == ["superchat"]


def test_rfc4_2_2_subprotocol_first_server_choice_not_offered_is_skipped():
    """§4.2.2: a server preference the client did not offer is skipped."""
    data = raw_request(extra=[("Sec-WebSocket-Protocol", "chat")])
    _, chosen, _ = accept(data, subprotocols=["superchat", "chat"])
    assert chosen == "chat"


def test_rfc4_2_2_subprotocols_over_repeated_header_lines():
    """§4.2.1 item 8, RFC 9110 §5.3: offers may be spread over several header lines."""
    data = raw_request(extra=[("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b")])
    _, chosen, _ = accept(data, subprotocols=["b"])
    assert chosen == "b"


def test_rfc4_2_2_no_subprotocol_overlap_means_no_header():
    """§4.2.2: with no common subprotocol the response has no Sec-WebSocket-Protocol header."""
    data = raw_request(extra=[("Sec-WebSocket-Protocol", "chat, superchat")])
    response, chosen, _ = accept(data, subprotocols=["mqtt"])
    assert chosen is None
    assert "sec-websocket-protocol" not in response_headers(response)[1]


def test_rfc4_2_2_no_subprotocol_offered_means_no_header():
    """§4.2.2: a client that offers none gets none, whatever the server speaks."""
    response, chosen, _ = accept(raw_request(), subprotocols=["chat"])
    assert chosen is None
    assert "sec-websocket-protocol" not in response_headers(response)[1]


# -- extensions (§9.1) -------------------------------------------------------------

def test_rfc9_1_parse_extensions_repeated_offers_with_params():
    """§9.1, RFC 7692 §5: several offers of one extension, parameters with and without values."""
    value = "permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=10"
    assert parse_extensions(value) == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("permessage-deflate", [("server_max_window_bits", "10")]),
    ]


def test_rfc9_1_parse_extensions_quoted_value():
    """§9.1: a parameter value may be a quoted-string; the quotes are removed."""
    assert parse_extensions('permessage-deflate; server_max_window_bits="10"') == [
        ("permessage-deflate", [("server_max_window_bits", "10")])]


def test_rfc9_1_parse_extensions_quoted_comma_does_not_split():
    """§9.1: a separator inside quotes does not separate; the quoted value must still be a token."""
    with pytest.raises(HTTPError) as info:
        parse_extensions('x; a="1,2", y')
    assert info.value.status == 400


def test_rfc9_1_parse_extensions_whitespace_and_empty_items():
    """§9.1, RFC 9110 §5.6.1: whitespace around items is ignored, empty list items too."""
    assert parse_extensions(" foo ;  bar = 1 ,, baz") == [("foo", [("bar", "1")]), ("baz", [])]


@pytest.mark.parametrize("value", ["a b", "; foo", "foo; =1", 'foo; x="a b"', "foo; x=1 2", "fö"])
def test_rfc9_1_malformed_extensions_are_400(value):
    """§9.1: names and values must be tokens; anything else is a malformed header (400)."""
    with pytest.raises(HTTPError) as info:
        parse_extensions(value)
    assert info.value.status == 400


def test_rfc9_1_extension_negotiator_gets_offers_and_sets_header():
    """§9.1: the negotiator sees the parsed offers; its answer is the response header."""
    seen = []

    def negotiate(offers):
        seen.append(offers)
        return "permessage-deflate", "state"

    data = raw_request(extra=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")])
    response, _, state = websocket_accept(parse(data), negotiate_extensions=negotiate)
    assert seen == [[("permessage-deflate", [("client_max_window_bits", None)])]]
    assert state == "state"
    assert response_headers(response)[1]["sec-websocket-extensions"] == ["permessage-deflate"]


# -- the incremental HTTP/1.1 parser ---------------------------------------------

def test_request_parser_fields():
    """RFC 9112 §3: method, target, path, query, version; header names lower-case, values kept."""
    request = parse(raw_request(target="/chat?topic=prices.&x=1&x=2"))
    assert (request.method, request.target, request.version) == ("GET", "/chat?topic=prices.&x=1&x=2", "HTTP/1.1")
    assert request.path == "/chat"
    assert request.query_value("topic") == "prices."
    assert request.query_value("x") == "2"
    assert request.headers["sec-websocket-key"] == [RFC_KEY]
    assert request.header("HOST") == "server.example.com"


def test_request_split_at_every_byte_position_parses_the_same():
    """The parser is incremental: a request split at any position parses to the same request."""
    data = raw_request(extra=[("Sec-WebSocket-Protocol", "chat")])
    whole = parse(data)
    for i in range(len(data) + 1):
        parser = RequestParser()
        first = parser.feed(data[:i])
        second = parser.feed(data[i:])
        request = first if first is not None else second
        assert (first is None) == (i < len(data))
        assert (request.method, request.target, request.version, request.headers) == (
            whole.method, whole.target, whole.version, whole.headers)


def test_request_fed_byte_by_byte():
    """The parser returns None until the last byte of the head, then the request."""
    data = raw_request()
    parser = RequestParser()
    results = [parser.feed(data[i:i + 1]) for i in range(len(data))]
    assert all(r is None for r in results[:-1])
    assert isinstance(results[-1], Request)


def test_leading_empty_lines_are_ignored():
    """RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line."""
    assert parse(b"\r\n\r\n" + raw_request()).method == "GET"


def test_bytes_after_the_head_are_kept_in_rest():
    """§4.1: a client may send frames right behind its handshake; they stay in ``rest``."""
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    parser = RequestParser()
    assert parser.feed(raw_request() + frame) is not None
    assert parser.rest == frame
    assert parser.reset() == frame and parser.rest == b""


def test_content_length_body_is_read():
    """RFC 9112 §6.2: a body delimited by Content-Length, even split, and bytes after it kept."""
    data = b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhel"
    parser = RequestParser()
    assert parser.feed(data) is None
    request = parser.feed(b"lo" + b"NEXT")
    assert request.body == b"hello"
    assert parser.rest == b"NEXT"


def test_next_request_on_the_same_parser():
    """RFC 9112 §9.3: a persistent connection: the parser is ready for the next request."""
    parser = RequestParser()
    one = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
    two = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    assert parser.feed(one).path == "/a"
    assert parser.feed(parser.reset() + two).path == "/b"


def test_head_over_8k_is_431_before_the_end_arrives():
    """RFC 6585 §5: a head over 8 KiB gets 431 at once, without waiting for CRLF CRLF."""
    parser = RequestParser()
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    with pytest.raises(HTTPError) as info:
        for _ in range(10):
            parser.feed(b"X-Filler: " + b"a" * 1000 + b"\r\n")
    assert info.value.status == 431


def test_complete_head_over_8k_is_431():
    """RFC 6585 §5: a whole head over 8 KiB arriving at once is also 431."""
    data = raw_request(extra=[("X-Big", "a" * 8200)])
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(data)
    assert info.value.status == 431


def test_head_just_under_8k_is_accepted():
    """A head of exactly 8192 bytes (CRLF CRLF included) is within the limit."""
    base = raw_request(extra=[("X-Big", "")])
    data = raw_request(extra=[("X-Big", "a" * (8192 - len(base)))])
    assert len(data) == 8192
    assert parse(data).headers["x-big"] == ["a" * (8192 - len(base))]


def test_too_many_header_fields_is_431():
    """RFC 6585 §5: more header fields than allowed is 431."""
    data = raw_request(extra=[(f"X-{i}", "1") for i in range(101)])
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(data)
    assert info.value.status == 431


@pytest.mark.parametrize("line", [
    b"GET /\r\n", b"GET  / HTTP/1.1\r\n", b"GET / HTTP/1.1 extra\r\n", b"G\xc3\x89T / HTTP/1.1\r\n",
    b"GET chat HTTP/1.1\r\n", b"G(T / HTTP/1.1\r\n", b"GET / FTP/1.0\r\n", b" GET / HTTP/1.1\r\n",
])
def test_malformed_request_line_is_400(line):
    """RFC 9112 §3: method SP request-target SP HTTP-version; anything else is 400."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(line + b"Host: x\r\n\r\n")
    assert info.value.status == 400


def test_unsupported_http_version_is_505():
    """RFC 9110 §15.6.6: HTTP/2.0 on an HTTP/1.1 connection is 505."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
    assert info.value.status == 505


@pytest.mark.parametrize("header", [
    b"NoColon", b" folded: x", b"\tfolded: x", b"Bad Name: x", b": empty-name", b"X-Nul: a\x00b",
    b"X-Bare-LF: a\nb", b"X-Bare-CR: a\rb", b"Na\xefme: x",
])
def test_malformed_header_line_is_400(header):
    """RFC 9112 §5: field-name ":" OWS field-value OWS; no folding, no CR/LF/NUL in values."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"GET / HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"1.0", b"5, 6", b"0x10"])
def test_malformed_content_length_is_400(value):
    """RFC 9112 §6.3: Content-Length is 1*DIGIT; anything else is 400."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9", b"1\xb3"])
def test_non_ascii_digit_content_length_is_400(value):
    """RFC 9112 §6.3, RFC 5234 DIGIT = %x30-39: a Latin-1 superscript digit ("²") is not a DIGIT (400)."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + value + b"\r\n\r\n")
    assert info.value.status == 400


def test_huge_content_length_is_refused_with_an_http_error():
    """RFC 9112 §6.3: a Content-Length of thousands of digits is refused (413), not a crash."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")
    assert info.value.status in (400, 413)


def test_body_over_the_limit_is_413():
    """RFC 9110 §15.5.14: a body larger than allowed is 413, refused from the header alone."""
    with pytest.raises(HTTPError) as info:
        RequestParser(max_body_size=10).feed(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    assert info.value.status == 413


def test_transfer_encoding_is_501():
    """RFC 9112 §6.1: transfer codings are not implemented here (501)."""
    with pytest.raises(HTTPError) as info:
        RequestParser().feed(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert info.value.status == 501


# -- responses -----------------------------------------------------------------

def test_http_response_has_status_length_and_connection():
    """RFC 9112 §6.3: every response carries its length; Connection says whether it persists."""
    response = http_response(404, b"nope\n")
    head, _, body = response.partition(b"\r\n\r\n")
    status, headers = response_headers(head + b"\r\n\r\n")
    assert status == "HTTP/1.1 404 Not Found"
    assert body == b"nope\n"
    assert headers["content-length"] == ["5"]
    assert headers["connection"] == ["close"]


def test_http_response_head_only_keeps_length_without_body():
    """RFC 9110 §9.3.2: a HEAD response has the GET headers and no body."""
    response = http_response(200, b"hello", head_only=True, keep_alive=True)
    head, _, body = response.partition(b"\r\n\r\n")
    assert body == b""
    headers = response_headers(head + b"\r\n\r\n")[1]
    assert headers["content-length"] == ["5"] and headers["connection"] == ["keep-alive"]


def test_error_response_body_is_the_reason():
    """error_response: the status line and the reason as a short text body."""
    response = error_response(HTTPError(400, "bad thing"))
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert response.endswith(b"\r\n\r\nbad thing\n")


# -- property tests ------------------------------------------------------------

def _split(draw, data, max_cuts=20):
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=max_cuts)))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _feed_everything(chunks):
    """Feed chunks; only Request/None results or HTTPError are allowed. Returns results."""
    parser = RequestParser(max_header_size=1024)
    results = []
    try:
        for chunk in chunks:
            result = parser.feed(chunk)
            assert result is None or isinstance(result, Request)
            results.append(result)
            if result is not None:
                parser.reset()
    except HTTPError as exc:
        assert 400 <= exc.status <= 599
    return results


_HTTPISH = st.lists(
    st.sampled_from([b"GET", b"POST", b" ", b"/", b"?a=%zz&b", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9",
                     b"\r\n", b"\r\n\r\n", b"\n", b"\r", b":", b"Host", b"Content-Length", b"Transfer-Encoding",
                     b"Connection", b"0", b"12", b"\xb2", b"\xff", b"\x00", b"\t", b"[", b"http://[::1",
                     b"abc", b",", b"\"", b"9" * 30]),
    max_size=40,
).map(b"".join)


@given(st.one_of(st.binary(max_size=300), _HTTPISH), st.data())
@settings(max_examples=200, deadline=None)
def test_property_arbitrary_bytes_only_raise_http_error(raw, data):
    """Any bytes in any split give a Request, None, or HTTPError with a 4xx/5xx status; nothing else."""
    _feed_everything(_split(data.draw, raw))


@given(st.lists(st.tuples(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), min_size=1, max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0x00, max_codepoint=0xFF), max_size=20),
), max_size=6), st.data())
@settings(max_examples=200, deadline=None)
def test_property_arbitrary_headers_only_raise_http_error(headers, data):
    """A request line followed by arbitrary Latin-1 header lines: Request, None or HTTPError only,
    and websocket_accept on any parsed request returns a 101 or raises HTTPError."""
    raw = b"GET / HTTP/1.1\r\n" + b"".join(
        name.encode("latin-1") + b":" + value.encode("latin-1") + b"\r\n" for name, value in headers) + b"\r\n"
    for result in _feed_everything(_split(data.draw, raw)):
        if result is not None:
            try:
                websocket_accept(result, ["chat"], negotiate_extensions=lambda offers: None)
            except HTTPError as exc:
                assert exc.status in (400, 426)


@given(st.sampled_from(["Content-Length", "content-length"]),
       st.text(alphabet=st.one_of(st.sampled_from("0123456789\xb2\xb3\xb9 ,+-"),
                                  st.characters(min_codepoint=0x20, max_codepoint=0xFF)), max_size=12)
       | st.integers(0, 6000).map(lambda n: "1" * n))
@settings(max_examples=200, deadline=None)
def test_property_any_content_length_value_is_handled(name, value):
    """RFC 9112 §6.3: any Content-Length value is either a valid length or an HTTPError."""
    raw = f"POST / HTTP/1.1\r\nHost: x\r\n{name}: {value}\r\n\r\n".encode("latin-1")
    try:
        RequestParser().feed(raw)
    except HTTPError as exc:
        assert exc.status in (400, 413)
