"""Settings: the shipped TOML, environment overrides, and errors that name key and allowed values."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from deepseekd.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    load_settings,
    settings_doc,
)

from deepseekd.profiles import PROFILES

PROFILE_KEYS = {f"engine.{k}" for p in PROFILES.values() for k in p.engine}
REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "deepseekd.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "deepseekd.toml"
    path.write_text(text)
    return path


def load_toml(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env=env or {})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path, text, env)
    return str(info.value)


def get(settings: Settings, dotted: str) -> Any:
    obj: Any = settings
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- defaults & shipped file


def test_defaults_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config/deepseekd.toml here
    assert not DEFAULT_CONFIG_PATH.exists()
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.server.port == 8000
    assert settings.engine.dtype == "auto"
    assert settings.data_dir == Path("data")
    assert settings.models_dir == Path("data/models")
    assert settings.cache_dir == Path("data/cache")


def test_default_path_is_read_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "deepseekd.toml").write_text("[server]\nport = 9001\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).server.port == 9001


def test_shipped_config_equals_defaults() -> None:
    settings = load_settings(SHIPPED, env={})
    assert settings == Settings()
    assert settings == dataclasses.replace(Settings(), data_dir=settings.data_dir)


def _commented_defaults(text: str) -> dict[str, Any]:
    """``# key = value`` lines of the shipped file, by dotted path (section from the last
    ``[table]`` header): the profile-governed engine settings are shown that way, because a
    setting written uncommented would override the profile."""
    out: dict[str, Any] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip("[] ") + "."
        elif m := re.fullmatch(r"# ([a-z_]+) = (.+)", line):
            out[section + m.group(1)] = tomllib.loads(f"v = {m.group(2)}")["v"]
    return out


def test_shipped_config_lists_every_setting() -> None:
    text = SHIPPED.read_text()
    data = tomllib.loads(text)
    commented = _commented_defaults(text)
    missing = []
    for path, default, doc in settings_doc():
        expected = (str(default) if isinstance(default, Path)
                    else list(default) if isinstance(default, tuple) else default)
        if path in PROFILE_KEYS:
            # Written uncommented it would be explicit and beat every profile.
            assert path not in data.get("engine", {}), f"{path} must stay commented out"
            assert commented.get(path, ...) == expected, f"{path}: shipped commented default"
            continue
        node: Any = data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                missing.append(path)
                break
            node = node[part]
        else:
            assert node == expected, f"{path}: shipped {node!r}, default {default!r}"
        assert doc and doc.strip(), f"{path} has no doc"
    assert not missing, f"settings missing from config/deepseekd.toml: {missing}"


def test_settings_doc_covers_all_fields() -> None:
    paths = [p for p, _, _ in settings_doc()]
    assert len(paths) == len(set(paths))
    assert {"data_dir", "server.port", "engine.dtype", "api.max_n", "warmup.requests"} <= set(paths)
    for path, default, _ in settings_doc():
        assert get(Settings(), path) == default


def test_explicit_file_overrides(tmp_path: Path) -> None:
    settings = load_toml(tmp_path, """
