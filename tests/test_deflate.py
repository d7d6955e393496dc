"""Tests of zmqws.protocol.deflate (RFC 7692 permessage-deflate) and its use by the connection.

Negotiation: one test per rule of §5 and §7.1, with the offers of the RFC's
examples and of real clients.  Compression: round trips against plain
``zlib`` for every window size, the RFC's §7.2.3 example payloads, fragments,
context takeover, the size limit on the *inflated* data (compression bombs)
and invalid data.  The connection tests feed a real
:class:`zmqws.protocol.connection.WebSocketConnection` masked compressed frames.
"""

from __future__ import annotations

import random
import resource
import sys
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from zmqws.protocol.connection import ConnectionFailed, Message, Ping, WebSocketConnection
from zmqws.protocol.deflate import (
    DeflateConfig, PerMessageDeflate, compress_message, encode_compressed_frame,
)
from zmqws.protocol.frames import (
    OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_TEXT, FrameParser, ProtocolError, encode_frame,
    parse_close_payload,
)
from zmqws.protocol.handshake import parse_extensions

from conftest import TAIL, inflate as zlib_inflate

MASK = b"\x11\x22\x33\x44"

# Offers sent by real clients (Sec-WebSocket-Extensions of their opening handshake).
CHROMIUM = "permessage-deflate; client_max_window_bits"
FIREFOX = "permessage-deflate; client_max_window_bits"
SAFARI = "permessage-deflate"
WEBSOCKETS_DEFAULT = "permessage-deflate; client_max_window_bits"

# §7.2.3 example payloads, all of which inflate to b"Hello".
HELLO = bytes((0xF2, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00))                       # §7.2.3.1
HELLO_STORED = bytes((0x00, 0x05, 0x00, 0xFA, 0xFF, 0x48, 0x65, 0x6C, 0x6C, 0x6F, 0x00))  # §7.2.3.3
HELLO_BFINAL = bytes((0xF3, 0x48, 0xCD, 0xC9, 0xC9, 0x07, 0x00, 0x00))           # §7.2.3.4
HELLO_TWO_BLOCKS = bytes((0xF2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xFF, 0xFF,
                          0xCA, 0xC9, 0xC9, 0x07, 0x00))                          # §7.2.3.5
HELLO_AGAIN = bytes((0xF2, 0x00, 0x11, 0x00, 0x00))  # §7.2.3.2: second "Hello", shared window


def negotiate(header: str, **config):
    return DeflateConfig(**config).negotiate(parse_extensions(header))


def response_params(response: str):
    """The parameters of a response value, as a dict (the response has one extension)."""
    [(name, params)] = parse_extensions(response)
    assert name == "permessage-deflate"
    names = [p for p, _ in params]
    assert len(names) == len(set(names)), "a response must not repeat a parameter (§7.1)"
    return dict(params)


def sample(n: int, seed: int = 0) -> bytes:
    """Compressible data with back-references at every distance, from 1 up to ~n."""
    rnd = random.Random(seed)
    words = [bytes(rnd.randrange(97, 123) for _ in range(rnd.randint(1, 12))) for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])


def client_compress(messages, wbits=15, context_takeover=True):
    """What a client sends (§7.2.1): each message's compressed payload."""
    out = []
    comp = None
    for message in messages:
        if comp is None or not context_takeover:
            comp = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        data = comp.compress(message) + comp.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(TAIL)
        out.append(data[:-4])
    return out


def inflate(pmd: PerMessageDeflate, pieces, max_size=1 << 30) -> bytes:
    """Feed the pieces of one compressed message the way the connection does."""
    pmd.start_message()
    out = b""
    for i, piece in enumerate(pieces):
        out += pmd.decompress(piece, max_size - len(out), i == len(pieces) - 1)
    return out


def split(data: bytes, cuts) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0] + points + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# =============================================================================
# Negotiation (§5, §7.1)
# =============================================================================

@pytest.mark.parametrize("offer", [CHROMIUM, FIREFOX, WEBSOCKETS_DEFAULT],
                         ids=["chromium", "firefox", "websockets"])
def test_browser_offer_client_max_window_bits_without_value(offer):
    response, pmd = negotiate(offer)
    # §7.1.2.2: the server may leave client_max_window_bits out; at the default cap it does.
    assert response == "permessage-deflate; server_no_context_takeover"
    assert pmd.in_wbits == 15 and pmd.out_key == 15
    assert not pmd.client_no_context_takeover


