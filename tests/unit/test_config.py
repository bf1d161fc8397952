from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import ConfigError, load_settings


def test_defaults_match_the_operations_doc() -> None:
    s = load_settings({})
    assert (s.gateway_host, s.gateway_port, s.data_dir) == ("127.0.0.1", 8000, Path(".data"))
    assert s.rate_connections_per_minute == 10 and s.rate_frames_per_minute == 100
    assert s.rate_broadcasts_per_minute == 1000 and s.auth_timeout_s == 10
    assert s.max_frame_bytes == 65536 and s.jwt_algorithms == ("HS256",)
    assert s.typing_ttl_s == 6 and s.recovery_max == 1000 and s.dedup_window_s == 120
    assert s.ping_timeout_s == 60 and s.metrics_window_s == 900 and s.doc_max_bytes == 1048576


def test_environment_then_explicit_overrides_win() -> None:
    s = load_settings(
        {"AG_GATEWAY_PORT": "9000", "AG_TRUSTED_PROXIES": "10.0.0.1, 10.0.0.2"}, gateway_port=9100
    )
    assert s.gateway_port == 9100 and s.trusted_proxies == ("10.0.0.1", "10.0.0.2")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("AG_GATEWAY_PORT", "eighty"),
        ("AG_GATEWAY_PORT", "70000"),
        ("AG_RATE_FRAMES_PER_MINUTE", "0"),
        ("AG_AUTH_TIMEOUT_S", "nan"),
        ("AG_JWT_ALGORITHMS", "none"),
        ("AG_LOG_FORMAT", "xml"),
        ("AG_JWT_LEEWAY_S", "-1"),
        ("AG_ANALYTICS_LINGER_MS", "-5"),
        ("AG_LAZY_FLUSH_MS", "-1"),
        ("AG_ANALYTICS_COMMIT_INTERVAL_MS", "-1"),
        ("AG_WS_COMPRESSION", "maybe"),
    ],
)
def test_bad_values_fail_loudly_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({var: value})
    assert var in str(info.value)


def test_a_zero_linger_commits_live_batches_at_once() -> None:
    assert load_settings({"AG_ANALYTICS_LINGER_MS": "0"}).analytics_linger_ms == 0


def test_booleans_accept_the_usual_spellings() -> None:
    assert load_settings({"AG_WS_COMPRESSION": "true"}).ws_compression is True
    assert load_settings({"AG_WS_COMPRESSION": "0"}).ws_compression is False
