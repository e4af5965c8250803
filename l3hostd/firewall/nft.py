"""Apply nft scripts and read our tables back: the nft half of the firewall's IO (set
elements go over netlink: :mod:`l3hostd.firewall.nfsock`).

:func:`apply` feeds a script to ``nft -f -`` (an asyncio subprocess, the script on stdin).
nft sends the whole script to the kernel as one netlink batch, which the kernel commits as
one generation or not at all: a failing script changes nothing, and packets see either the
old rules or the new ones. nft's stderr becomes :class:`NftError`'s message.

:func:`read_table` lists ``table inet <table>`` and ``table arp <table>`` as JSON and
returns a :class:`TableState`: chains with the digest carried by a rule comment
(``l3hostd:<digest>``, see :mod:`l3hostd.firewall.compile`), what each chain references
(jump/goto targets, ``@set`` lookups), map elements (ifname -> target chain), sets and their
elements. A table that does not exist reads as empty. This is O(table): it is for resyncs,
never for a single change.

:class:`LibNftables` is the same transaction through libnftables in process (ctypes, one
context kept): no process start-up per change, for the daemon's hot path. Both give
the same all-or-nothing semantics; the subprocess is what the tests stub with ``NFT``.

Only our tables are ever named; nothing here lists or flushes the whole ruleset. The
``NFT`` environment variable overrides the nft binary (tests point it at a failing stub);
``netns`` runs nft inside a network namespace (``ip netns exec``), for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from l3hostd.firewall.compile import DIGEST_PREFIX

__all__ = [
    "FamilyState",
    "LibNftables",
    "NftError",
    "TableState",
    "apply",
    "delete_table",
    "read_table",
]


class NftError(Exception):
    """nft failed (non-zero exit, timeout or missing binary); the message is its stderr."""


@dataclass(frozen=True, slots=True)
class FamilyState:
    """What one family's table holds. Element strings are nft's own spelling: an address
    (``10.0.0.1``), a prefix (``10.0.0.0/24``), a range (``10.0.0.1-10.0.0.5``), an
    interface name (``tap1``)."""

    exists: bool = False
    chains: Mapping[str, str | None] = field(default_factory=dict)  # name -> digest or None
    maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> key -> chain
    sets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    rules: Mapping[str, int] = field(default_factory=dict)  # chain -> number of rules
    #: chain -> the chains its rules jump/goto and the sets they look up (``@name``)
    refs: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TableState:
    """Both of our tables: ``inet`` (everything) and ``arp`` (ARP sender checks).

    ``state.inet.chains["sg-web-in"]`` is the digest that chain was compiled with (None for
    chains without one: the fixed chains); ``state.inet.maps["from_vm"]["tap1"]`` the chain
    that TAP dispatches to; ``state.inet.sets["g4-web"]`` a set's elements;
    ``state.inet.refs["prof-x-in"]`` what that chain refers to."""

    inet: FamilyState = field(default_factory=FamilyState)
    arp: FamilyState = field(default_factory=FamilyState)

    @property
    def exists(self) -> bool:
        return self.inet.exists


def _nft() -> str:
    return os.environ.get("NFT", "nft")


async def _run(
    args: Sequence[str], stdin: bytes | None, timeout: float, netns: str | None
) -> tuple[int, bytes, bytes]:
    argv = [_nft(), *args]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        raise NftError(f"cannot run {argv[0]}: {e}") from e
    try:
        out, err = await asyncio.wait_for(_talk(proc, stdin), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise NftError(f"nft timed out after {timeout} s") from None
    except BaseException:
        # cancelled (the daemon stopping mid-apply) or failed: kill the child and reap it,
        # or its transport outlives the loop and complains from the garbage collector
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(BaseException):
            await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out, err


async def _talk(proc: asyncio.subprocess.Process, stdin: bytes | None) -> tuple[bytes, bytes]:
    """``proc.communicate(stdin)``, except that an nft which exits before reading its
    script (it failed at once) is not an error of ours: under uvloop, writing to its closed
    pipe raises RuntimeError, which asyncio's communicate() does not expect, and nft's own
    message on stderr was lost behind it."""
    if stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(stdin)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # nft is gone; its stderr and exit status say why
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            proc.stdin.close()
    assert proc.stdout is not None and proc.stderr is not None
    out, err = await asyncio.gather(proc.stdout.read(), proc.stderr.read())
    await proc.wait()
    return out, err


async def apply(script: str, timeout: float = 10.0, *, netns: str | None = None) -> None:
    """Run ``script`` with ``nft -f -`` as one transaction; raise :class:`NftError` with
    nft's stderr if it fails (then nothing was changed)."""
    rc, _, err = await _run(["-f", "-"], script.encode(), timeout, netns)
    if rc != 0:
        raise NftError(err.decode(errors="replace").strip() or f"nft exited with {rc}")