def test_safari_offer_without_parameters():
    response, pmd = negotiate(SAFARI)
    assert response == "permessage-deflate; server_no_context_takeover"
    assert (pmd.out_key, pmd.in_wbits, pmd.client_no_context_takeover) == (15, 15, False)


def test_server_no_context_takeover_is_always_answered_and_never_twice():
    # §7.1.1.1: the server may include it whether or not it was offered.
    for offer in ("permessage-deflate", "permessage-deflate; server_no_context_takeover"):
        response, _ = negotiate(offer)
        assert response.split("; ").count("server_no_context_takeover") == 1


def test_client_no_context_takeover_is_echoed_and_resets_the_inflater():
    response, pmd = negotiate("permessage-deflate; client_no_context_takeover")
    assert "client_no_context_takeover" in response_params(response)
    assert pmd.client_no_context_takeover
    # Two messages compressed by a client that keeps its context: the second
    # refers to the first, which the reset inflater no longer has (§7.2.3.2).
    first, second = client_compress([b"Hello", b"Hello"])
    assert inflate(pmd, [first]) == b"Hello"
    with pytest.raises(ProtocolError) as info:
        inflate(pmd, [second])
    assert info.value.code == 1007


def test_client_context_takeover_is_the_default():
    _, pmd = negotiate(SAFARI)
    assert inflate(pmd, [HELLO]) == b"Hello"
    assert inflate(pmd, [HELLO_AGAIN]) == b"Hello"  # §7.2.3.2 verbatim


def test_server_max_window_bits_offered_value_is_answered():
    # §7.1.2.1: "the same or smaller value as the offer"; we compress with it.
    for bits in range(9, 16):
        response, pmd = negotiate(f"permessage-deflate; server_max_window_bits={bits}")
        assert response_params(response)["server_max_window_bits"] == str(bits)
        assert pmd.out_key == bits


def test_server_max_window_bits_capped_by_config():
    response, pmd = negotiate("permessage-deflate; server_max_window_bits=12", max_window_bits=10)
    assert response_params(response)["server_max_window_bits"] == "10"
    assert pmd.out_key == 10


def test_server_max_window_bits_not_offered_announced_only_when_capped():
    # §7.1.2.1: the server MAY include it even when the offer did not.
    response, pmd = negotiate("permessage-deflate")
    assert "server_max_window_bits" not in response_params(response)
    response, pmd = negotiate("permessage-deflate", max_window_bits=11)
    assert response_params(response)["server_max_window_bits"] == "11"
    assert pmd.out_key == 11


def test_server_max_window_bits_8_is_accepted_and_compressed_with_9():
    response, pmd = negotiate("permessage-deflate; server_max_window_bits=8")
    assert response_params(response)["server_max_window_bits"] == "8"
    assert pmd.server_max_window_bits == 8
    assert pmd.out_key == 9  # shares bytes with the 9-bit clients: they are the same bytes
    data = sample(20000)
    assert zlib_inflate(compress_message(data, 8), 8) == data


def test_server_max_window_bits_without_value_is_declined():
    # §7.1.2.1: in an offer the parameter has a value.
    assert negotiate("permessage-deflate; server_max_window_bits") is None


def test_client_max_window_bits_without_value_answered_with_the_cap():
    response, pmd = negotiate(CHROMIUM, max_window_bits=12)
    assert response_params(response)["client_max_window_bits"] == "12"
    assert pmd.in_wbits == 12


def test_client_max_window_bits_with_value_never_answered_larger():
    for offered in range(8, 16):
        for cap in range(9, 16):
            response, pmd = negotiate(f"permessage-deflate; client_max_window_bits={offered}",
                                      max_window_bits=cap)
            params = response_params(response)
            answered = int(params.get("client_max_window_bits", "15"))
            assert answered <= offered
            assert pmd.in_wbits == min(offered, cap)
            if offered < 15:
                # Left out, the client's own value would hold; it is echoed to be explicit.
                assert answered == pmd.in_wbits


def test_client_max_window_bits_not_offered_is_never_answered():
    # §7.1.2.2: "MUST NOT include" it; the client may then use 15 bits.
    response, pmd = negotiate("permessage-deflate", max_window_bits=9)
    assert "client_max_window_bits" not in response_params(response)
    assert pmd.in_wbits == 15


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=abc",
    "permessage-deflate; server_max_window_bits=08",   # leading zero (§7.1.2.1 ABNF)
    "permessage-deflate; server_max_window_bits=0",
    "permessage-deflate; server_max_window_bits=150",
    'permessage-deflate; server_max_window_bits="16"',
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=abc",
    "permessage-deflate; client_max_window_bits=010",
    'permessage-deflate; client_max_window_bits="x"',
])
def test_value_out_of_range_is_declined(offer):
    assert negotiate(offer) is None


