"""Config loading, ${VAR} expansion, validation messages that name the key, and lookup order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import agproxy
from agproxy import ConfigError, config_from_dict, expand_env, find_config_path, load_config

GOOD = {
    "host": "127.0.0.1", "port": 8045, "auth_mode": "auto", "api_key": "sk-local-example",
    "upstreams": [
        {"name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
         "accounts": [{"name": "alice@example.com", "api_key": "${ANTHROPIC_API_KEY}"}], "timeout_s": 600},
        {"name": "local", "kind": "openai", "base_url": "http://127.0.0.1:8000/v1",
         "accounts": [{"name": "vllm", "api_key": "none"}]},
    ],
    "model_map": [
        {"match": "claude-*haiku*", "upstream": "local", "model": "qwen2.5-coder-7b-instruct"},
        {"match": "*", "upstream": "anthropic"},
    ],
    "max_retry_attempts": 3,
    "warmup_interception": True,
}


def test_the_design_example_loads():
    config = config_from_dict(GOOD, {"ANTHROPIC_API_KEY": "sk-ant-xyz"}, "test")
    assert config.upstreams[0].accounts[0].api_key == "sk-ant-xyz"
    assert config.upstreams[1].base_url == "http://127.0.0.1:8000/v1"
    assert config.model_map[0].model == "qwen2.5-coder-7b-instruct"
    assert config.effective_auth_mode() == "off"
    assert "sk-ant-xyz" not in repr(config) and "sk-local-example" not in repr(config)


def test_env_expansion():
    env = {"A": "1", "EMPTY": ""}
    assert expand_env("x${A}y", env, "k") == "x1y"
    assert expand_env("${MISSING:-fallback}", env, "k") == "fallback"
    assert expand_env("${EMPTY:-fallback}", env, "k") == "fallback"
    assert expand_env("${EMPTY}", env, "k") == ""
    assert expand_env("$A and $$ stay", env, "k") == "$A and $$ stay"
    with pytest.raises(ConfigError, match=r"^upstreams\[0\]\.api_key: environment variable NOPE is not set$"):
        expand_env("${NOPE}", env, "upstreams[0].api_key")


def with_changes(**changes):
    config = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        target = config
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if value is KeyError:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value
    return config


@pytest.mark.parametrize("changes, message", [
    ({"upstreams__1__kind": "grpc"}, "upstreams[1].kind: must be one of anthropic, openai, gemini, demo"),
    ({"upstreams__0__base_url": "api.anthropic.com"}, "upstreams[0].base_url: must be an http:// or https:// URL"),
    ({"upstreams__0__base_url": KeyError}, "upstreams[0].base_url: is required"),
    ({"upstreams__0__accounts": []}, "upstreams[0].accounts: needs at least one account"),
    ({"upstreams__0__accounts__0__api_key": 5}, "upstreams[0].accounts[0].api_key: must be a string"),
    ({"upstreams__0__colour": "red"}, "upstreams[0]: unknown key colour"),
    ({"colour": "red"}, "unknown key colour"),
    ({"port": 70000}, "port: must be between 0 and 65535"),
    ({"port": "8045"}, "port: must be an integer"),
    ({"auth_mode": "maybe"}, "auth_mode: must be one of off, strict, all_except_health, auto"),
    ({"model_map__1__upstream": "nowhere"}, "model_map[1].upstream: no upstream is named 'nowhere'"),
    ({"upstreams__1__name": "anthropic"}, "upstreams[1].name: 'anthropic' is used twice"),
    ({"upstreams": []}, "upstreams: needs at least one upstream"),
    ({"max_body_bytes": True}, "max_body_bytes: must be an integer"),
    ({"upstreams__0__timeout_s": 0}, "upstreams[0].timeout_s: must be at least"),
    ({"upstreams__0__profile": "other"}, "upstreams[0].profile: must be one of anthropic, compatible"),
])
def test_validation_names_the_key(changes, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict(with_changes(**changes), {"ANTHROPIC_API_KEY": "x"}, "test")
    assert caught.value.message.startswith(message)


def test_the_inflight_body_budget_is_at_least_one_body():
    """max_inflight_body_bytes below max_body_bytes would refuse a lone body: a config error that
    names both; its default grows with a raised max_body_bytes."""
    with pytest.raises(ConfigError) as caught:
        config_from_dict(with_changes(max_body_bytes=2000000, max_inflight_body_bytes=1000000),
                         {"ANTHROPIC_API_KEY": "x"}, "test")
    assert caught.value.message == "max_inflight_body_bytes: must be at least max_body_bytes (2000000), got 1000000"
    with pytest.raises(ConfigError) as caught:
        config_from_dict(with_changes(max_inflight_body_bytes="lots"), {"ANTHROPIC_API_KEY": "x"}, "test")
    assert caught.value.message.startswith("max_inflight_body_bytes: must be an integer")
    config = config_from_dict(GOOD, {"ANTHROPIC_API_KEY": "x"}, "test")
    assert config.max_inflight_body_bytes == 256 * 1024 * 1024
    config = config_from_dict(with_changes(max_body_bytes=512 * 1024 * 1024), {"ANTHROPIC_API_KEY": "x"}, "test")
    assert config.max_inflight_body_bytes == 512 * 1024 * 1024


def test_lookup_order(tmp_path: Path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / ".config" / "agproxy").mkdir(parents=True)
    cwd.mkdir()
    assert find_config_path(None, {}, str(cwd), str(home)) is None
    user = home / ".config" / "agproxy" / "config.json"
    user.write_text("{}")
    assert find_config_path(None, {}, str(cwd), str(home)) == str(user)
    local = cwd / "agproxy.json"
    local.write_text("{}")
    assert find_config_path(None, {}, str(cwd), str(home)) == str(local)
    assert find_config_path(None, {"AGPROXY_CONFIG": "/e.json"}, str(cwd), str(home)) == "/e.json"
    assert find_config_path("/flag.json", {"AGPROXY_CONFIG": "/e.json"}, str(cwd), str(home)) == "/flag.json"


def test_flags_override_the_file(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"port": 9000, "host": "127.0.0.2", "upstreams": [{"name": "d", "kind": "demo"}]}))
    config = load_config(str(path), {"port": 0, "host": None}, {})
    assert (config.port, config.host, config.source) == (0, "127.0.0.2", str(path))


def test_no_file_means_the_demo(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("AGPROXY_CONFIG", raising=False)
    config = load_config(None, {}, None)
    assert [u.kind for u in config.upstreams] == ["demo"]


def test_unreadable_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.json"), {}, {})
    bad = tmp_path / "bad.json"
    bad.write_text('{"port": 80,}')
    with pytest.raises(ConfigError, match="invalid JSON at line 1"):
        load_config(str(bad), {}, {})


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.sampled_from(["upstreams", "kind", "name", "port", "base_url", "accounts",
                                                       "model_map", "match", "upstream", "api_key", "x"]),
                                      children, max_size=4),
                    max_leaves=12))
def test_arbitrary_json_gives_a_config_or_a_config_error(raw):
    try:
        config_from_dict(raw, {}, "fuzz")
    except ConfigError as exc:
        assert exc.message


@pytest.mark.parametrize("example", sorted((Path(__file__).parent.parent / "examples").glob("*.json")),
                         ids=lambda p: p.name)
def test_every_example_config_is_valid(example: Path):
    env = {name: "value" for name in ("ANTHROPIC_API_KEY", "GATEWAY_KEY_1", "GATEWAY_KEY_2", "AGPROXY_API_KEY",
                                      "CHEAP_KEY", "GEMINI_API_KEY")}
    config = load_config(str(example), {}, env)
    assert config.upstreams


def test_profile_overrides_and_context_window():
    raw = with_changes(upstreams__0__profile="compatible",
                       upstreams__0__sanitize={"cache_control": True, "system_messages": "user",
                                               "fields": ["model", "messages", "max_tokens"]},
                       upstreams__0__context_window=32768)
    upstream = config_from_dict(raw, {"ANTHROPIC_API_KEY": "x"}, "t").upstreams[0]
    assert upstream.rules.cache_control is True and upstream.rules.betas is False
    assert upstream.rules.system_messages == "user"
    assert upstream.rules.fields == frozenset({"model", "messages", "max_tokens"})
    assert upstream.context_window == 32768
    for bad, message in [({"colour": 1}, "upstreams[0].sanitize: unknown key colour"),
                         ({"betas": "no"}, "upstreams[0].sanitize.betas: must be true or false"),
                         ({"thinking": "wild"}, "upstreams[0].sanitize.thinking: must be one of keep, basic")]:
        with pytest.raises(ConfigError) as caught:
            config_from_dict(with_changes(upstreams__0__sanitize=bad), {"ANTHROPIC_API_KEY": "x"}, "t")
        assert caught.value.message.startswith(message)
    with pytest.raises(ConfigError, match="context_window: must be at least 1024"):
        config_from_dict(with_changes(upstreams__0__context_window=10), {"ANTHROPIC_API_KEY": "x"}, "t")


def test_state_file_default_follows_xdg(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"upstreams": [{"name": "d", "kind": "demo"}]}))
    mark = agproxy.default_state_file({"HOME": "/"}, str(path)).rsplit("/", 1)[1]  # state-<mark of the path>.json
    assert mark.startswith("state-") and mark.endswith(".json")
    assert load_config(str(path), {}, {"XDG_STATE_HOME": "/x"}).state_file == f"/x/agproxy/{mark}"
    assert load_config(str(path), {}, {"HOME": "/h"}).state_file == f"/h/.local/state/agproxy/{mark}"


# -- hostile values: numbers too big for a float, strings that are not text ---------------------

_TOP_KEYS = sorted(agproxy._CONFIG_KEYS - {"upstreams", "model_map"})
_UPSTREAM_KEYS = sorted(set(agproxy._UPSTREAM_KEYS) - {"name", "kind", "base_url", "accounts"})
_HOSTILE = (st.integers(min_value=-10 ** 400, max_value=10 ** 400) | st.floats(allow_nan=False)
            | st.text(alphabet=st.characters(blacklist_categories=()), max_size=5)
            | st.sampled_from(["\ud800", "a\udfff", "${X}", 10 ** 399, -10 ** 399, 1e308, 2 ** 1024]))


@given(st.dictionaries(st.sampled_from(_TOP_KEYS), _HOSTILE, max_size=3),
       st.dictionaries(st.sampled_from(_UPSTREAM_KEYS), _HOSTILE | st.dictionaries(st.text(max_size=3), _HOSTILE,
                                                                                  max_size=2), max_size=3),
       st.dictionaries(st.sampled_from(["weight", "max_concurrency", "name", "api_key"]), _HOSTILE, max_size=2))
def test_hostile_values_give_a_config_or_a_config_error_naming_the_key(top, upstream, account):
    """Issue 18: a number of 400 digits was an OverflowError, a lone surrogate crashed `check`."""
    raw = dict(top, upstreams=[dict(upstream, name="u", kind="openai", base_url="http://127.0.0.1:1/v1",
                                    accounts=[dict(account, name=account.get("name", "a"))])])
    try:
        config = config_from_dict(raw, {"X": "\udcff"}, "fuzz")
    except ConfigError as exc:
        assert exc.message.isascii() or exc.message.encode("utf-8")
        assert "\n" not in exc.message and len(exc.message) < 400
        return
    json.dumps(repr(config), ensure_ascii=False).encode("utf-8")  # everything in it can be printed


@pytest.mark.parametrize("raw, message", [
    ({"port": 10 ** 400}, "port: must be between 0 and 65535, got a number of 401 digits"),
    ({"ping_interval_s": 10 ** 400}, "ping_interval_s: must be a number up to 1e+09, got a number of 401 digits"),
    ({"body_timeout_s": 1e300}, "body_timeout_s: must be at most 1e+09, got 1e+300"),
    ({"upstreams": [{"name": "d", "kind": "demo", "context_window": 10 ** 400}]},
     "upstreams[0].context_window: must be at most 1000000000"),
    ({"upstreams": [{"name": "\ud800", "kind": "demo"}]}, 'upstreams[0].name: it holds a lone surrogate ("\\ud800")'),
    ({"host": "${X}"}, 'host: it holds a lone surrogate ("\\udcff")'),
    ({"\udc00": 1}, 'a key holds a lone surrogate ("\\udc00")'),
])
def test_numbers_past_a_float_and_lone_surrogates_are_config_errors(raw, message):
    raw = dict({"upstreams": [{"name": "d", "kind": "demo"}]}, **raw)
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw, {"X": "\udcff"}, "t")
    assert caught.value.message.startswith(message), caught.value.message


@pytest.mark.parametrize("raw, says", [([1], "must be an object, got a list"), ("x", "must be an object, got a string"),
                                       (None, "must be an object, got null")])
def test_a_config_that_is_not_an_object_says_so_once(tmp_path, raw, says):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    result = subprocess.run([sys.executable, str(Path(agproxy.__file__)), "--config", str(path)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.strip() == f"config: {says}", result.stderr
