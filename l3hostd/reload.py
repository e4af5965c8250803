"""What a reload changes: the pure diff of the running settings and the new ones.

How it works
    :func:`plan` compares two :class:`~l3hostd.settings.Config` values (no IO) and returns a
    :class:`ReloadPlan`: the lines to reject the reload with, or what to do.

    - Every leaf setting is compared by its YAML path. Settings the daemon can change while
      it runs are listed in :data:`LIVE`; a change to any other one rejects the whole
      reload with ``<path> cannot change without a restart (running: X, new: Y)``. A
      setting added to the schema later is therefore restart-only until someone teaches
      the reload to apply it: never silently ignored.
    - Peers are matched by address (their identity on the wire). A peer whose *effective*
      session settings (its own fields and the ``bgp`` timers and graceful restart that
      apply to it, plus the TCP-MD5 key read from its password file) are unchanged is left
      alone; otherwise it is restarted, and the plan says which settings differ. Peers only
      in the new file are added, peers only in the old one removed.
    - :func:`policy_widens` tells whether a new import policy may admit a path the old one
      refused: those paths were never stored (the Adj-RIB-In keeps accepted paths only), so
      the manager must ask the peers to send them again (ROUTE-REFRESH, RFC 2918).

Why it is built this way
    The plan is a pure function of its inputs, so every decision is unit-tested without a
    daemon; :meth:`l3hostd.daemon.Daemon.reload` and
    :meth:`l3hostd.bgp.manager.BgpManager.reconfigure` only carry it out. Either the whole
    new file is applied or none of it: a rejected reload changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass

from l3hostd.bgp.rib import ImportPolicy
from l3hostd.model import IPAddress, IPNetwork
from l3hostd.settings import BgpConfig, Config, HostPort, PeerConfig

__all__ = [
    "LIVE",
    "PeerRestart",
    "ReloadPlan",
    "import_policy",
    "plan",
    "policy_widens",
    "session_settings",
]

#: Settings applied while the daemon runs (YAML paths). Everything else needs a restart.
LIVE = frozenset({
    "node.name",
    # peers are compared one by one; these reach them through their effective settings
    "bgp.hold_time",
    "bgp.keepalive_time",
    "bgp.connect_retry_time",
    "bgp.send_hold_time",
    "bgp.graceful_restart.enabled",
    "bgp.graceful_restart.restart_time",
    "bgp.peers",
    "bgp.export.interfaces",
    "bgp.export.communities",
    "bgp.import.accept",
    "bgp.import.reject",
    "bgp.import.allow_default",
    "bgp.import.max_prefixes",
    "endpoints.rescan_interval",
    "dataplane.resync_interval",
    "logging.level",
    "logging.format",
})

#: Why some settings are not live, for the rejection line.
_WHY: dict[str, str] = {
    "node.router_id": "every session would reset; restart with graceful restart instead",
    "node.asn": "every session would reset; restart with graceful restart instead",
    "bgp.import.table": "the learned routes would have to move between tables",
    "control.socket": "l3hostctl would lose the daemon",
}


@dataclass(frozen=True, slots=True)
class PeerRestart:
    old: PeerConfig
    new: PeerConfig
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    rejected: tuple[str, ...] = ()
    #: one line per change, for the log and ``l3hostctl reload``
    changes: tuple[str, ...] = ()
    added: tuple[PeerConfig, ...] = ()
    removed: tuple[PeerConfig, ...] = ()
    restarted: tuple[PeerRestart, ...] = ()
    changed_paths: frozenset[str] = frozenset()

    @property
    def bgp_changed(self) -> bool:
        return any(p.startswith("bgp.") for p in self.changed_paths)

    def changed(self, *paths: str) -> bool:
        return any(p in self.changed_paths for p in paths)


def _yaml_name(name: str) -> str:
    return "import" if name == "import_" else name


def _leaves(value: object, path: str) -> Iterator[tuple[str, object]]:
    """(YAML path, value) of every leaf setting; the peer list is one leaf."""
    if is_dataclass(value) and not isinstance(value, type | HostPort) and path != "bgp.peers":
        for f in fields(value):
            sub = f"{path}.{_yaml_name(f.name)}" if path else _yaml_name(f.name)
            yield from _leaves(getattr(value, f.name), sub)
    else:
        yield path, value


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 30.0 -> 30, as written in the file
    return str(value)


def session_settings(bgp: BgpConfig, peer: PeerConfig) -> dict[str, object]:
    """Everything that shapes ``peer``'s session, keyed by its YAML path under the peer.

    All of the peer's own fields (so a field added later counts) but its address, its
    identity; hold and keepalive as they apply to it; the ``bgp`` settings its session is
    built from."""
    out: dict[str, object] = {
        f.name: getattr(peer, f.name) for f in fields(peer) if f.name != "address"
    }
    out["hold_time"] = bgp.hold_time_for(peer)
    out["keepalive_time"] = bgp.keepalive_time_for(peer)
    out["bgp.connect_retry_time"] = bgp.connect_retry_time
    out["bgp.send_hold_time"] = bgp.send_hold_time
    out["bgp.graceful_restart.enabled"] = bgp.graceful_restart.enabled
    out["bgp.graceful_restart.restart_time"] = bgp.graceful_restart.restart_time
    return out


def _peer_reasons(
    old_bgp: BgpConfig, old: PeerConfig, new_bgp: BgpConfig, new: PeerConfig,
    old_password: bytes | None, new_password: bytes | None,
) -> tuple[str, ...]:
    before = session_settings(old_bgp, old)
    after = session_settings(new_bgp, new)
    reasons = [
        f"{key} {_show(before.get(key))} -> {_show(after.get(key))}"
        for key in after
        if before.get(key) != after[key]
    ]
    if old_password != new_password:
        reasons.append("TCP-MD5 password changed")
    return tuple(reasons)


def _peer_label(peer: PeerConfig) -> str:
    return f"peer {peer.name} ({peer.address})"


def plan(
    old: Config,
    new: Config,
    *,
    bgp_running: bool = True,
    old_passwords: Mapping[IPAddress, bytes | None] | None = None,
    new_passwords: Mapping[IPAddress, bytes | None] | None = None,
) -> ReloadPlan:
    """The reload from ``old`` to ``new``. ``bgp_running``: the daemon has a BGP side (it
    was started with peers); ``*_passwords``: the TCP-MD5 keys in force / just read."""
    old_pw = old_passwords or {}
    new_pw = new_passwords or {}
    old_leaves = dict(_leaves(old, ""))
    new_leaves = dict(_leaves(new, ""))
    changed = frozenset(p for p in new_leaves if old_leaves.get(p) != new_leaves[p])
    rejected: list[str] = []
    changes: list[str] = []
    for path in sorted(changed - {"bgp.peers"}):
        was, now = _show(old_leaves.get(path)), _show(new_leaves[path])
        if path in LIVE:
            changes.append(f"{path}: {was} -> {now}")
            continue
        why = _WHY.get(path)
        rejected.append(f"{path} cannot change without a restart (running: {was}, new: {now})"
                        + (f": {why}" if why else ""))
    if not bgp_running and new.bgp.peers:
        rejected.append("bgp.peers: the daemon was started without BGP peers; starting BGP "
                        "needs a restart")
    if rejected:
        return ReloadPlan(rejected=tuple(rejected), changed_paths=changed)

    old_peers = {p.address: p for p in old.bgp.peers}
    new_peers = {p.address: p for p in new.bgp.peers}
    removed = tuple(p for a, p in old_peers.items() if a not in new_peers)
    added = tuple(p for a, p in new_peers.items() if a not in old_peers)
    restarted: list[PeerRestart] = []
    for address, peer in new_peers.items():
        before = old_peers.get(address)
        if before is None:
            continue
        reasons = _peer_reasons(old.bgp, before, new.bgp, peer,
                                old_pw.get(address), new_pw.get(address))
        if reasons:
            restarted.append(PeerRestart(before, peer, reasons))
    for peer in removed:
        changes.append(f"{_peer_label(peer)}: removed")
    for restart in restarted:
        changes.append(f"{_peer_label(restart.new)}: restarting the session: "
                       + "; ".join(restart.reasons))
    for peer in added:
        changes.append(f"{_peer_label(peer)}: added")
    return ReloadPlan(
        changes=tuple(changes), added=added, removed=removed, restarted=tuple(restarted),
        changed_paths=changed,
    )


# ---- import policy ----------------------------------------------------------------------


def _covered(net: IPNetwork, nets: tuple[IPNetwork, ...]) -> bool:
    return any(
        net.version == other.version and net.subnet_of(other)  # type: ignore[arg-type]
        for other in nets
    )


def policy_widens(old: ImportPolicy, new: ImportPolicy) -> bool:
    """Whether ``new`` may admit a path that ``old`` refused (and so was never stored).

    Conservative: True unless every change provably narrows what is admitted."""
    if new.allow_default and not old.allow_default:
        return True
    if any(not _covered(net, new.reject) for net in old.reject):
        return True  # something old rejected may now pass
    if old.accept and (not new.accept or any(not _covered(n, old.accept) for n in new.accept)):
        return True
    if old.router_id != new.router_id:
        return True
    return bool(old.own_addresses - new.own_addresses)


def import_policy(config: Config) -> ImportPolicy:
    """The import policy the Adj-RIB-In applies, from the settings."""
    imp = config.bgp.import_
    own = {p.source_address for p in config.bgp.peers if p.source_address is not None}
    return ImportPolicy(
        accept=imp.accept,
        reject=imp.reject,
        allow_default=imp.allow_default,
        router_id=config.node.router_id,
        own_addresses=frozenset(own),
    )
