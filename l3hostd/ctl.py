"""``l3hostctl``: the operator's client for the control socket (think ``birdc``).

``l3hostctl [--socket PATH] show status|peers|endpoints|routes [--json]``,
``l3hostctl drain [--wait S]`` / ``undrain`` (RFC 8326 GRACEFUL_SHUTDOWN, then withdraw),
``l3hostctl reload`` (re-read the config file; prints ``OK`` and the changes applied, or
the errors that made the daemon reject it and keep its running config).
Tables by default, ``--json`` for scripts. Exit codes: 0 ok, 1 daemon unreachable or
failed, 2 bad usage or a config the daemon rejected.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

DEFAULT_SOCKET = "/run/l3hostd/control.sock"
#: A reload validates the file in a child process (normally < 1 s; the daemon gives it 30 s).
RELOAD_TIMEOUT = 60.0


def request(path: str, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) if not isinstance(r.get(c), list) else ",".join(map(str, r[c]))
              for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def render(what: str, data: Any) -> str:
    if what == "endpoints":
        return _table(data, ["interface", "state", "ips", "routes_installed", "id", "reason"])
    if what == "peers":
        return _table(data, ["name", "address", "asn", "state", "since", "prefixes_received",
                             "prefixes_sent", "flaps", "last_error"])
    if what == "routes" and isinstance(data, dict):
        return json.dumps(data, indent=2)
    if what == "routes":
        return _table(data, ["dst", "ifindex", "table", "proto"])
    return json.dumps(data, indent=2)


def _reload(path: str) -> int:
    try:
        reply = request(path, {"command": "reload"}, timeout=RELOAD_TIMEOUT)
    except OSError as exc:
        print(f"l3hostctl: cannot reach l3hostd at {path}: {exc}", file=sys.stderr)
        return 1
    if reply.get("ok"):
        print("OK")
        for line in reply["data"].get("changes", []):
            print(f"  {line}")
        return 0
    errors = reply.get("errors")
    print(f"l3hostctl: {reply.get('error')}", file=sys.stderr)
    for line in errors or []:
        print(line, file=sys.stderr)
    return 2 if errors else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="l3hostctl", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET)
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show")
    show.add_argument("what", choices=["status", "peers", "endpoints", "routes"])
    show.add_argument("--json", action="store_true")
    show.add_argument("--prefix", help="show routes: one prefix, all its paths")
    drain = sub.add_parser("drain", help="maintenance: GRACEFUL_SHUTDOWN, then withdraw all")
    drain.add_argument("--wait", type=float, default=30.0,
                       help="seconds between GRACEFUL_SHUTDOWN and the withdrawal (30)")
    sub.add_parser("undrain", help="announce again")
    sub.add_parser("reload", help="re-read the config file (like SIGHUP)")
    args = parser.parse_args(argv)
    if args.command == "reload":
        return _reload(args.socket)
    if args.command != "show":
        payload: dict[str, Any] = {"command": args.command}
        if args.command == "drain":
            payload["wait"] = args.wait
        try:
            reply = request(args.socket, payload)
        except OSError as exc:
            print(f"l3hostctl: cannot reach l3hostd at {args.socket}: {exc}", file=sys.stderr)
            return 1
        if not reply.get("ok"):
            print(f"l3hostctl: {reply.get('error')}", file=sys.stderr)
            return 1
        print(json.dumps(reply["data"]))
        return 0
    try:
        query: dict[str, Any] = {"command": args.command, "what": args.what}
        if args.prefix:
            query["prefix"] = args.prefix
        reply = request(args.socket, query)
    except OSError as exc:
        print(f"l3hostctl: cannot reach l3hostd at {args.socket}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"l3hostctl: {reply.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(reply["data"], indent=2) if args.json else render(args.what, reply["data"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