@pytest.mark.parametrize("value", ["", "-9", "+9", "9.0", " 9", "९"])
def test_odd_values_are_declined(value):
    # Values that parse_extensions would not even produce, given directly.
    for name in ("server_max_window_bits", "client_max_window_bits"):
        assert DeflateConfig().negotiate([("permessage-deflate", [(name, value)])]) is None


def test_quoted_value_is_unquoted_and_accepted():
    response, pmd = negotiate('permessage-deflate; server_max_window_bits="10"')
    assert response_params(response)["server_max_window_bits"] == "10"
    assert pmd.out_key == 10


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; client_no_context_takeover=true",
    'permessage-deflate; client_no_context_takeover="x"',
])
def test_value_on_no_context_takeover_is_declined(offer):
    assert negotiate(offer) is None


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
    "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
    "permessage-deflate; client_max_window_bits; Client_Max_Window_Bits",
])
def test_duplicate_parameter_is_declined(offer):
    assert negotiate(offer) is None


@pytest.mark.parametrize("offer", [
    "permessage-deflate; foo",
    "permessage-deflate; foo=bar",
    "permessage-deflate; client_max_window_bits; x-webkit",
    "permessage-deflate; max_window_bits=10",
])
def test_unknown_parameter_is_declined(offer):
    assert negotiate(offer) is None


def test_rfc_example_fallback_offers_first_acceptable_wins():
    # §5.1 / §7.1.3 style: the preferred offer first, a fallback after it.
    header = ("permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
              "permessage-deflate; client_max_window_bits")
    response, pmd = negotiate(header)
    assert response_params(response)["server_max_window_bits"] == "10"
    assert pmd.out_key == 10


@pytest.mark.parametrize("first", [
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; foo",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; server_no_context_takeover=yes",
    "permessage-deflate; server_max_window_bits",
])
def test_invalid_first_offer_then_valid_second(first):
    response, pmd = negotiate(first + ", permessage-deflate; server_max_window_bits=11")
    assert response_params(response)["server_max_window_bits"] == "11"
    assert pmd.out_key == 11


def test_several_invalid_offers_then_plain_one():
    header = ("permessage-deflate; server_max_window_bits=16, permessage-deflate; bar, "
              "x-webkit-deflate-frame, permessage-deflate; client_no_context_takeover")
    response, pmd = negotiate(header)
    assert response == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert pmd.client_no_context_takeover


def test_every_offer_invalid_declines():
    assert negotiate("permessage-deflate; a, permessage-deflate; server_max_window_bits=99") is None


def test_other_extensions_are_ignored():
    assert negotiate("x-webkit-deflate-frame") is None
    assert negotiate("deflate-frame; no_context_takeover, foo; bar=1") is None
    response, _ = negotiate("x-webkit-deflate-frame, permessage-deflate")
    assert response == "permessage-deflate; server_no_context_takeover"
    assert DeflateConfig().negotiate([]) is None


def test_extension_name_is_case_insensitive():
    assert negotiate("PerMessage-Deflate") is not None


def test_full_offer():
    header = ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
              "server_max_window_bits=9; client_max_window_bits=9")
    response, pmd = negotiate(header)
    assert response_params(response) == {
        "server_no_context_takeover": None, "client_no_context_takeover": None,
        "server_max_window_bits": "9", "client_max_window_bits": "9"}
    assert (pmd.out_key, pmd.in_wbits, pmd.client_no_context_takeover) == (9, 9, True)


def test_config_passes_its_settings_to_the_state():
    _, pmd = negotiate(SAFARI, threshold=7, level=1, mem_level=4)
    assert (pmd.threshold, pmd.level, pmd.mem_level) == (7, 1, 4)


@pytest.mark.parametrize("kwargs", [
    {"max_window_bits": 8}, {"max_window_bits": 16}, {"threshold": -1},
    {"mem_level": 0}, {"mem_level": 10}, {"level": 10},
])
def test_config_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        DeflateConfig(**kwargs)


def test_per_message_deflate_has_slots():
    _, pmd = negotiate(SAFARI)
    assert not hasattr(pmd, "__dict__")