data_dir = "/var/lib/deepseekd"
[server]
port = 8443
drain_timeout_s = 5
[engine]
dtype = "bfloat16"
enforce_eager = true
gpu_memory_utilization = 0.5
[api]
max_n = 2
""")
    assert settings.data_dir == Path("/var/lib/deepseekd")
    assert settings.server.port == 8443
    assert settings.server.drain_timeout_s == 5.0 and isinstance(settings.server.drain_timeout_s, float)
    assert settings.engine.dtype == "bfloat16"
    assert settings.engine.enforce_eager is True
    assert settings.engine.gpu_memory_utilization == 0.5
    assert settings.api.max_n == 2
    assert settings.server.host == "127.0.0.1"  # untouched keys keep defaults


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().server.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("name", "value", "path", "expected"),
    [
        ("DEEPSEEKD_SERVER__PORT", "8443", "server.port", 8443),
        ("DEEPSEEKD_SERVER__PORT", " 9000 ", "server.port", 9000),
        ("DEEPSEEKD_WARMUP__REQUESTS", "-1", "warmup.requests", -1),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "2.5", "server.drain_timeout_s", 2.5),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "3", "server.drain_timeout_s", 3.0),
        ("DEEPSEEKD_ENGINE__GPU_MEMORY_UTILIZATION", "0.75", "engine.gpu_memory_utilization", 0.75),
        ("DEEPSEEKD_ENGINE__ENFORCE_EAGER", "true", "engine.enforce_eager", True),
        ("DEEPSEEKD_ENGINE__ENFORCE_EAGER", "TRUE", "engine.enforce_eager", True),
        ("DEEPSEEKD_ENGINE__ENFORCE_EAGER", "1", "engine.enforce_eager", True),
        ("DEEPSEEKD_ENGINE__ENFORCE_EAGER", "yes", "engine.enforce_eager", True),
        ("DEEPSEEKD_ENGINE__ENABLE_PREFIX_CACHING", "false", "engine.enable_prefix_caching", False),
        ("DEEPSEEKD_ENGINE__ENABLE_PREFIX_CACHING", "0", "engine.enable_prefix_caching", False),
        ("DEEPSEEKD_ENGINE__ENABLE_PREFIX_CACHING", "off", "engine.enable_prefix_caching", False),
        ("DEEPSEEKD_SERVER__HOST", "0.0.0.0", "server.host", "0.0.0.0"),
        ("DEEPSEEKD_ENGINE__MODEL", "/models/my model", "engine.model", "/models/my model"),
        ("DEEPSEEKD_ENGINE__DTYPE", "float16", "engine.dtype", "float16"),
        ("DEEPSEEKD_DATA_DIR", "/srv/deepseekd", "data_dir", Path("/srv/deepseekd")),
        ("DEEPSEEKD_DATA_DIR", "relative/dir", "data_dir", Path("relative/dir")),
    ],
)
def test_env_override(tmp_path: Path, name: str, value: str, path: str, expected: Any) -> None:
    settings = load_settings(write(tmp_path, ""), env={name: value})
    actual = get(settings, path)
    assert actual == expected
    assert type(actual) is type(expected) or isinstance(actual, Path)


def test_env_beats_file(tmp_path: Path) -> None:
    settings = load_toml(
        tmp_path, "[server]\nport = 8001\nhost = \"::1\"\n", {"DEEPSEEKD_SERVER__PORT": "8002"}
    )
    assert settings.server.port == 8002
    assert settings.server.host == "::1"


def test_env_picks_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "[api]\nmax_n = 3\n")
    assert load_settings(env={"DEEPSEEKD_CONFIG": str(path)}).api.max_n == 3
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"DEEPSEEKD_CONFIG": str(tmp_path / "nope.toml")})


def test_env_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPSEEKD_API__MAX_N", "7")
    assert load_settings(write(tmp_path, "")).api.max_n == 7


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("DEEPSEEKD_SERVER__PORT", "x", "server.port"),
        ("DEEPSEEKD_SERVER__PORT", "80.5", "server.port"),
        ("DEEPSEEKD_SERVER__PORT", "0", "from 1 to 65535"),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "soon", "server.drain_timeout_s"),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "nan", "finite"),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "inf", "finite"),
        ("DEEPSEEKD_SERVER__DRAIN_TIMEOUT_S", "-1", ">= 0"),
        ("DEEPSEEKD_ENGINE__ENFORCE_EAGER", "maybe", "true or false"),
        ("DEEPSEEKD_ENGINE__DTYPE", "fp7", "'bfloat16'"),
        ("DEEPSEEKD_DATA_DIR", "", "data_dir"),
    ],
)
def test_env_bad_values(tmp_path: Path, name: str, value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""), env={name: value})
    assert needle in str(info.value)
    assert name.removeprefix("DEEPSEEKD_").lower().replace("__", ".") in str(info.value)
    assert f"got {value!r}" in str(info.value) or f"got {value}" in str(info.value)


@pytest.mark.parametrize(
    "name", ["DEEPSEEKD_SERVER__PROT", "DEEPSEEKD_SERVER", "DEEPSEEKD_PORT", "DEEPSEEKD_FOO__BAR"]
)
def test_unknown_env_var(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, ""), env={name: "1"})
    assert name in str(info.value)
    assert "DEEPSEEKD_SERVER__PORT" in str(info.value)  # the hint shows the naming scheme


def test_other_env_vars_are_ignored(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, ""), env={"PATH": "/bin", "DEEPSEEKDX": "1",
                                                        "VLLM_CPU_KVCACHE_SPACE": "4"})
    assert settings == Settings()


# --------------------------------------------------------------------------- TOML errors


def test_bad_choice_names_key_and_choices(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[engine]\ndtype = "fp7"\n')
    assert "engine.dtype" in msg
    for choice in ("'auto'", "'bfloat16'", "'float16'", "'float32'"):
        assert choice in msg
    assert "'fp7'" in msg


def test_bad_device_and_quantization(tmp_path: Path) -> None:
    assert "'cuda'" in config_error(tmp_path, '[engine]\ndevice = "tpu"\n')
    assert "'awq'" in config_error(tmp_path, '[engine]\nquantization = "int3"\n')


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        ("[server]\nport = 0\n", "server.port", "from 1 to 65535"),
        ("[server]\nport = 70000\n", "server.port", "from 1 to 65535"),
        ("[server]\nmax_body_bytes = 10\n", "server.max_body_bytes", ">= 1024"),
        ("[engine]\ngpu_memory_utilization = 1.5\n", "engine.gpu_memory_utilization",
         "from 0.05 to 0.99"),
        ("[api]\nmax_logprobs = 21\n", "api.max_logprobs", "from 0 to 20"),
        ("[warmup]\nrequests = -2\n", "warmup.requests", "from -1 to 1000"),
    ],
)
def test_out_of_range(tmp_path: Path, text: str, key: str, allowed: str) -> None:
    msg = config_error(tmp_path, text)
    assert key in msg and allowed in msg


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[server]\nport = "x"\n', "server.port"),
        ('[server]\nport = "8000"\n', "server.port"),
        ("[server]\nport = 8000.0\n", "server.port"),
        ("[server]\nport = true\n", "server.port"),
        ("[server]\nhost = 127\n", "server.host"),
        ('[server]\ndrain_timeout_s = "30"\n', "server.drain_timeout_s"),
        ("[server]\ndrain_timeout_s = false\n", "server.drain_timeout_s"),
        ("data_dir = 5\n", "data_dir"),
        ('data_dir = ""\n', "data_dir"),
        ("server = 5\n", "server"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    msg = config_error(tmp_path, text)
    assert msg.startswith(key + ":"), msg


def test_wrong_type_names_expected_type(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[server]\nport = "x"\n')
    assert "int from 1 to 65535" in msg and "'x'" in msg


@pytest.mark.parametrize("value", ['"true"', '"false"', "1", "0"])
def test_bool_must_be_a_toml_bool(tmp_path: Path, value: str) -> None:
    msg = config_error(tmp_path, f"[engine]\nenforce_eager = {value}\n")
    assert "engine.enforce_eager" in msg and "true or false" in msg


def test_unknown_key_in_section(tmp_path: Path) -> None:
    msg = config_error(tmp_path, '[engine]\nmodle = "x"\n')
    assert "engine.modle" in msg
    assert "model" in msg.split("known here:")[1]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "port = 8000\n")
    assert msg.startswith("port:") and "server" in msg


def test_unknown_section(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[enigne]\ndtype = \"auto\"\n")
    assert "enigne" in msg and "unknown setting" in msg and "engine" in msg


def test_invalid_toml(tmp_path: Path) -> None:
    msg = config_error(tmp_path, "[server\nport = 1\n")
    assert "not valid TOML" in msg and "deepseekd.toml" in msg


def test_explicit_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_float_rejected(tmp_path: Path, value: str) -> None:
    msg = config_error(tmp_path, f"[server]\ndrain_timeout_s = {value}\n")
    assert "server.drain_timeout_s" in msg and "finite" in msg
    msg = config_error(tmp_path, f"[engine]\ngpu_memory_utilization = {value}\n")
    assert "engine.gpu_memory_utilization" in msg


# --------------------------------------------------------------------------- reasoning


def test_reasoning_settings(tmp_path: Path) -> None:
    s = load_toml(tmp_path, '[reasoning]\nreturn_to_roles = ["admin"]\nhistory = "hash"\n'
                  '[engine]\nreasoning_parser = "deepseek_r1"\n')
    assert s.reasoning.return_to_roles == ("admin",) and s.reasoning.history == "hash"
    assert s.engine.reasoning_parser == "deepseek_r1"
    assert load_toml(tmp_path, "[reasoning]\nreturn_to_roles = []\n").reasoning.return_to_roles == ()
    env = {"DEEPSEEKD_REASONING__RETURN_TO_ROLES": "user, admin"}
    assert load_toml(tmp_path, "", env).reasoning.return_to_roles == ("user", "admin")
    assert load_toml(tmp_path, "", {"DEEPSEEKD_REASONING__RETURN_TO_ROLES": ""}
                     ).reasoning.return_to_roles == ()


@pytest.mark.parametrize("text,env,where,shows", [
    ('[reasoning]\nreturn_to_roles = ["user", "auditor"]\n', {}, "reasoning.return_to_roles",
     "'auditor'"),
    ('[reasoning]\nreturn_to_roles = "user"\n', {}, "reasoning.return_to_roles",
     "list of strings"),
    ("", {"DEEPSEEKD_REASONING__RETURN_TO_ROLES": "user,root"}, "reasoning.return_to_roles",
     "'root'"),
    ('[reasoning]\nhistory = "keep"\n', {}, "reasoning.history", "'store', 'hash', 'drop'"),
    ('[engine]\nreasoning_parser = "deepseek r1"\n', {}, "engine.reasoning_parser",
     "'deepseek_r1'"),
    ('[engine]\nreasoning_parser = ""\n', {}, "engine.reasoning_parser", "'auto', 'none'"),
])
def test_reasoning_setting_errors(tmp_path: Path, text: str, env: dict[str, str], where: str,
                                  shows: str) -> None:
    msg = config_error(tmp_path, text, env)
    assert msg.startswith(where + ":") and shows in msg


def test_group_tables_are_read_with_their_rights(tmp_path: Path) -> None:
    settings = load_toml(tmp_path, """
