"""The runtime settings (l3hostd.settings) and the out-of-process loader (config_isolated).

The schema (pydantic, l3hostd.config) and the plain dataclasses the daemon runs with must
not drift apart: same classes, same fields, same defaults. The daemon gets its settings
from a child process, so its own memory never holds pydantic or the config models.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import signal
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cancelled_child import returncode_after_cancel
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from l3hostd import config as schema
from l3hostd import config_isolated, settings
from l3hostd.config import load_config, load_settings, parse_config, to_settings
from l3hostd.settings import ConfigError

HERE = Path(__file__).parent
GOOD = sorted((HERE / "configs" / "good").glob("*.yaml"))
BAD = HERE / "configs" / "bad"
EXAMPLE = HERE.parents[1] / "config" / "l3hostd.example.yaml"


def _schema_models() -> dict[str, type[BaseModel]]:
    return {
        name: cls for name, cls in vars(schema).items()
        if isinstance(cls, type) and issubclass(cls, schema._Model) and not name.startswith("_")
    }


def _settings_classes() -> dict[str, type]:
    return {
        name: cls for name, cls in vars(settings).items()
        if dataclasses.is_dataclass(cls) and isinstance(cls, type)
        and cls.__module__ == settings.__name__ and name != "HostPort"
    }


# ------------------------------------------------------------------------------- drift


def test_every_schema_model_has_a_settings_class_and_vice_versa() -> None:
    assert set(_schema_models()) == set(_settings_classes())
    assert "Config" in _schema_models() and "PeerConfig" in _schema_models()


@pytest.mark.parametrize("name", sorted(_schema_models()))
def test_fields_and_defaults_match(name: str) -> None:
    model = _schema_models()[name]
    plain = _settings_classes()[name]
    plain_fields = {f.name: f for f in dataclasses.fields(plain)}
    assert list(plain_fields) == list(model.model_fields), "same fields, same order"
    for field_name, info in model.model_fields.items():
        f = plain_fields[field_name]
        if info.is_required():
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            continue
        expected = info.default_factory() if info.default is PydanticUndefined else info.default  # type: ignore[call-arg]
        got = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(expected, BaseModel):
            expected = to_settings_part(expected)
        assert got == expected, f"{name}.{field_name}"


def to_settings_part(model: BaseModel) -> object:
    return schema._to_runtime(model)


def test_settings_classes_are_frozen_slotted_dataclasses() -> None:
    for cls in (*_settings_classes().values(), settings.HostPort):
        params = cls.__dataclass_params__  # type: ignore[attr-defined]
        assert params.frozen, cls
        assert "__slots__" in vars(cls), cls


# ---------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("path", [*GOOD, EXAMPLE], ids=[p.stem for p in [*GOOD, EXAMPLE]])
def test_conversion_keeps_every_value_and_helper(path: Path) -> None:
    model = load_config(path)
    plain = to_settings(model)
    assert isinstance(plain, settings.Config)
    assert not any(isinstance(v, BaseModel) for v in _walk(plain))
    # the same values, seen through the JSON both render
    assert _as_json(plain) == json.loads(model.model_dump_json())
    # the derived helpers agree
    bgp = plain.bgp
    assert bgp.export.standard_communities == model.bgp.export.standard_communities
    assert bgp.export.large_communities == model.bgp.export.large_communities
    assert bgp.import_.table_id == model.bgp.import_.table_id
    assert plain.dataplane.table_id == model.dataplane.table_id
    for peer, model_peer in zip(bgp.peers, model.bgp.peers, strict=True):
        assert bgp.hold_time_for(peer) == model.bgp.hold_time_for(model_peer)
        assert bgp.keepalive_time_for(peer) == model.bgp.keepalive_time_for(model_peer)


def _walk(value: object) -> list[object]:
    out = [value]
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            out += _walk(getattr(value, f.name))
    elif isinstance(value, tuple):
        for item in value:
            out += _walk(item)
    return out


def _as_json(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, settings.HostPort):
        return {f.name: _as_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [_as_json(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def test_settings_compare_hash_and_pickle_by_value() -> None:
    a, b = load_settings(EXAMPLE), load_settings(EXAMPLE)
    assert a == b and hash(a) == hash(b)
    assert a.bgp.peers[0] == b.bgp.peers[0]
    assert pickle.loads(pickle.dumps(a)) == a
    other = dataclasses.replace(a, bgp=dataclasses.replace(a.bgp, hold_time=30))
    assert other != a and other.bgp.peers == a.bgp.peers
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.node.name = "x"  # type: ignore[misc]


def test_settings_defaults_build_a_minimal_config() -> None:
    node = settings.NodeConfig("hv1", IPv4Address("192.0.2.11"), 65501)
    parsed = parse_config({"node": {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501}})
    assert settings.Config(node) == to_settings(parsed)


def test_config_error_pickles_with_its_lines() -> None:
    err = pickle.loads(pickle.dumps(ConfigError(["a: b", "c: d"])))
    assert err.errors == ["a: b", "c: d"]
    assert schema.ConfigError is ConfigError  # one class: check-config and run agree


# ---------------------------------------------------------------- the isolated loader


def test_isolated_load_equals_in_process_load() -> None:
    assert config_isolated.load_config_isolated(EXAMPLE) == load_settings(EXAMPLE)


@pytest.mark.parametrize("name", ["bad_cidr", "unknown_key_top", "duplicate_key"])
def test_isolated_load_raises_the_golden_errors(name: str) -> None:
    path = BAD / f"{name}.yaml"
    with pytest.raises(ConfigError) as info:
        config_isolated.load_config_isolated(path)
    expected = path.with_suffix(".err").read_text().replace("{file}", str(path))
    assert "\n".join(info.value.errors) + "\n" == expected


def test_isolated_load_of_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        config_isolated.load_config_isolated(missing)
    assert info.value.errors == [f"{missing}: cannot read: No such file or directory"]


def test_async_load_does_not_block_and_gives_the_same_result(tmp_path: Path) -> None:
    async def main() -> tuple[settings.Config, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        config = await config_isolated.load_config_async(EXAMPLE)
        task.cancel()
        return config, ticks

    config, ticks = asyncio.run(main())
    assert config == load_settings(EXAMPLE)
    assert ticks >= 3, "the event loop kept running while the child validated"


def test_timeout_kills_the_child_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(path: str) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "import time; time.sleep(30)"], {}

    monkeypatch.setattr(config_isolated, "_command", slow)
    with pytest.raises(ConfigError) as info:
        config_isolated.load_config_isolated("x.yaml", timeout=0.3)
    assert info.value.errors == ["x.yaml: the config validator did not finish in 0.3 s"]
    with pytest.raises(ConfigError) as info:
        asyncio.run(config_isolated.load_config_async("x.yaml", timeout=0.3))
    assert info.value.errors == ["x.yaml: the config validator did not finish in 0.3 s"]


def test_a_cancelled_reload_kills_and_reaps_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon stops during a reload: the validator goes too, reaped before the
    cancellation goes on (not left running, nor to the garbage collector)."""
    def slow(path: str) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "import time; time.sleep(30)"], {}

    monkeypatch.setattr(config_isolated, "_command", slow)
    status = returncode_after_cancel(
        monkeypatch, lambda: config_isolated.load_config_async("x.yaml", timeout=30), after=0.3)
    assert status == -signal.SIGKILL