_PARAM_VALUES = {
    "server_no_context_takeover": st.just(None),
    "client_no_context_takeover": st.just(None),
    "server_max_window_bits": st.sampled_from([str(b) for b in range(8, 16)]),
    "client_max_window_bits": st.sampled_from([None] + [str(b) for b in range(8, 16)]),
}


@st.composite
def valid_offers(draw):
    names = draw(st.lists(st.sampled_from(sorted(_PARAM_VALUES)), unique=True))
    return [(name, draw(_PARAM_VALUES[name])) for name in names]


@settings(max_examples=200, deadline=None)
@given(valid_offers(), st.integers(9, 15))
def test_any_valid_offer_is_accepted_within_the_rules(params, cap):
    offered = dict(params)
    response, pmd = DeflateConfig(max_window_bits=cap).negotiate([("permessage-deflate", params)])
    answer = response_params(response)
    assert "server_no_context_takeover" in answer
    assert ("client_no_context_takeover" in answer) == ("client_no_context_takeover" in offered)
    if "server_max_window_bits" in offered:
        assert int(answer["server_max_window_bits"]) <= int(offered["server_max_window_bits"])
    if "client_max_window_bits" not in offered:
        assert "client_max_window_bits" not in answer
        assert pmd.in_wbits == 15
    elif offered["client_max_window_bits"] is not None:
        answered = int(answer.get("client_max_window_bits", 15))
        assert answered <= int(offered["client_max_window_bits"])
    assert pmd.in_wbits == int(answer.get("client_max_window_bits",
                                          offered.get("client_max_window_bits") or 15))
    assert pmd.server_max_window_bits == int(answer.get("server_max_window_bits", 15))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["permessage-deflate", "x-foo"]),
    st.lists(st.tuples(st.sampled_from(sorted(_PARAM_VALUES) + ["foo"]),
                       st.one_of(st.none(), st.text(max_size=4))), max_size=5)),
    max_size=4))
def test_negotiate_never_raises(offers):
    result = DeflateConfig().negotiate(offers)
    assert result is None or result[0].startswith("permessage-deflate; server_no_context_takeover")


# -- against a real client implementation (websockets) -------------------------

CLIENT_CONFIGS = [
    {},  # the websockets default: client_max_window_bits
    {"client_max_window_bits": None},
    {"server_no_context_takeover": True},
    {"client_no_context_takeover": True},
    {"server_max_window_bits": 8},
    {"server_max_window_bits": 10, "client_max_window_bits": 9},
    {"server_no_context_takeover": True, "client_no_context_takeover": True,
     "server_max_window_bits": 12, "client_max_window_bits": 12},
]


@pytest.mark.parametrize("client_config", CLIENT_CONFIGS)
@pytest.mark.parametrize("cap", [15, 9])
def test_websockets_client_accepts_the_response_and_interoperates(client_config, cap):
    pmd_mod = pytest.importorskip("websockets.extensions.permessage_deflate")
    from websockets.frames import Frame, Opcode
    from websockets.headers import build_extension, parse_extension

    factory = pmd_mod.ClientPerMessageDeflateFactory(**client_config)
    offer = build_extension([(factory.name, factory.get_request_params())])
    response, pmd = negotiate(offer, max_window_bits=cap, threshold=0)
    [(name, params)] = parse_extension(response)
    client = factory.process_response_params(params, [])  # raises if the answer breaks §7.1

    for i in range(3):
        data = sample(3000 + i, seed=i)
        # server → client: our frame body decoded by the client
        frame = encode_compressed_frame(OP_BINARY, data, pmd.out_key, pmd.level, pmd.mem_level)
        body = frame[4:]  # 126 + 16-bit length header
        assert frame[0] == 0xC2 and frame[1] == 126
        assert client.decode(Frame(Opcode.BINARY, body, rsv1=True)).data == data
        assert pmd.encode_message(OP_BINARY, data) == frame
        # client → server, in two frames
        first = client.encode(Frame(Opcode.BINARY, data[:1000], fin=False))
        second = client.encode(Frame(Opcode.CONT, data[1000:], fin=True))
        assert first.rsv1 and not second.rsv1
        assert inflate(pmd, [bytes(first.data), bytes(second.data)]) == data


# =============================================================================
# Compression (§7.2.1)
# =============================================================================

@pytest.mark.parametrize("wbits", range(8, 16))
def test_round_trip_every_window_size_with_zlib(wbits):
    for n in (0, 1, 100, 300, 1000, 70000):
        data = sample(n, seed=wbits)
        compressed = compress_message(data, wbits)
        assert zlib_inflate(compressed, wbits) == data


