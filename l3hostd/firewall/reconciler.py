"""Firewall reconciler: ``table inet l3hostd`` follows the endpoints and security groups.

Keys and values (digests, so that comparing desired with observed is cheap):

* ``"base"`` -- the table skeleton (base chains, dispatch maps, VM-to-host chain, DNAT);
* ``"ep:<endpoint id>"`` -- that endpoint's chains, sets and map/set elements, valued by
  the digest of its compiled rules (:class:`~l3hostd.firewall.compile.EndpointRules`);
* ``"set:<group>"`` -- the members of a remote group's sets, valued by a digest of them.

One pass writes every dirty key as ONE ``nft -f -`` transaction (all or nothing): an
endpoint change touches only its own chains, elements and the sets it changes, never the
whole table. Observed state is read back from the kernel (``nft -j list table``): each
endpoint chain carries its digest in a comment, so a restart adopts a table that is
already right without rewriting it (no gap in enforcement), and sweeps what is ours but no
longer wanted. If nft fails, the whole batch is retried with backoff and the endpoints in
it stay not-ready: the dataplane keeps their routes out (fail closed), and the error is in
``stats.last_error``.

:class:`FirewallInputs` is the bookkeeping that turns endpoints, groups and remote members
into desired keys incrementally (pure; no IO).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network

from l3hostd.firewall import compile as fwc
from l3hostd.firewall import nft
from l3hostd.model import Endpoint, IPAddress, IPNetwork, SecurityGroup
from l3hostd.reconcile import Reconciler

log = logging.getLogger("l3hostd.firewall")

Member = IPAddress | IPNetwork


def endpoint_key(endpoint_id: str) -> str:
    """The reconciler key of an endpoint: ``ep:`` + the identifier in its chain names, so
    that a key read back from the kernel (a chain name) and a desired one are the same."""
    return "ep:" + fwc.chain_names(endpoint_id).egress.removeprefix("from-")


def _members_digest(members: frozenset[Member]) -> str:
    # as nft reads them back: host addresses without /32 or /128
    return _text_digest(frozenset(
        str(m.network_address) if isinstance(m, IPv4Network | IPv6Network)
        and m.prefixlen == m.max_prefixlen else str(m)
        for m in members
    ))


class FirewallInputs:
    """Endpoints (those that may carry traffic), groups and remote members -> desired.

    Indexed so that one endpoint change costs O(its groups x their sizes), never
    O(all endpoints): members per group, and how many endpoints' rules reference a group
    (a group's sets exist while someone references them)."""

    def __init__(self, settings: fwc.FirewallSettings) -> None:
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.remote: dict[str, frozenset[Member]] = {}
        self.rules: dict[str, fwc.EndpointRules] = {}
        self.members: dict[str, frozenset[Member]] = {}
        self.ident: dict[str, str] = {}  # "ep:<chain ident>" -> endpoint id
        self._in_group: dict[str, set[str]] = {}  # group -> active member endpoint ids
        self._active: set[str] = set()  # endpoints whose IPs count as group members
        self._refs: dict[str, int] = {}  # group -> endpoints whose rules reference it
        self._users: dict[str, set[str]] = {}  # group -> endpoints that name it

    def set_endpoint(self, ep: Endpoint | None, endpoint_id: str, active: bool) -> set[str]:
        """Returns the keys whose desired value may have changed."""
        ident = endpoint_key(endpoint_id)
        self.ident[ident] = endpoint_id
        touched = self._forget(endpoint_id)
        if ep is not None:
            self.endpoints[endpoint_id] = ep
            for g in ep.security_groups:
                self._users.setdefault(g, set()).add(endpoint_id)
            if active:
                self._active.add(endpoint_id)
                for g in ep.security_groups:
                    self._in_group.setdefault(g, set()).add(endpoint_id)
            touched |= set(ep.security_groups) | self._compile(endpoint_id)
        return {ident} | self._refresh_members(touched)

    def _forget(self, endpoint_id: str) -> set[str]:
        """Take an endpoint out of every index; return the groups it touched."""
        old = self.endpoints.pop(endpoint_id, None)
        touched: set[str] = set()
        if old is not None:
            touched |= set(old.security_groups)
            for g in old.security_groups:
                self._users.get(g, set()).discard(endpoint_id)
                self._in_group.get(g, set()).discard(endpoint_id)
        self._active.discard(endpoint_id)
        rules = self.rules.pop(endpoint_id, None)
        if rules is not None:
            touched |= rules.groups
            for g in rules.groups:
                self._refs[g] -= 1
                if not self._refs[g]:
                    del self._refs[g]
        return touched

    def _compile(self, endpoint_id: str) -> frozenset[str]:
        """(Re)compile an endpoint's rules; return the remote groups they reference."""
        old = self.rules.get(endpoint_id)
        if old is not None:
            for g in old.groups:
                self._refs[g] -= 1
                if not self._refs[g]:
                    del self._refs[g]
        rules = fwc.compile_endpoint(self.endpoints[endpoint_id], self.groups, self.settings)
        self.rules[endpoint_id] = rules
        for g in rules.groups:
            self._refs[g] = self._refs.get(g, 0) + 1
        return rules.groups | (old.groups if old is not None else frozenset())

    def set_groups(self, groups: Mapping[str, SecurityGroup]) -> set[str]:
        changed = {n for n in set(groups) | set(self.groups) if groups.get(n) != self.groups.get(n)}
        self.groups = dict(groups)
        keys: set[str] = set()
        affected = set().union(*(self._users.get(g, set()) for g in changed)) if changed else set()
        for eid in affected:
            keys.add(endpoint_key(eid))
            keys |= self._refresh_members(self._compile(eid))
        return keys

    def set_remote(self, remote: Mapping[str, frozenset[Member]]) -> set[str]:
        changed = {g for g in set(remote) | set(self.remote) if remote.get(g) != self.remote.get(g)}
        self.remote = dict(remote)
        return self._refresh_members(changed)

    def _refresh_members(self, groups: Iterable[str]) -> set[str]:
        keys = set()
        for group in groups:
            ips: set[Member] = set(self.remote.get(group, frozenset()))
            for eid in self._in_group.get(group, ()):
                ips.update(self.endpoints[eid].ips)
            members = frozenset(ips)
            if self.members.get(group) != members:
                self.members[group] = members
            keys.add(f"set:{group}")  # also when only referenced or unreferenced now
        return keys

    def desired(self, key: str) -> str | None:
        kind, _, name = key.partition(":")
        if kind == "base":
            return hashlib.sha256(fwc.base_script(self.settings).encode()).hexdigest()[:16]
        if kind == "ep":
            eid = self.ident.get(key)
            rules = self.rules.get(eid) if eid is not None else None
            return rules.digest if rules is not None else None
        if kind == "set":
            if name not in self._refs:
                return None
            return _members_digest(self.members.get(name, frozenset()))
        return None


class FirewallReconciler(Reconciler[str, str]):
    name = "firewall"

    def __init__(self, inputs: FirewallInputs) -> None:
        super().__init__()
        self.inputs = inputs
        self.set_desired("base", inputs.desired("base"))
        self._state: nft.TableState | None = None
        self._installed: dict[str, fwc.EndpointRules] = {}  # key -> rules last applied
        self._installed_members: dict[str, frozenset[Member]] = {}
        self._lib: nft.LibNftables | None = None
        if not os.environ.get("NFT"):  # NFT=... (tests) forces the command line tool
            try:
                self._lib = nft.LibNftables()
            except (OSError, nft.NftError) as exc:
                log.info("libnftables not usable (%s): using the nft command", exc)
        self.transactions = 0
        self.nft_error = ""  # nft's own message of the last failed transaction, if any
        # a changed endpoint is rewritten by its add script (idempotent: flush + refill of
        # its chains in the same transaction), never deleted and re-added
        self.replace_in_place = True

    def refresh(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.set_desired(key, self.inputs.desired(key))

    def ready(self, endpoint_id: str) -> bool:
        """Are this endpoint's chains in the kernel, current, and the skeleton too?"""
        key = endpoint_key(endpoint_id)
        want = self.desired.get(key)
        return (
            want is not None
            and self.observed.get(key) == want
            and self.observed.get("base") == self.desired.get("base")
        )

    async def _dump(self) -> dict[str, str]:
        state = await nft.read_table(self.inputs.settings.table)
        self._state = state
        observed: dict[str, str] = {}
        if not state.exists:
            return observed
        # "base" is never adopted: its script is idempotent and atomic (flush + refill of
        # the fixed chains in one transaction), so the first pass simply re-asserts it.
        for chain, digest in state.inet.chains.items():
            if chain.startswith("from-") and digest is not None:
                observed["ep:" + chain.removeprefix("from-")] = digest
        g4_prefix = "g4-"
        for name, elements in state.inet.sets.items():
            if name.startswith(g4_prefix):
                group = name.removeprefix(g4_prefix)
                six = state.inet.sets.get("g6-" + group, frozenset())
                members = frozenset(e.split(" . ", 1)[-1] for e in elements | six)
                observed[f"set:{group}"] = _text_digest(members)
        return observed

    async def _write(
        self, deletes: Sequence[tuple[str, str]], adds: Sequence[tuple[str, str]]
    ) -> list[int]:
        settings = self.inputs.settings
        parts: list[str] = []
        # order: the skeleton; endpoints that go (their TAP name may be taken by one that
        # comes); group sets (rules reference them); endpoints that come or change;
        # sets nobody references any more
        for key, _ in adds:
            if key == "base":
                parts.append(fwc.base_script(settings))
        for key, _ in deletes:
            if key.startswith("ep:"):
                parts.append(self._delete_endpoint_script(key))
        # what each script was built from: the inputs may change while nft runs, and the
        # next delta must start from what the kernel really got
        built_sets: dict[str, frozenset[Member]] = {}
        built_rules: dict[str, fwc.EndpointRules] = {}
        for key, _ in adds:
            if key.startswith("set:"):
                members = self.inputs.members.get(key[4:], frozenset())
                built_sets[key] = members
                parts.append(self._set_script(key, members))
        for key, _ in adds:
            if key.startswith("ep:"):
                eid = self.inputs.ident.get(key)
                rules = self.inputs.rules.get(eid) if eid else None
                if rules is not None:
                    built_rules[key] = rules
                    parts.append(self._endpoint_script(key, rules))
        for key, _ in deletes:
            if key.startswith("set:"):
                parts.append(self._delete_set_script(key))
        script = "".join(p if p.endswith("\n") else p + "\n" for p in parts if p)
        n = len(deletes) + len(adds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("nft transaction (%d changes):\n%s", n, script[:4000])
        try:
            if self._lib is not None and len(script) < 4_000_000:
                await self._lib.run(script)
            else:
                await nft.apply(script)
        except nft.NftError as exc:
            log.error("firewall: nft transaction of %d changes failed: %s", n, exc)
            self.nft_error = str(exc)[:500]
            return [errno.EIO] * n  # every key of the batch stays dirty: retried w/ backoff
        self.transactions += 1
        self.nft_error = ""
        for key, _ in deletes:
            self._installed.pop(key, None)
            self._installed_members.pop(key, None)
        self._installed.update(built_rules)
        self._installed_members.update(built_sets)
        return [0] * n

    def _endpoint_script(self, key: str, rules: fwc.EndpointRules) -> str:
        old = self._installed.get(key)
        if old is not None and old.interface != rules.interface:
            # its TAP name changed: the old map entries must go (add_script is otherwise
            # idempotent: it flushes and refills the endpoint's chains)
            return old.delete_script + rules.add_script
        if old is None and self._state is not None:
            stale = self._adopted_interfaces(key) - {rules.interface}
            if stale:
                return self._delete_adopted(key, stale) + rules.add_script
        return rules.add_script

    def _set_script(self, key: str, members: frozenset[Member]) -> str:
        group = key[4:]
        old = self._installed_members.get(key)
        if old is not None:
            # small membership changes: element deltas (flat cost), not a set rewrite
            return fwc.group_delta_script(group, members - old, old - members,
                                          self.inputs.settings)
        return fwc.group_set_script(group, members, self.inputs.settings)

    def _delete_set_script(self, key: str) -> str:
        return fwc.group_set_script(key[4:], frozenset(), self.inputs.settings)

    def _delete_endpoint_script(self, key: str) -> str:
        old = self._installed.get(key)
        if old is not None:
            return old.delete_script
        return self._delete_adopted(key, self._adopted_interfaces(key))

    def _adopted_interfaces(self, key: str) -> set[str]:
        state = self._state
        if state is None:
            return set()
        chain = "from-" + key.removeprefix("ep:")
        return {i for i, c in state.inet.maps.get(fwc.FROM_VM_MAP, {}).items() if c == chain}

    def _delete_adopted(self, key: str, interfaces: Iterable[str]) -> str:
        """Remove an endpoint found in the kernel whose rules we did not compile (it went
        away while the daemon was down): built from the names alone."""
        t = self.inputs.settings.table
        ident = key.removeprefix("ep:")
        inet = f"inet {t}"
        lines = []
        for iface in sorted(interfaces):
            q = f'"{iface}"'
            lines += [
                f"delete element arp {t} {fwc.ARP_MAP} {{ {q} }}",
                f"delete element {inet} {fwc.TO_VM_MAP} {{ {q} }}",
                f"delete element {inet} {fwc.SRC_VM_MAP} {{ {q} }}",
                f"delete element {inet} {fwc.FROM_VM_MAP} {{ {q} }}",
                f"delete element {inet} {fwc.TAPS_SET} {{ {q} }}",
            ]
        state = self._state
        if state is not None and not state.arp.maps.get(fwc.ARP_MAP):
            lines = [x for x in lines if not x.startswith("delete element arp")]
        for chain in (f"from-{ident}", f"to-{ident}", f"src-{ident}"):
            lines += [f"flush chain {inet} {chain}", f"delete chain {inet} {chain}"]
        lines += [f"flush chain arp {t} from-{ident}", f"delete chain arp {t} from-{ident}"]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        if self._lib is not None:
            self._lib.close()
            self._lib = None


def _text_digest(members: frozenset[str]) -> str:
    """Digest of members as nft spells them, comparable with :func:`_members_digest`."""
    text = "\n".join(sorted(members))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
