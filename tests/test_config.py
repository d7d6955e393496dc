"""The configuration (zmqws/config.py): frozen per-room configs, flat option names, one place
for every default, shared by ``Gateway(...)`` and the command line."""

from __future__ import annotations

import dataclasses

import pytest

from zmqws.cli import build_parser, config_from_args
from zmqws.config import (GatewayConfig, HttpConfig, HubConfig, ServerConfig, TransportConfig, UpstreamConfig,
                          default, option_names)
from zmqws.gateway import Gateway


def test_of_sorts_the_flat_options_into_the_rooms():
    config = GatewayConfig.of("tcp://127.0.0.1:5556", 0, max_queue=123, history=7, push_endpoint="tcp://x:1",
                              sse_heartbeat=2.0, metrics=False, allow_origins="https://a.example")
    assert config.server == ServerConfig(port=0, max_queue=123, allow_origins=("https://a.example",))
    assert config.hub == HubConfig(history=7)
    assert config.upstream == UpstreamConfig(sub_endpoints=("tcp://127.0.0.1:5556",), push_endpoint="tcp://x:1")
    assert config.transports == TransportConfig(sse_heartbeat=2.0)
    assert config.http == HttpConfig(metrics=False)
    assert GatewayConfig.of(["tcp://a:1", "tcp://b:2"]).upstream.sub_endpoints == ("tcp://a:1", "tcp://b:2")
    assert GatewayConfig.of(None).upstream.sub_endpoints == ()


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="unknown option 'max_queues'"):
        GatewayConfig.of(None, 0, max_queues=1)
    with pytest.raises(TypeError, match="unknown option 'zmq_context'"):
        GatewayConfig().replace(zmq_context=None)


@pytest.mark.parametrize("options, message", [
    ({"payload_mode": "json"}, "payload_mode must be one of auto, text, binary, not 'json'"),
    ({"envelope": "xml"}, "envelope must be one of payload, topic, json, not 'xml'"),
    ({"slow_client": "wait"}, "slow_client must be one of close, drop, not 'wait'"),
    ({"push_endpoint": "tcp://a:1", "pub_endpoint": "tcp://b:2"}, "give push_endpoint or pub_endpoint, not both"),
], ids=["payload_mode", "envelope", "slow_client", "push-and-pub"])
def test_invalid_values_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        GatewayConfig.of(None, 0, **options)
    with pytest.raises(ValueError, match=message):
        GatewayConfig().replace(**options)


def test_configs_are_frozen_and_replace_makes_a_changed_copy():
    config = GatewayConfig.of("tcp://a:1", 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.port = 1  # type: ignore[misc]
    changed = config.replace(port=9, history=5, sub_endpoints=["tcp://b:2"])
    assert (changed.server.port, changed.hub.history, changed.upstream.sub_endpoints) == (9, 5, ("tcp://b:2",))
    assert (config.server.port, config.hub.history, config.upstream.sub_endpoints) == (0, 1000, ("tcp://a:1",))
    assert changed.transports is config.transports  # rooms without a change are shared


def test_options_round_trip():
    config = GatewayConfig.of(["tcp://a:1"], 0, max_queue=5, separator=b"|", cors_origins=["*"], first_id=3)
    options = config.options()
    assert set(options) == set(option_names())
    assert GatewayConfig().replace(**options) == config
    assert GatewayConfig.of(options.pop("sub_endpoints"), options.pop("port"), **options) == config


def test_every_option_name_is_taken_by_gateway():
    options = {name: default(name) for name in option_names() if name not in ("sub_endpoints", "port")}
    Gateway(None, 0, **options)  # a name Gateway does not take: TypeError, as here
    with pytest.raises(TypeError):
        Gateway(None, 0, no_such_option=1)


def test_from_config_builds_the_gateway_the_config_describes():
    config = GatewayConfig.of("tcp://127.0.0.1:1", 0, max_queue=777, envelope="json", sio_path="/rt/")
    gateway = Gateway.from_config(config)
    assert gateway.sub_endpoints == ["tcp://127.0.0.1:1"]
    assert (gateway.max_queue, gateway.envelope, gateway.sio.path) == (777, "json", "/rt/")


def test_command_line_defaults_are_the_config_defaults(monkeypatch):
    monkeypatch.delenv("ZMQWS_TOKEN", raising=False)
    monkeypatch.delenv("ZMQWS_METRICS_TOKEN", raising=False)
    args = build_parser().parse_args([])
    fields = [name for name in vars(args) if name in option_names()]
    assert len(fields) >= 50  # every flag of a config field is stored under the field's name
    for name in fields:
        value = default(name)
        expected = (list(value) if isinstance(value, tuple)
                    else value.decode() if isinstance(value, bytes) else value)
        assert getattr(args, name) == expected, name
    assert config_from_args(args) == GatewayConfig()