@pytest.mark.parametrize("level", [0, 1, 6, 9])
@pytest.mark.parametrize("mem_level", [1, 8, 9])
def test_window_8_decodable_by_an_8_bit_inflater(level, mem_level):
    # The window-bits-8 decision rests on this: zlib compressing with 9 bits
    # never refers further back than 250 bytes.
    for seed in range(5):
        data = sample(30000, seed)
        assert zlib_inflate(compress_message(data, 8, level, mem_level), 8) == data


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.integers(8, 15))
def test_round_trip_any_bytes(data, wbits):
    assert zlib_inflate(compress_message(data, wbits), wbits) == data
    _, pmd = negotiate(f"permessage-deflate; client_max_window_bits={wbits}")
    if wbits >= 9:  # a client's zlib cannot compress with 8 bits
        [payload] = client_compress([data], wbits)
        assert inflate(pmd, [payload]) == data


def test_compressed_message_is_deterministic_and_windows_differ():
    data = sample(100000)
    assert compress_message(data, 15) == compress_message(data, 15)
    assert compress_message(data, 8) == compress_message(data, 9)
    assert compress_message(data, 15) != compress_message(data, 9)


def test_rfc_hello_example_is_what_we_send():
    # §7.2.3.1: "Hello" → f2 48 cd c9 c9 07 00, framed as c1 07 ...
    assert compress_message(b"Hello") == HELLO
    assert encode_compressed_frame(OP_TEXT, b"Hello") == bytes((0xC1, 0x07)) + HELLO


def test_empty_message_compresses_to_one_octet():
    # §7.2.3.6: an empty message's payload may be the single octet 0x00.
    assert compress_message(b"") == b"\x00"
    _, pmd = negotiate(SAFARI)
    assert inflate(pmd, [b"\x00"]) == b""
    assert inflate(pmd, [b""]) == b""  # an empty compressed payload is valid too


def test_frame_header_lengths():
    for n in (10, 5000, 300000):
        data = sample(n)
        body = compress_message(data)
        frame = encode_compressed_frame(OP_BINARY, data)
        assert frame.endswith(body)
        parser = FrameParser(require_mask=False, allowed_rsv=0x40, max_payload=1 << 30)
        [piece] = parser.feed(frame)
        assert piece.rsv1 and piece.fin and piece.opcode == OP_BINARY and piece.payload == body


def test_encode_message_threshold():
    _, pmd = negotiate(SAFARI, threshold=128)
    short = b"x" * 127
    frame = pmd.encode_message(OP_TEXT, short)
    assert frame == encode_frame(OP_TEXT, short)  # RSV1 clear, plain payload
    assert frame[0] == 0x81
    long = b"x" * 128
    frame = pmd.encode_message(OP_TEXT, long)
    assert frame[0] == 0xC1  # FIN + RSV1 + text
    assert zlib_inflate(frame[2:], 15) == long
    assert frame == encode_compressed_frame(OP_TEXT, long)


def test_encode_message_threshold_zero_compresses_everything():
    _, pmd = negotiate(SAFARI, threshold=0)
    assert pmd.encode_message(OP_BINARY, b"") == bytes((0xC2, 0x01, 0x00))


def test_same_out_key_same_bytes():
    header = "permessage-deflate; server_max_window_bits=10"
    _, a = negotiate(header)
    _, b = negotiate(header + "; client_no_context_takeover; client_max_window_bits=9")
    data = sample(5000)
    assert a.out_key == b.out_key == 10
    assert a.encode_message(OP_TEXT, data) == b.encode_message(OP_TEXT, data)
    # The server never keeps context: sending twice gives the same bytes.
    assert a.encode_message(OP_TEXT, data) == a.encode_message(OP_TEXT, data)


# =============================================================================
# Decompression (§7.2.2)
# =============================================================================

@pytest.mark.parametrize("payload", [HELLO, HELLO_STORED, HELLO_BFINAL, HELLO_TWO_BLOCKS],
                         ids=["7.2.3.1", "7.2.3.3", "7.2.3.4", "7.2.3.5"])
def test_rfc_example_payloads(payload):
    _, pmd = negotiate(SAFARI)
    assert inflate(pmd, [payload]) == b"Hello"
    assert inflate(pmd, [payload[:3], payload[3:]]) == b"Hello"  # §7.2.3.1, fragmented


def test_message_after_a_bfinal_message_with_context_takeover():
    _, pmd = negotiate(SAFARI)
    assert inflate(pmd, [HELLO_BFINAL]) == b"Hello"
    assert inflate(pmd, [HELLO]) == b"Hello"  # the ended stream is replaced by a new one