def test_a_crashing_child_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(path: str) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], {}

    monkeypatch.setattr(config_isolated, "_command", crash)
    with pytest.raises(ConfigError) as info:
        config_isolated.load_config_isolated("x.yaml")
    assert info.value.errors == ["x.yaml: the config validator failed (exit status 3): boom"]


def test_the_unpickler_builds_settings_types_only() -> None:
    good = pickle.dumps(load_settings(EXAMPLE))
    assert config_isolated._result("x", 0, good, b"") == load_settings(EXAMPLE)
    evil = pickle.dumps(subprocess.CompletedProcess(["x"], 0))
    with pytest.raises(ConfigError, match=r"subprocess\.CompletedProcess is not a settings type"):
        config_isolated._result("x", 0, evil, b"")
    with pytest.raises(ConfigError, match="answered a tuple"):
        config_isolated._result("x", 0, pickle.dumps((1, 2)), b"")


def test_child_runs_our_package_not_one_in_the_working_directory(tmp_path: Path) -> None:
    planted = tmp_path / "l3hostd"
    planted.mkdir()
    (planted / "__init__.py").write_text("raise SystemExit('planted package imported')\n")
    args, env = config_isolated._command(str(EXAMPLE))
    proc = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert pickle.loads(proc.stdout) == load_settings(EXAMPLE)


# ------------------------------------------------------- what the daemon process imports


_PROBE = textwrap.dedent("""
    import builtins, json, sys
    importers = {}
    real_import = builtins.__import__

    def spy(name, globals=None, locals=None, fromlist=(), level=0):
        top = name.split(".")[0]
        who = (globals or {}).get("__name__", "")
        watched = top in ("pydantic", "pydantic_core", "yaml")
        if level == 0 and watched and who.startswith("l3hostd"):
            importers.setdefault(who, set()).add(top)
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = spy
    import l3hostd.cli, l3hostd.daemon, l3hostd.control, l3hostd.ctl, l3hostd.logs
    from l3hostd.config_isolated import load_config_isolated
    config = load_config_isolated(sys.argv[1])
    builtins.__import__ = real_import
    print(json.dumps({
        "importers": {k: sorted(v) for k, v in importers.items()},
        "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                          ("pydantic", "pydantic_core", "yaml", "l3hostd")),
        "node": config.node.name,
    }))
""")


def _probe() -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(EXAMPLE)], capture_output=True,
                          text=True, timeout=60, check=True)
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_the_daemon_never_imports_the_config_schema() -> None:
    result = _probe()
    assert result["node"] == "hv1"
    assert "l3hostd.config" not in result["modules"]
    assert "l3hostd.cli_check" not in result["modules"]
    # the one remaining importer: endpoint files are YAML (PyYAML, ~1.4 MiB)
    assert result["importers"] == {"l3hostd.endpoints.parse": ["yaml"]}, result["importers"]


def test_the_daemon_imports_no_pydantic() -> None:
    """pydantic (~10 MiB with our models built) stays in the config child process."""
    modules = _probe()["modules"]
    assert not any(m.split(".")[0] in ("pydantic", "pydantic_core") for m in modules), modules