[[auth.group]]
name = "radiology"
daily_requests = 2000
models = ["radiology"]
retention_days = 90

[[auth.group]]
name = "it-admins"
role = "admin"
""")
    radiology, admins = settings.auth.group
    assert (radiology.name, radiology.role, radiology.daily_requests) == ("radiology", "user", 2000)
    assert radiology.models == ("radiology",) and radiology.retention_days == 90
    assert (admins.role, admins.daily_requests, admins.models) == ("admin", -1, ())


@pytest.mark.parametrize(("text", "where", "shows"), [
    ('[[auth.group]]\nname = "a"\nrole = "root"\n', "auth.group[0].role", "'root'"),
    ('[[auth.group]]\nrole = "user"\n', "auth.group[0].name", "required"),
    ('[[auth.group]]\nname = "a"\nmodelz = []\n', "auth.group[0].modelz", "unknown"),
    ('[[auth.group]]\nname = "A"\n[[auth.group]]\nname = "a"\n', "auth.group[1].name",
     "twice"),
    ('[auth.ldap]\nurl = "http://dc1"\n', "auth.ldap.url", "ldaps://"),
    ('[auth.ldap]\nurl = "ldaps://dc1"\n', "auth.ldap.user_base", "required"),
    ('[auth.ldap]\nurl = "ldap://dc1"\nuser_dn_template = "uid={username}"\n', "auth.ldap.url",
     "clear"),
    ('[auth.oidc]\nissuer = "http://idp"\n', "auth.oidc.issuer", "https"),
    ('[auth.oidc]\nissuer = "https://idp"\n', "auth.oidc.client_id", "required"),
    ('[auth.oidc]\nissuer = "https://idp"\nclient_id = "d"\nredirect_url = "https://x/"\n',
     "auth.oidc.redirect_url", "/auth/oidc/callback"),
])
def test_directory_settings_are_checked(tmp_path: Path, text: str, where: str,
                                        shows: str) -> None:
    msg = config_error(tmp_path, text)
    assert msg.startswith(where + ":") and shows in msg, msg