def test_garbage_after_bfinal_is_refused():
    _, pmd = negotiate(SAFARI)
    with pytest.raises(ProtocolError) as info:
        inflate(pmd, [HELLO_BFINAL[:-1], bytes(100)])
    assert info.value.code == 1007


@pytest.mark.parametrize("wbits", range(9, 16))
@pytest.mark.parametrize("takeover", [True, False])
def test_client_messages_fragmented(wbits, takeover):
    offer = f"permessage-deflate; client_max_window_bits={wbits}"
    if not takeover:
        offer += "; client_no_context_takeover"
    _, pmd = negotiate(offer)
    assert pmd.in_wbits == wbits and pmd.client_no_context_takeover == (not takeover)
    messages = [sample(4000, seed) for seed in range(3)] + [sample(4000, 0), b"", b"abc" * 50]
    rnd = random.Random(wbits)
    for message, payload in zip(messages, client_compress(messages, wbits, takeover)):
        pieces = split(payload, [rnd.randrange(len(payload) + 1) for _ in range(rnd.randint(0, 5))])
        assert inflate(pmd, pieces) == message


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=600), min_size=1, max_size=5),
       st.lists(st.integers(0, 10000), max_size=6), st.booleans())
def test_client_messages_any_split(messages, cuts, takeover):
    offer = "permessage-deflate" + ("" if takeover else "; client_no_context_takeover")
    _, pmd = negotiate(offer)
    for message, payload in zip(messages, client_compress(messages, 15, takeover)):
        assert inflate(pmd, split(payload, cuts)) == message


def test_client_window_larger_than_negotiated_is_invalid_data():
    # §7.1.2.2: the inflater keeps only the negotiated window (here 512 bytes)
    # of earlier output, so a client that refers further back into an earlier
    # message breaks the agreement and gets 1007.  (Inside the output of one
    # decompress call zlib can reach further back than the window; that is
    # harmless leniency, not a memory risk.)
    _, pmd = negotiate("permessage-deflate; client_max_window_bits=9")
    block = random.Random(5).randbytes(2000)
    first, second = client_compress([block, block], 15)  # second: one match 2000 back
    assert inflate(pmd, [first]) == block
    with pytest.raises(ProtocolError) as info:
        inflate(pmd, [second])
    assert info.value.code == 1007
    # The same two messages within a 15-bit window are fine.
    _, pmd = negotiate("permessage-deflate; client_max_window_bits=15")
    assert inflate(pmd, [first]) == block and inflate(pmd, [second]) == block


@pytest.mark.parametrize("payload", [
    b"\x07",                            # BFINAL=1, BTYPE=11 (reserved)
    b"\x06\xff\xff",                    # BTYPE=11 again
    b"\x00\x05\x00\x00\x00hello",       # stored block with LEN != ~NLEN
    b"\xff" * 20,
    b"\xf2\x48\xcd\xc9\xc9\x07\x00\x00\x00\x00\x00\x00\x00\x00\xff\x00",
])
def test_invalid_deflate_data_is_1007(payload):
    _, pmd = negotiate(SAFARI)
    with pytest.raises(ProtocolError) as info:
        inflate(pmd, [payload])
    assert info.value.code == 1007


def test_size_limit_is_exact():
    _, pmd = negotiate(SAFARI)
    data = sample(5000)
    [payload] = client_compress([data])
    assert inflate(pmd, [payload], max_size=5000) == data
    _, pmd = negotiate(SAFARI)
    with pytest.raises(ProtocolError) as info:
        inflate(pmd, [payload], max_size=4999)
    assert info.value.code == 1009


def test_no_limit_and_negative_limit():
    _, pmd = negotiate(SAFARI)
    [payload] = client_compress([b"abc" * 1000])
    assert inflate(pmd, [payload], max_size=sys.maxsize) == b"abc" * 1000
    pmd.start_message()
    assert pmd.decompress(b"", -5, False) == b""


def test_inflater_is_dropped_after_an_error():
    _, pmd = negotiate(SAFARI)
    pmd.start_message()
    with pytest.raises(ProtocolError):
        pmd.decompress(_bomb(2), 1000, False)
    assert pmd._inflater is None


def test_size_limit_counts_all_pieces():
    _, pmd = negotiate(SAFARI)
    [payload] = client_compress([bytes(10000)])
    pmd.start_message()
    half = len(payload) // 2
    got = pmd.decompress(payload[:half], 6000, False)
    with pytest.raises(ProtocolError) as info:
        pmd.decompress(payload[half:], 6000 - len(got), True)
    assert info.value.code == 1009


