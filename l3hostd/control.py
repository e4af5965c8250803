"""Control socket: a root-only unix socket speaking one JSON object per line.

Request ``{"command": "show", "what": "status"|"endpoints"|"routes"}``; the reply is one
JSON line ``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``. The socket
file is created with mode 0600 in a 0755 directory, so only root can connect.
:mod:`l3hostd.ctl` (``l3hostctl``) is the client.

``{"command": "reload"}`` re-reads the config file like SIGHUP and answers when it is
applied: ``{"ok": true, "data": {"changes": [...]}}``, or ``{"ok": false, "error": ...,
"errors": [one line per problem]}`` when it was rejected (the running config stays).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from ipaddress import ip_network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from l3hostd.bgp.rib import prefix_key
from l3hostd.settings import ConfigError

if TYPE_CHECKING:
    from l3hostd.daemon import Daemon

log = logging.getLogger("l3hostd.control")

MAX_REQUEST = 64 * 1024


def status(daemon: Daemon) -> dict[str, Any]:
    dp = daemon.dataplane
    return {
        "node": daemon.config.node.name,
        "uptime_seconds": round(time.time() - daemon.started, 1),
        "synced": dp.synced.is_set(),
        "endpoints": {s.value: n for s, n in sorted(dp.count_states().items(), key=str)},
        "endpoint_file_errors": dict(sorted(daemon.source.errors.items())),
        "host_routes_installed": len(dp.routes.observed),
        "learned_routes_installed": len(daemon.bgp.learned.observed) if daemon.bgp else 0,
        "exported_prefixes": len(daemon.bgp.exports) if daemon.bgp else 0,
        "bgp_input_holds": daemon.bgp.backpressure.holds if daemon.bgp else 0,
        "neighbours_installed": len(dp.neighbours.observed),
        "passes": dp.stats.passes,
        "link_events": daemon.monitor.events,
        "link_overflows": daemon.monitor.overflows,
        "draining": bool(daemon.bgp and daemon.bgp.draining),
        "drained": bool(daemon.bgp and daemon.bgp.drained),
        "firewall_error": (dp.firewall.nft_error or dp.firewall.stats.last_error)
        if dp.firewall is not None else "",
        "reconcilers": {
            r.name: {
                "desired": len(r.desired),
                "observed": len(r.observed),
                "dirty": r.dirty_count,
                "errors": r.stats.errors,
                "last_error": r.stats.last_error,
                "resyncs": r.stats.resyncs,
            }
            for r in dp.reconcilers
        },
    }


def routes(daemon: Daemon) -> list[dict[str, Any]]:
    installed = sorted(
        daemon.dataplane.routes.observed.values(),
        key=lambda r: (r.dst.version, r.dst.network_address.packed, r.dst.prefixlen),
    )
    return [
        {"dst": str(r.dst), "ifindex": r.ifindex, "table": r.table, "proto": "l3hostd"}
        for r in installed
    ]


def route_detail(daemon: Daemon, text: str) -> dict[str, Any]:
    """``show routes --prefix P``: every path the peers sent, the selection, and what is
    in the kernel for it (our local route and/or our learned route)."""
    try:
        prefix = ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"not a prefix: {text!r}") from exc
    out: dict[str, Any] = {"prefix": str(prefix), "local": None, "paths": [],
                           "selected_next_hops": [], "installed_next_hops": []}
    for r in daemon.dataplane.routes.observed.values():
        if r.dst == prefix:
            out["local"] = {"ifindex": r.ifindex, "table": r.table, "proto": "l3hostd"}
    bgp = daemon.bgp
    if bgp is not None:
        selected, paths = bgp.rib.lookup(prefix)
        out["paths"] = paths
        if selected is not None:
            out["selected_next_hops"] = [str(h) for h in selected.next_hops]
            out["best_peer"] = selected.best_peer
        installed = bgp.learned.observed.get(prefix_key(prefix))
        if installed is not None:
            out["installed_next_hops"] = [str(h) for h in bgp.rib.ecmp_next_hops(installed)]
        export = bgp.exports.get(prefix_key(prefix))
        out["exported"] = (
            {"source": export.source, "local_pref": export.local_pref} if export else None
        )
    return out


def peers(daemon: Daemon) -> list[dict[str, Any]]:
    return daemon.bgp.peer_rows() if daemon.bgp is not None else []


HANDLERS = {
    "status": status,
    "peers": peers,
    "endpoints": lambda d: d.dataplane.endpoint_rows(),
    "routes": routes,
}


class ControlServer:
    def __init__(self, path: str | Path, daemon: Daemon) -> None:
        self.path = Path(path)
        self.daemon = daemon
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._handle, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            reply = await self._reload() if _is_reload(line) else self.answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _reload(self) -> dict[str, Any]:
        try:
            changes = await self.daemon.reload()
        except ConfigError as exc:
            return {"ok": False, "error": "reload rejected: the running configuration stays",
                    "errors": exc.errors}
        except Exception as exc:  # a bug in the reload must not kill the daemon
            log.exception("reload failed")
            return {"ok": False, "error": f"reload failed: {exc}"}
        return {"ok": True, "data": {"changes": changes}}

    def _drain(self, command: str, wait: object) -> dict[str, Any]:
        bgp = self.daemon.bgp
        if bgp is None:
            raise ValueError("no BGP peers configured: nothing to drain")
        if command == "undrain":
            bgp.undrain()
            return {"draining": False}
        if not isinstance(wait, int | float) or isinstance(wait, bool) or not 0 <= wait <= 3600:
            raise ValueError("wait must be a number of seconds, 0..3600")
        bgp.drain(float(wait))
        return {"draining": True, "withdraw_in_seconds": wait}

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("request must be a JSON object")
            command = request.get("command")
            if command in ("drain", "undrain"):
                return {"ok": True, "data": self._drain(command, request.get("wait", 30))}
            if command != "show":
                raise ValueError(f"unknown command {command!r}")
            if request.get("what") == "routes" and request.get("prefix"):
                return {"ok": True, "data": route_detail(self.daemon, str(request["prefix"]))}
            handler = HANDLERS.get(str(request.get("what")))
            if handler is None:
                raise ValueError(f"show what? one of {', '.join(HANDLERS)}")
            return {"ok": True, "data": handler(self.daemon)}
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a view must not kill the daemon
            log.exception("control request failed")
            return {"ok": False, "error": f"internal error: {exc}"}


def _is_reload(line: bytes) -> bool:
    try:
        request = json.loads(line)
    except ValueError:
        return False
    return isinstance(request, dict) and request.get("command") == "reload"