async def _list(family: str, table: str, timeout: float, netns: str | None) -> FamilyState:
    rc, out, err = await _run(["-j", "list", "table", family, table], None, timeout, netns)
    if rc != 0:
        msg = err.decode(errors="replace")
        if "No such file or directory" in msg:
            return FamilyState()
        raise NftError(msg.strip() or f"nft exited with {rc}")
    return parse_table(json.loads(out))


async def read_table(
    table: str = "l3hostd", timeout: float = 30.0, *, netns: str | None = None
) -> TableState:
    """Read ``table inet <table>`` and ``table arp <table>``; missing tables read empty."""
    inet, arp = await asyncio.gather(
        _list("inet", table, timeout, netns), _list("arp", table, timeout, netns)
    )
    return TableState(inet=inet, arp=arp)


async def delete_table(
    table: str = "l3hostd", timeout: float = 10.0, *, netns: str | None = None
) -> None:
    """Remove both of our tables (if present), in one transaction."""
    script = "".join(f"add table {f} {table}\ndelete table {f} {table}\n" for f in ("inet", "arp"))
    await apply(script, timeout, netns=netns)


class LibNftables:
    """libnftables (``libnftables.so.1``, the library behind ``nft``) in process, through
    ctypes, one context kept for the daemon's lifetime: the fast path for single changes.

    Same semantics as :func:`apply` (one script, one transaction, all or nothing) without a
    process per change: ``nft -f -`` pays ~4 ms of process start-up per call, and ~13 ms
    more when the script deletes anything (flush of a non-empty chain, ``delete element``),
    apparently at process exit, which the in-process path does not pay (see
    bench/firewall.py). Calls run in a worker thread (ctypes releases the GIL), serialized
    by a lock: a context is not thread-safe. Runs in the caller's network namespace.
    """

    def __init__(self, soname: str = "libnftables.so.1") -> None:
        try:
            lib = ctypes.CDLL(soname, use_errno=True)
        except OSError as e:
            raise NftError(f"cannot load {soname}: {e}") from e
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_int]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx: int | None = lib.nft_ctx_new(0)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def run_sync(self, script: str) -> None:
        """Run ``script`` as one transaction (blocking); :class:`NftError` on failure."""
        with self._lock:
            if self._ctx is None:
                raise NftError("libnftables context closed")
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            if rc != 0:
                err = self._lib.nft_ctx_get_error_buffer(self._ctx) or b""
                raise NftError(err.decode(errors="replace").strip() or f"nft returned {rc}")

    async def run(self, script: str) -> None:
        await asyncio.to_thread(self.run_sync, script)

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None


# ----------------------------------------------------------------------------- parsing


def _element(value: Any) -> str:
    """nft JSON element -> nft text spelling."""
    if isinstance(value, dict):
        if "elem" in value:
            return _element(value["elem"]["val"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{_element(low)}-{_element(high)}"
        if "concat" in value:
            return " . ".join(_element(v) for v in value["concat"])
    return str(value)


def _target(verdict: Any) -> str:
    if isinstance(verdict, dict):
        for kind in ("jump", "goto"):
            if kind in verdict:
                return str(verdict[kind]["target"])
        return next(iter(verdict), "")
    return str(verdict)


def _references(node: Any, out: set[str]) -> None:
    """Collect jump/goto targets and ``@set`` names anywhere in a rule's expressions."""
    if isinstance(node, dict):
        for kind in ("jump", "goto"):
            target = node.get(kind)
            if isinstance(target, dict) and isinstance(target.get("target"), str):
                out.add(target["target"])
        for value in node.values():
            _references(value, out)
    elif isinstance(node, list):
        for value in node:
            _references(value, out)
    elif isinstance(node, str) and node.startswith("@"):
        out.add(node)


def parse_table(doc: Mapping[str, Any]) -> FamilyState:
    """``nft -j list table`` output -> :class:`FamilyState`."""
    chains: dict[str, str | None] = {}
    maps: dict[str, dict[str, str]] = {}
    sets: dict[str, frozenset[str]] = {}
    rules: dict[str, int] = {}
    refs: dict[str, set[str]] = {}
    exists = False
    for obj in doc.get("nftables", ()):
        if "table" in obj:
            exists = True
        elif "chain" in obj:
            chains.setdefault(obj["chain"]["name"], None)
        elif "map" in obj:
            m = obj["map"]
            maps[m["name"]] = {_element(k): _target(v) for k, v in m.get("elem", ())}
        elif "set" in obj:
            s = obj["set"]
            sets[s["name"]] = frozenset(_element(e) for e in s.get("elem", ()))
        elif "rule" in obj:
            r = obj["rule"]
            name = r["chain"]
            rules[name] = rules.get(name, 0) + 1
            _references(r.get("expr", ()), refs.setdefault(name, set()))
            comment = r.get("comment")
            if isinstance(comment, str) and comment.startswith(DIGEST_PREFIX):
                chains[name] = comment[len(DIGEST_PREFIX) :]
    return FamilyState(
        exists=exists,
        chains=chains,
        maps=maps,
        sets=sets,
        rules=rules,
        refs={c: frozenset(r) for c, r in refs.items()},
    )