def _bomb(gib_fraction: int = 1024) -> bytes:
    """``gib_fraction`` MiB of zeros, compressed (~1 KiB per MiB: DEFLATE's ratio is ~1030:1).

    After Z_FULL_FLUSH the compressor has no history, so each MiB of zeros
    compresses to the same bytes and the bomb is one piece repeated.
    """
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    piece = comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH)
    assert comp.compress(zeros) + comp.flush(zlib.Z_FULL_FLUSH) == piece
    return piece * gib_fraction


def test_bomb_is_really_a_bomb():
    bomb = _bomb(20)  # ~20 KB
    assert len(bomb) < 25_000
    assert len(zlib_inflate(bomb, 15)) == 20 << 20


def test_zip_bomb_1_gib_refused_without_allocating_it():
    bomb = _bomb(1024)  # ~1 MB of DEFLATE that inflates to 1 GiB of zeros
    assert len(bomb) < 1_100_000
    _, pmd = negotiate(SAFARI)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        pmd.start_message()
        with pytest.raises(ProtocolError) as info:
            pmd.decompress(bomb, 1 << 20, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    # The output is capped at the limit (1 MiB) + 1 byte; the rest is zlib's state,
    # the output buffer while it grows and the unconsumed input (a copy of at most
    # the ~1 MB bomb): about 3 MB here, against the 1 GiB of a naive inflate.
    assert peak < 8 << 20, peak
    rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert rss_growth_kib < 16 << 10, rss_growth_kib


def test_zip_bomb_in_many_small_frames():
    _, pmd = negotiate(SAFARI)
    bomb = _bomb(64)
    tracemalloc.start()
    try:
        pmd.start_message()
        total = 0
        with pytest.raises(ProtocolError) as info:
            for i in range(0, len(bomb), 1000):
                total += len(pmd.decompress(bomb[i:i + 1000], (1 << 20) - total, False))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 8 << 20, peak


# =============================================================================
# With a real WebSocketConnection (RFC 6455 §5 + RFC 7692 §6)
# =============================================================================

def client_frame(opcode, payload, fin=True, rsv1=False):
    return encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=MASK)


def connection(offer=SAFARI, max_message_size=1 << 20, **config):
    _, pmd = negotiate(offer, **config)
    return WebSocketConnection(max_message_size=max_message_size, deflate=pmd)


def close_code(conn) -> int:
    """The status code of the close frame the connection queued."""
    parser = FrameParser(require_mask=False)
    frames = [f for chunk in conn.out for f in parser.feed(chunk)]
    [close] = [f for f in frames if f.opcode == OP_CLOSE]
    return parse_close_payload(close.payload)[0]


def only_message(events) -> Message:
    [event] = events
    assert isinstance(event, Message), event
    return event


def test_connection_rfc_single_frame_example():
    conn = connection()
    # §7.2.3.1: c1 07 f2 48 cd c9 c9 07 00, masked as a client must.
    message = only_message(conn.receive_data(client_frame(OP_TEXT, HELLO, rsv1=True)))
    assert (message.data, message.binary) == (b"Hello", False)


def test_connection_rfc_fragmented_example_byte_by_byte():
    conn = connection()
    # §7.2.3.1: 41 03 f2 48 cd / 80 04 c9 c9 07 00
    wire = (client_frame(OP_TEXT, HELLO[:3], fin=False, rsv1=True)
            + client_frame(OP_CONT, HELLO[3:]))
    events = []
    for i in range(len(wire)):
        events += conn.receive_data(wire[i:i + 1])
    assert only_message(events).data == b"Hello"


@pytest.mark.parametrize("takeover", [True, False])
def test_connection_fragmented_compressed_messages(takeover):
    offer = SAFARI if takeover else SAFARI + "; client_no_context_takeover"
    conn = connection(offer)
    messages = ["héllo wörld " * 300, "héllo wörld " * 301, "€" * 5000]
    rnd = random.Random(7)
    for text, payload in zip(messages, client_compress([m.encode() for m in messages],
                                                       15, takeover)):
        pieces = split(payload, [rnd.randrange(len(payload)) for _ in range(3)])
        wire = b"".join(
            client_frame(OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1,
                         rsv1=i == 0)
            for i, piece in enumerate(pieces))
        message = only_message(conn.receive_data(wire))
        assert message.data.decode() == text and not message.binary


