"""Validate the config file in a child process, so that pydantic never enters the daemon.

How it works
    ``python -m l3hostd.config_isolated PATH`` (the child) imports :mod:`l3hostd.config`
    (pydantic, PyYAML), loads and validates the file exactly as ``l3hostd check-config``
    does, converts it into the plain dataclasses of :mod:`l3hostd.settings` and writes them
    pickled to stdout, exit status 0. A bad file: one line per error on stderr (the same
    lines check-config prints, naming the file and the YAML path) and exit status 2.

    The parent -- ``l3hostd run`` at start (:func:`load_config_isolated`) and on a reload
    (:func:`load_config_async`, which does not block the event loop) -- runs the child with
    the same interpreter and the same ``l3hostd`` package, bounded by a timeout, and turns
    its answer into a :class:`~l3hostd.settings.Config` or a
    :class:`~l3hostd.settings.ConfigError` carrying the child's lines.

Why it is built this way
    pydantic and the validators built for our models cost ~14 MiB of RSS that would stay in
    the daemon for its whole life (a third of its footprint), for work done once at start
    and on a reload. A child returns that memory to the system when it exits; the ~0.3 s it
    takes to start is paid only then. The pickle comes from our own child, but it is read
    with an unpickler that only builds the settings classes and the few standard types
    they hold (addresses, networks, paths), so the parent never runs anything else from it.
    The child is started with ``-P`` (no current directory on ``sys.path``) and with the
    directory our package was imported from first on ``PYTHONPATH``: it runs exactly the
    code the daemon runs, never a module planted in the working directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import l3hostd
from l3hostd import settings
from l3hostd.settings import Config, ConfigError

__all__ = ["DEFAULT_TIMEOUT", "load_config_async", "load_config_isolated", "main"]

#: Seconds the child may take (it normally needs ~0.3 s; a loaded host may be slower).
DEFAULT_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_BAD_CONFIG = 2

_ALLOWED: dict[str, frozenset[str]] = {
    "l3hostd.settings": frozenset(
        name for name in settings.__all__ if isinstance(getattr(settings, name), type)
    ),
    "ipaddress": frozenset({"IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network"}),
    "pathlib": frozenset({"Path", "PosixPath", "PurePosixPath"}),
}


class _SettingsUnpickler(pickle.Unpickler):
    """Builds only the settings classes and the standard types they hold."""

    def find_class(self, module: str, name: str) -> object:
        if name in _ALLOWED.get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a settings type")


def _command(path: str) -> tuple[list[str], dict[str, str]]:
    package_root = str(Path(l3hostd.__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root, os.environ.get("PYTHONPATH", "")) if p
    )
    return [sys.executable, "-P", "-m", "l3hostd.config_isolated", path], env


def _result(path: str, returncode: int, stdout: bytes, stderr: bytes) -> Config:
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    if returncode == EXIT_BAD_CONFIG and lines:
        raise ConfigError(lines)
    if returncode != EXIT_OK:
        why = lines[-1] if lines else "no output"
        raise ConfigError([f"{path}: the config validator failed (exit status {returncode}): "
                           f"{why}"])
    try:
        config = _SettingsUnpickler(io.BytesIO(stdout)).load()
    except Exception as exc:
        raise ConfigError([f"{path}: the config validator's answer is unreadable: {exc}"]
                          ) from None
    if not isinstance(config, Config):
        raise ConfigError([f"{path}: the config validator answered a {type(config).__name__}"])
    return config


def _timed_out(path: str, timeout: float) -> ConfigError:
    return ConfigError([f"{path}: the config validator did not finish in {timeout:g} s"])


def load_config_isolated(path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> Config:
    """Validate ``path`` in a child process; return the settings or raise ConfigError."""
    source = str(path)
    args, env = _command(source)
    try:
        proc = subprocess.run(args, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:  # run() killed the child
        raise _timed_out(source, timeout) from None
    return _result(source, proc.returncode, proc.stdout, proc.stderr)


async def load_config_async(path: str | Path, timeout: float = DEFAULT_TIMEOUT) -> Config:
    """:func:`load_config_isolated` for a running event loop (a reload): never blocks it."""
    source = str(path)
    args, env = _command(source)
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        # timed out, or cancelled (the daemon stopping mid-reload): the child goes too,
        # reaped here rather than left to the garbage collector after the loop is gone
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(BaseException):
            await proc.wait()
        if isinstance(exc, TimeoutError):
            raise _timed_out(source, timeout) from None
        raise
    assert proc.returncode is not None
    return _result(source, proc.returncode, stdout, stderr)


def main(argv: list[str] | None = None) -> int:
    """The child: validate one file, pickle the settings to stdout or the errors to stderr."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m l3hostd.config_isolated CONFIG", file=sys.stderr)
        return EXIT_BAD_CONFIG
    from l3hostd.config import load_settings

    try:
        config = load_settings(args[0])
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_BAD_CONFIG
    sys.stdout.buffer.write(pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