def test_connection_mixes_plain_and_compressed_messages_and_control_frames():
    conn = connection()
    [a, b] = client_compress([b"\x00\x01" * 100, b"\x00\x01" * 100])
    wire = (client_frame(OP_BINARY, a[:5], fin=False, rsv1=True)
            + client_frame(OP_PING, b"p")
            + client_frame(OP_CONT, a[5:])
            + client_frame(OP_TEXT, b"plain")
            + client_frame(OP_BINARY, b, rsv1=True))
    events = conn.receive_data(wire)
    assert isinstance(events[0], Ping)
    assert [(e.data, e.binary) for e in events[1:]] == [
        (b"\x00\x01" * 100, True), (b"plain", False), (b"\x00\x01" * 100, True)]


def test_connection_rsv1_on_continuation_is_1002():
    conn = connection()
    wire = (client_frame(OP_TEXT, HELLO[:3], fin=False, rsv1=True)
            + client_frame(OP_CONT, HELLO[3:], rsv1=True))
    [event] = conn.receive_data(wire)
    assert isinstance(event, ConnectionFailed) and event.code == 1002
    assert close_code(conn) == 1002


def test_connection_rsv1_on_continuation_of_plain_message_is_1002():
    conn = connection()
    wire = client_frame(OP_TEXT, b"Hel", fin=False) + client_frame(OP_CONT, b"lo", rsv1=True)
    [event] = conn.receive_data(wire)
    assert isinstance(event, ConnectionFailed) and event.code == 1002


@pytest.mark.parametrize("opcode", [OP_PING, OP_CLOSE, 0xA])
def test_connection_rsv1_on_control_frame_is_1002(opcode):
    conn = connection()
    payload = b"\x03\xe8" if opcode == OP_CLOSE else b"x"
    [event] = conn.receive_data(client_frame(opcode, payload, rsv1=True))
    assert isinstance(event, ConnectionFailed) and event.code == 1002
    assert close_code(conn) == 1002


def test_connection_rsv1_without_the_extension_is_1002():
    conn = WebSocketConnection()
    [event] = conn.receive_data(client_frame(OP_TEXT, HELLO, rsv1=True))
    assert isinstance(event, ConnectionFailed) and event.code == 1002


def test_connection_invalid_deflate_is_1007():
    conn = connection()
    [event] = conn.receive_data(client_frame(OP_BINARY, b"\x07\x00", rsv1=True))
    assert isinstance(event, ConnectionFailed) and event.code == 1007
    assert close_code(conn) == 1007


def test_connection_inflated_text_must_be_utf8():
    conn = connection()
    [payload] = client_compress([b"ok \xff\xfe not utf-8" * 20])
    [event] = conn.receive_data(client_frame(OP_TEXT, payload, rsv1=True))
    assert isinstance(event, ConnectionFailed) and event.code == 1007


def test_connection_zip_bomb_is_1009():
    conn = connection(max_message_size=1 << 20)
    bomb = _bomb(20)  # ~20 KB frame, 20 MiB inflated; the limit is 1 MiB
    tracemalloc.start()
    try:
        events = conn.receive_data(client_frame(OP_BINARY, bomb, rsv1=True))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [event] = events
    assert isinstance(event, ConnectionFailed) and event.code == 1009
    assert close_code(conn) == 1009
    assert peak < 8 << 20, peak


def test_connection_zip_bomb_over_fragments_is_1009():
    conn = connection(max_message_size=1 << 20)
    bomb = _bomb(3)
    third = len(bomb) // 3
    wire = (client_frame(OP_BINARY, bomb[:third], fin=False, rsv1=True)
            + client_frame(OP_CONT, bomb[third:2 * third], fin=False)
            + client_frame(OP_CONT, bomb[2 * third:]))
    events = conn.receive_data(wire)
    assert isinstance(events[-1], ConnectionFailed) and events[-1].code == 1009


def test_connection_message_at_the_limit_passes():
    conn = connection(max_message_size=50000)
    [payload] = client_compress([bytes(50000)])
    assert only_message(conn.receive_data(client_frame(OP_BINARY, payload, rsv1=True))).data \
        == bytes(50000)


def test_connection_send_uses_encode_message():
    conn = connection(threshold=10)
    conn.send("hi")
    conn.send("hello " * 10)
    assert conn.out[0] == encode_frame(OP_TEXT, b"hi")
    assert conn.out[1] == encode_compressed_frame(OP_TEXT, ("hello " * 10).encode())
