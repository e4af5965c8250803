"""Firewall reconciler: ``table inet l3hostd`` follows the endpoints and security groups.

Keys and values (digests, so that comparing desired with observed is cheap):

* ``"base"`` -- the table skeleton (fixed chains, sets and maps);
* ``"sg:<group ident>"`` -- a security group's two chains;
* ``"prof:<profile id>"`` -- a profile's two chains (one per distinct combination of
  groups in use);
* ``"if:<tap>"`` -- every element of one TAP (dispatch map entries, source MAC and
  addresses, ARP), see :mod:`l3hostd.firewall.elements`;
* ``"set:<group ident>"`` -- the members of a remote group's two sets.

One pass writes the dirty keys in two steps. Chains (base, groups, profiles) go in as ONE
nft transaction through libnftables (``nft -f -`` when ``NFT`` is set); this is the only
step that pays nft's cache fetch, and it stays cheap because the table has few chains.
Elements (TAPs and group members) then go in as ONE nf_tables netlink batch packed by
:mod:`l3hostd.firewall.nfnl` -- no nft, no cache: flat cost whatever the table size. Both
are all-or-nothing; if a step with several keys fails, each key is retried on its own in
the same pass, so one bad object cannot hold back the others.

Fail closed, in order: a profile's chains (and its groups' chains) exist before any map
entry jumps to them -- a TAP whose profile did not make it into the kernel is not written
and stays not-ready; removals take a TAP's elements out first, and a group or profile
chain (or a group's sets) that is no longer wanted is garbage-collected only once nothing
in the kernel references it any more. The dataplane keeps an endpoint's routes out until
:meth:`FirewallReconciler.ready` says its elements, profile and groups are in place.

Observed state is read back with ``nft -j list table`` (O(table): resyncs only): chains
carry their digest in a rule comment and elements are grouped by TAP, so a restart adopts
a table that is right without rewriting it (no gap in enforcement) and fixes or sweeps the
rest. A table that is not in this layout (an older l3hostd, or objects that are not ours)
is replaced as a whole by one atomic transaction (``add table; delete table; table {..}``).
Failures keep the keys dirty (retried with backoff), the endpoints stay not-ready, and the
error is in ``nft_error`` / ``stats.last_error``; an element batch refused with ENOENT or
EEXIST (the kernel is not what we thought) also queues a resync.

:class:`FirewallInputs` is the bookkeeping that turns endpoints, groups and remote members
into desired keys incrementally (pure; no IO): one endpoint change costs O(its groups),
group membership is kept with counts and an order-independent digest, so it does not
rescan a group's members either.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from l3hostd.firewall import compile as fwc
from l3hostd.firewall import elements as fwe
from l3hostd.firewall import nfnl, nft
from l3hostd.model import Endpoint, IPAddress, IPNetwork, SecurityGroup
from l3hostd.reconcile import Reconciler

log = logging.getLogger("l3hostd.firewall")

Member = IPAddress | IPNetwork

_NO_MEMBERS = fwe.Members()
_GROUP_CHAIN = re.compile(r"sg-(.+)-(in|out)")
_PROFILE_CHAIN = re.compile(r"prof-(.+)-(in|out)")
_LAYOUT_INET_SETS = frozenset({fwc.TAPS_SET, fwc.SRC_MAC_SET, fwc.SRC4_SET, fwc.SRC6_SET,
                               fwc.SRC4_NET_SET, fwc.SRC6_NET_SET})
_GROUP_SET_PREFIXES = ("g4-", "g6-", "g4n-", "g6n-")
_LAYOUT_INET_MAPS = frozenset({fwc.FROM_VM_MAP, fwc.TO_VM_MAP})
_LAYOUT_ARP_SETS = frozenset({fwc.ARP_TAPS_SET, fwc.ARP_SRC4_SET, fwc.ARP_SRC4_NET_SET})
#: A batch bigger than this is sent from a worker thread (the kernel applies it inside
#: ``send``; a bulk load must not hold the event loop that long).
_THREAD_BYTES = 256 * 1024


_ChainPart = tuple[str, str, dict[str, frozenset[str]]]  # key, nft script, chain -> refs
_Unit = tuple[str, "fwe.Members | fwe.InterfaceElements | None", "fwc.Profile | None"]


def _group_refs(rules: fwc.GroupRules) -> dict[str, frozenset[str]]:
    sets = {f"@{s}" for r in rules.remote for s in fwc.group_sets(r)}
    cin, cout = rules.chains
    return {cin: frozenset(sets), cout: frozenset({*sets, fwc.EGRESS_OK_CHAIN})}


def _profile_refs(p: fwc.Profile) -> dict[str, frozenset[str]]:
    pin, pout = p.chains
    return {
        pin: frozenset(fwc.group_chains(g)[0] for g in p.groups),
        pout: frozenset(fwc.group_chains(g)[1] for g in p.groups),
    }


class ElementWriter(Protocol):
    """Applies set-element operations as one transaction (NfnlSocket; tests: a fake)."""

    def send(self, ops: Sequence[nfnl.SetOp]) -> None: ...


def _spell(m: Member) -> str:
    if isinstance(m, IPv4Network | IPv6Network):
        return str(m.network_address) if m.prefixlen == m.max_prefixlen else str(m)
    return str(m)


class _MemberSet:
    """One group's members, counted by spelling, so that a member coming or going costs
    O(1) and the digest is kept up to date (no rescan of a 5,000-member group per
    change). With prefixes among the members, elements covered by another are dropped
    (interval sets refuse overlaps): then content and digest are recomputed on demand."""

    __slots__ = ("_cache", "count", "prefixes", "sums", "v4", "v6")

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.prefixes = 0
        self.v4: set[str] = set()
        self.v6: set[str] = set()
        self.sums = [0, 0]
        self._cache: fwe.Members | None = None

    def add(self, s: str) -> None:
        c = self.count.get(s, 0)
        self.count[s] = c + 1
        if c == 0:
            six = ":" in s
            (self.v6 if six else self.v4).add(s)
            self.sums[six] += fwe.element_hash(s)
            self.prefixes += "/" in s
            self._cache = None

    def remove(self, s: str) -> None:
        c = self.count.get(s, 0)
        if c <= 1:
            if c == 1:
                del self.count[s]
                six = ":" in s
                (self.v6 if six else self.v4).discard(s)
                self.sums[six] -= fwe.element_hash(s)
                self.prefixes -= "/" in s
                self._cache = None
            return
        self.count[s] = c - 1

    def members(self) -> fwe.Members:
        if self._cache is None:
            if self.prefixes:
                nets = [fwe.network(s) for s in self.count]
                self._cache = fwe.members_of(nets)
            else:
                self._cache = fwe.Members(frozenset(self.v4), frozenset(self.v6))
        return self._cache

    def digest(self) -> str:
        if self.prefixes:
            return self.members().digest()
        return fwe.members_digest(len(self.v4), self.sums[0], len(self.v6), self.sums[1])


class FirewallInputs:
    """Endpoints (those that may carry traffic), groups and remote members -> desired.

    Indexed so that one endpoint change costs O(its groups), never O(all endpoints):
    which endpoints own each TAP, use each profile, are active members of each group;
    which profiles use each group; which used groups reference each remote group."""

    def __init__(self, settings: fwc.FirewallSettings) -> None:
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = {}
        self.groups: dict[str, SecurityGroup] = {}
        self.remote: dict[str, frozenset[Member]] = {}
        self.profiles: dict[str, fwc.Profile] = {}  # pid -> profile in use
        self.group_rules: dict[str, fwc.GroupRules] = {}  # group name -> compiled (in use)
        self.elements: dict[str, fwe.InterfaceElements] = {}  # endpoint id -> its elements
        self.names: dict[str, str] = {}  # group ident -> group name
        self._base = hashlib.sha256(fwc.base_script(settings).encode()).hexdigest()[:16]
        self._el_digest: dict[str, str] = {}  # endpoint id -> elements digest
        self._profile_of: dict[str, str] = {}  # endpoint id -> pid
        self._owners: dict[str, set[str]] = {}  # TAP -> endpoint ids claiming it
        self._users: dict[str, set[str]] = {}  # pid -> endpoint ids
        self._group_users: dict[str, set[str]] = {}  # group name -> pids using it
        self._set_users: dict[str, set[str]] = {}  # remote group -> used groups referencing it
        self._members: dict[str, _MemberSet] = {}  # group name -> members
        self._active: set[str] = set()  # endpoints whose IPs count as group members
        self._profile_cache: dict[tuple[str, ...], fwc.Profile] = {}

    # ---- endpoints ------------------------------------------------------------------------

    def set_endpoint(self, ep: Endpoint | None, endpoint_id: str, active: bool) -> set[str]:
        """Returns the keys whose desired value may have changed."""
        old = self.endpoints.get(endpoint_id)
        if old is not None and old == ep:
            keys = {"if:" + old.interface}
            if (endpoint_id in self._active) == active:
                return keys
            # Only its TAP went up or down: its elements and profile stay as they are
            # (computed whatever the link state); what changes is its membership of its
            # groups' remote-group sets. Not recomputed from scratch: this is the path
            # from TAP up to the route being announced.
            return keys | self._membership(endpoint_id, old, active)
        keys = set()
        if old is not None:
            keys |= self._forget(endpoint_id, old)
        if ep is not None:
            keys |= self._learn(endpoint_id, ep, active)
        return keys

    def _learn(self, eid: str, ep: Endpoint, active: bool) -> set[str]:
        self.endpoints[eid] = ep
        keys = {"if:" + ep.interface}
        self._owners.setdefault(ep.interface, set()).add(eid)
        if active:
            keys |= self._membership(eid, ep, True)
        try:
            profile = self._profile(ep.security_groups)
            elements = fwc.endpoint_elements(ep, profile)
        except ValueError as exc:  # nft would not take it: no elements (TAP closed)
            log.warning("firewall: endpoint %s not enforceable, its TAP stays closed: %s",
                        eid, exc)
            return keys
        self.elements[eid] = elements
        self._el_digest[eid] = elements.digest()
        self._profile_of[eid] = profile.pid
        keys.add("prof:" + profile.pid)
        users = self._users.setdefault(profile.pid, set())
        if not users:
            self.profiles[profile.pid] = profile
            for g in profile.groups:
                keys |= self._use_group(g, profile.pid)
        users.add(eid)
        return keys

    def _membership(self, eid: str, ep: Endpoint, active: bool) -> set[str]:
        """An endpoint's IPs join (active) or leave its groups' member sets."""
        if active:
            self._active.add(eid)
        else:
            self._active.discard(eid)
        keys = set()
        for g in set(ep.security_groups):
            self._member_set(g, ep.ips, add=active)
            keys.add("set:" + self._name(g))
        return keys

    def _forget(self, eid: str, old: Endpoint) -> set[str]:
        del self.endpoints[eid]
        keys = {"if:" + old.interface}
        owners = self._owners.get(old.interface)
        if owners is not None:
            owners.discard(eid)
            if not owners:
                del self._owners[old.interface]
        if eid in self._active:
            keys |= self._membership(eid, old, False)
        self.elements.pop(eid, None)
        self._el_digest.pop(eid, None)
        pid = self._profile_of.pop(eid, None)
        if pid is not None:
            keys.add("prof:" + pid)
            users = self._users[pid]
            users.discard(eid)
            if not users:
                del self._users[pid]
                profile = self.profiles.pop(pid)
                for g in profile.groups:
                    keys |= self._unuse_group(g, pid)
        return keys

    def _profile(self, groups: Iterable[str]) -> fwc.Profile:
        """Compiled once per combination (thousands of endpoints share a few)."""
        names = tuple(sorted(set(groups)))
        profile = self._profile_cache.get(names)
        if profile is None:
            if len(self._profile_cache) > 4 * len(self.profiles) + 1024:
                self._profile_cache.clear()  # bounded: only the ones in use matter
            profile = self._profile_cache[names] = fwc.compile_profile(names)
        return profile

    def _member_set(self, group: str, ips: Iterable[Member], *, add: bool) -> None:
        ms = self._members.get(group)
        if ms is None:
            ms = self._members[group] = _MemberSet()
        for ip in ips:
            (ms.add if add else ms.remove)(_spell(ip))

    # ---- groups ---------------------------------------------------------------------------

    def _name(self, group: str) -> str:
        i = fwc.ident(group)
        self.names[i] = group
        return i

    def _use_group(self, group: str, pid: str) -> set[str]:
        users = self._group_users.setdefault(group, set())
        users.add(pid)
        keys = {"sg:" + self._name(group)}
        if len(users) == 1:
            rules = fwc.compile_group(group, self.groups.get(group))
            self.group_rules[group] = rules
            for r in rules.remote:
                keys |= self._reference(r, group)
        return keys

    def _unuse_group(self, group: str, pid: str) -> set[str]:
        users = self._group_users[group]
        users.discard(pid)
        keys = {"sg:" + self._name(group)}
        if not users:
            del self._group_users[group]
            rules = self.group_rules.pop(group)
            for r in rules.remote:
                keys |= self._unreference(r, group)
        return keys

    def _reference(self, remote: str, by: str) -> set[str]:
        self._set_users.setdefault(remote, set()).add(by)
        if remote not in self._members:
            self._members[remote] = _MemberSet()
        return {"set:" + self._name(remote)}

    def _unreference(self, remote: str, by: str) -> set[str]:
        users = self._set_users.get(remote)
        if users is not None:
            users.discard(by)
            if not users:
                del self._set_users[remote]
        return {"set:" + self._name(remote)}

    def set_groups(self, groups: Mapping[str, SecurityGroup]) -> set[str]:
        changed = {n for n in set(groups) | set(self.groups) if groups.get(n) != self.groups.get(n)}
        self.groups = dict(groups)
        keys: set[str] = set()
        for name in changed:
            old = self.group_rules.get(name)
            if old is None:
                continue  # not used by any profile: compiled when it is
            rules = fwc.compile_group(name, self.groups.get(name))
            self.group_rules[name] = rules
            keys.add("sg:" + self._name(name))
            for r in old.remote - rules.remote:
                keys |= self._unreference(r, name)
            for r in rules.remote - old.remote:
                keys |= self._reference(r, name)
        return keys

    def set_remote(self, remote: Mapping[str, frozenset[Member]]) -> set[str]:
        keys: set[str] = set()
        for g in set(remote) | set(self.remote):
            before = self.remote.get(g, frozenset())
            after = remote.get(g, frozenset())
            if before == after:
                continue
            self._member_set(g, before - after, add=False)
            self._member_set(g, after - before, add=True)
            keys.add("set:" + self._name(g))
        self.remote = dict(remote)
        return keys

    # ---- views for the reconciler -------------------------------------------------------------

    def owner(self, interface: str) -> str | None:
        """The one endpoint that owns a TAP (None: nobody, or contested -> closed)."""
        owners = self._owners.get(interface)
        if owners is None or len(owners) != 1:
            return None
        (eid,) = owners
        return eid if eid in self.elements else None

    def members(self, group: str) -> fwe.Members:
        ms = self._members.get(group)
        return ms.members() if ms is not None else fwe.Members()

    def member_ips(self, group: str) -> frozenset[Member]:
        ms = self._members.get(group)
        return frozenset(fwe.network(s) for s in ms.count) if ms is not None else frozenset()

    def group_by_ident(self, i: str) -> str | None:
        return self.names.get(i)

    def profile_of(self, endpoint_id: str) -> fwc.Profile | None:
        pid = self._profile_of.get(endpoint_id)
        return self.profiles.get(pid) if pid is not None else None

    def set_users(self, group: str) -> frozenset[str]:
        """The used groups whose rules reference ``group``'s sets."""
        return frozenset(self._set_users.get(group, ()))

    def desired(self, key: str) -> str | None:
        kind, _, name = key.partition(":")
        if kind == "base":
            return self._base
        if kind == "if":
            eid = self.owner(name)
            return self._el_digest[eid] if eid is not None else None
        if kind == "prof":
            profile = self.profiles.get(name)
            return profile.digest if profile is not None else None
        if kind == "sg":
            group = self.names.get(name)
            rules = self.group_rules.get(group) if group is not None else None
            return rules.digest if rules is not None else None
        if kind == "set":
            group = self.names.get(name)
            if group is None or group not in self._set_users:
                return None
            ms = self._members.get(group)
            return ms.digest() if ms is not None else fwe.Members().digest()
        return None


class FirewallReconciler(Reconciler[str, str]):
    name = "firewall"
    #: a full load (every TAP of the host) fits one pass
    max_batch = 100_000

    def __init__(self, inputs: FirewallInputs, elements: ElementWriter | None = None) -> None:
        super().__init__()
        self.inputs = inputs
        self.set_desired("base", inputs.desired("base"))
        self._lib: nft.LibNftables | None = None
        if not os.environ.get("NFT"):  # NFT=... (tests) forces the command line tool
            try:
                self._lib = nft.LibNftables()
            except (OSError, nft.NftError) as exc:
                log.info("libnftables not usable (%s): using the nft command", exc)
        self._writer = elements  # opened on first use (unit tests pass a fake)
        # What the kernel holds, as far as we know (read back by a resync, then kept up to
        # date by our own writes): the base of every element delta and of the GC.
        self._inst_if: dict[str, fwe.InterfaceElements] = {}
        self._inst_members: dict[str, fwe.Members] = {}  # group ident -> content
        self._inst_refs: dict[str, frozenset[str]] = {}  # group/profile chain -> refs
        self._garbage: set[str] = set()  # sg:/prof:/set: keys to delete once unreferenced
        self._replace_table = False  # the table is not in our layout: replace it whole
        self._errors: list[str] = []  # failures of the write in progress
        self.transactions = 0  # nft transactions committed
        self.element_batches = 0  # netlink element batches committed
        self.full_replacements = 0
        self.nft_error = ""  # the message of the last failed write, if it failed
        # a changed key is rewritten in place (chains flushed and refilled, elements
        # changed by delta), never deleted and re-added
        self.replace_in_place = True

    def refresh(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.set_desired(key, self.inputs.desired(key))

    def ready(self, endpoint_id: str) -> bool:
        """Are this endpoint's elements in the kernel and current, with its profile's and
        groups' chains and the skeleton?"""
        ep = self.inputs.endpoints.get(endpoint_id)
        if ep is None:
            return False
        key = "if:" + ep.interface
        want = self.desired.get(key)
        if want is None or self.observed.get(key) != want:
            return False
        if self.observed.get("base") != self.desired.get("base"):
            return False
        profile = self.inputs.profile_of(endpoint_id)
        if profile is None or not self._current("prof:" + profile.pid):
            return False
        return all(self._current("sg:" + fwc.ident(g)) for g in profile.groups)

    def _current(self, key: str) -> bool:
        want = self.desired.get(key)
        return want is not None and self.observed.get(key) == want

    # ---- reading the kernel -------------------------------------------------------------------

    async def _dump(self) -> dict[str, str]:
        state = await nft.read_table(self.inputs.settings.table)
        self._inst_if = {}
        self._inst_members = {}
        self._inst_refs = {}
        self._garbage = set()
        self._replace_table = False
        observed: dict[str, str] = {}
        if not state.exists and not state.arp.exists:
            return observed
        if not _in_layout(state):
            # an older layout or foreign objects: replaced as a whole by the first pass
            log.warning("firewall: table %s is not in the expected layout; replacing it "
                        "atomically", self.inputs.settings.table)
            self._replace_table = True
            return observed
        inet = state.inet
        chains: dict[tuple[str, str], dict[str, str | None]] = {}
        for chain, digest in inet.chains.items():
            if chain in fwc.FIXED_CHAINS:
                continue
            for kind, pattern in (("sg", _GROUP_CHAIN), ("prof", _PROFILE_CHAIN)):
                m = pattern.fullmatch(chain)
                if m is not None:
                    chains.setdefault((kind, m.group(1)), {})[m.group(2)] = digest
                    self._inst_refs[chain] = inet.refs.get(chain, frozenset())
                    break
        for (kind, name), sides in chains.items():
            din, dout = sides.get("in"), sides.get("out")
            # a half-present pair reads as a value nothing desires: rewritten or swept
            observed[f"{kind}:{name}"] = din if din is not None and din == dout else "partial"
        for iface, el in fwe.interfaces_from_table(inet.sets, inet.maps, state.arp.sets).items():
            self._inst_if[iface] = el
            observed["if:" + iface] = el.digest()
        idents = {n.split("-", 1)[1] for n in inet.sets if n.startswith(_GROUP_SET_PREFIXES)}
        for i in idents:
            names = fwc.sets_of_ident(i)
            if not all(n in inet.sets for n in names):
                # not something l3hostd leaves behind: start over, atomically
                log.warning("firewall: the sets of group %s are incomplete; replacing the "
                            "table atomically", i)
                self._inst_if, self._inst_members, self._inst_refs = {}, {}, {}
                self._replace_table = True
                return {}
            got = [inet.sets[n] for n in names]
            members = fwe.members_from_sets(got[0] | got[2], got[1] | got[3])
            self._inst_members[i] = members
            observed["set:" + i] = members.digest()
        return observed

    # ---- writing --------------------------------------------------------------------------------

    async def _write(
        self, deletes: Sequence[tuple[str, str]], adds: Sequence[tuple[str, str]]
    ) -> list[int]:
        result: dict[str, int] = {}
        self._errors = []
        for key, _ in deletes:
            if not key.startswith("if:"):
                # chains and sets go once nothing references them (see _collect_garbage)
                self._garbage.add(key)
                result[key] = 0
        if self._replace_table and adds:
            await self._replace(adds, result)
        else:
            # everything is taken from the inputs before the first await: what is
            # reported as written must be what the desired values were built from
            chains = self._chain_parts([k for k, _ in adds], result)
            units = self._element_units(
                [k for k, _ in deletes if k.startswith("if:")],
                [k for k, _ in adds if k.startswith(("if:", "set:"))],
            )
            await self._write_chains(chains, result)
            await self._write_elements(units, result)
        for key, err in result.items():
            if err == 0 and key in self.desired:
                self._garbage.discard(key)
        # the first failure of this write is the cause; later ones are often its effects
        self.nft_error = self._errors[0] if self._errors else ""
        await self._collect_garbage()
        return [result.get(k, errno.EIO) for k, _ in (*deletes, *adds)]

    async def _nft(self, script: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("nft transaction:\n%s", script[:4000])
        if self._lib is not None and len(script) < 4_000_000:
            await self._lib.run(script)
        else:
            await nft.apply(script, timeout=60)
        self.transactions += 1

    def _failed(self, text: str) -> None:
        self._errors.append(text[:500])

    def _chain_parts(self, keys: Sequence[str], result: dict[str, int]) -> list[_ChainPart]:
        """base, then group chains (and the sets they reference), then profile chains."""
        settings = self.inputs.settings
        parts: list[_ChainPart] = []
        order = {"base": 0, "sg": 1, "prof": 2}
        for key in sorted(keys, key=lambda k: order.get(k.partition(":")[0], 9)):
            kind, _, name = key.partition(":")
            if kind == "base":
                parts.append((key, fwc.base_script(settings), {}))
            elif kind == "sg":
                group = self.inputs.group_by_ident(name)
                rules = self.inputs.group_rules.get(group) if group is not None else None
                if rules is None:
                    result[key] = 0  # (not wanted: cannot happen for a desired key)
                    continue
                parts.append((key, fwc.group_script(rules, settings), _group_refs(rules)))
            elif kind == "prof":
                profile = self.inputs.profiles.get(name)
                if profile is None:
                    result[key] = 0
                    continue
                parts.append((key, fwc.profile_script(profile, settings), _profile_refs(profile)))
        return parts

    async def _write_chains(self, parts: list[_ChainPart], result: dict[str, int]) -> None:
        """One nft transaction; on failure each part on its own."""
        if not parts:
            return
        try:
            await self._nft("".join(p[1] for p in parts))
        except nft.NftError as exc:
            log.error("firewall: nft transaction of %d chain changes failed: %s",
                      len(parts), exc)
            self._failed(str(exc))
            if len(parts) == 1:
                result[parts[0][0]] = errno.EIO
                return
            for key, script, refs in parts:  # isolate the culprit
                try:
                    await self._nft(script)
                except nft.NftError as one:
                    log.error("firewall: %s: %s", key, one)
                    self._failed(f"{key}: {one}")
                    result[key] = errno.EIO
                else:
                    result[key] = 0
                    self._inst_refs.update(refs)
            return
        for key, _script, refs in parts:
            result[key] = 0
            self._inst_refs.update(refs)

    def _element_units(self, gone: Sequence[str], keys: Sequence[str]) -> list[_Unit]:
        """(key, what it should hold afterwards, profile whose chains it needs)."""
        units: list[_Unit] = [(key, None, None) for key in gone]
        for key in sorted(keys, key=lambda k: not k.startswith("set:")):  # sets first
            kind, _, name = key.partition(":")
            if kind == "set":
                group = self.inputs.group_by_ident(name)
                if group is not None:
                    units.append((key, self.inputs.members(group), None))
            else:
                eid = self.inputs.owner(name)
                if eid is not None:
                    units.append((key, self.inputs.elements[eid], self.inputs.profile_of(eid)))
        return units

    async def _write_elements(self, units: list[_Unit], result: dict[str, int]) -> None:
        """Element changes of TAPs that go, remote-group sets and TAPs that come or change:
        one netlink batch (on failure: one per key)."""
        table = self.inputs.settings.table
        todo: list[tuple[str, list[nfnl.SetOp], fwe.Members | fwe.InterfaceElements | None]] = []
        for key, value, profile in units:
            kind, _, name = key.partition(":")
            if kind == "set":
                assert isinstance(value, fwe.Members)
                if not self._set_exists(name, result):
                    result[key] = errno.ENOENT
                    continue
                # a set we have not read back nor written is one our group script just
                # created: empty (the next resync would find anything else)
                old = self._inst_members.get(name, _NO_MEMBERS)
                ops = fwe.member_ops(fwc.sets_of_ident(name), old, value, table)
            else:
                assert value is None or isinstance(value, fwe.InterfaceElements)
                if value is not None and (profile is None or not self._chains_in(profile, result)):
                    # never jump to chains that are not there: fail closed, retry later
                    result[key] = errno.ENOENT
                    self._failed(f"{key}: its profile's chains are not installed")
                    continue
                ops = fwe.interface_ops(name, self._inst_if.get(name), value, table)
            if ops:
                todo.append((key, ops, value))
            else:
                result[key] = 0
                self._installed(key, value)
        if not todo:
            return
        try:
            await self._send(nfnl.coalesce(op for u in todo for op in u[1]))
        except OSError as exc:
            self._element_failure(exc, len(todo))
            if len(todo) == 1:
                result[todo[0][0]] = exc.errno or errno.EIO
                return
            for key, ops, value in todo:  # isolate the culprit
                try:
                    await self._send(ops)
                except OSError as one:
                    self._element_failure(one, 1, key)
                    result[key] = one.errno or errno.EIO
                else:
                    result[key] = 0
                    self._installed(key, value)
            return
        for key, _ops, value in todo:
            result[key] = 0
            self._installed(key, value)

    def _chains_in(self, profile: fwc.Profile, result: Mapping[str, int]) -> bool:
        keys = ["prof:" + profile.pid, *("sg:" + fwc.ident(g) for g in profile.groups)]
        for k in keys:
            err = result.get(k)
            if err is None:
                if self.observed.get(k) is None:
                    return False
            elif err != 0:
                return False
        return True

    def _set_exists(self, ident: str, result: Mapping[str, int]) -> bool:
        """The set was read back or created by a group chain script that went in."""
        if ident in self._inst_members:
            return True
        group = self.inputs.group_by_ident(ident)
        for user in self.inputs.set_users(group or ""):
            k = "sg:" + fwc.ident(user)
            if result.get(k) == 0 or (result.get(k) is None and self.observed.get(k)):
                return True
        return False

    def _installed(
        self, key: str, value: fwe.Members | fwe.InterfaceElements | None
    ) -> None:
        kind, _, name = key.partition(":")
        if kind == "if":
            if isinstance(value, fwe.InterfaceElements):
                self._inst_if[name] = value
            else:
                self._inst_if.pop(name, None)
        elif kind == "set" and isinstance(value, fwe.Members):
            self._inst_members[name] = value

    async def _send(self, ops: list[nfnl.SetOp]) -> None:
        writer = self._writer
        if writer is None:
            from l3hostd.firewall.nfsock import NfnlSocket  # IO: only when really used

            writer = self._writer = NfnlSocket()
        size = sum(len(op.elements) for op in ops) * 64
        if size > _THREAD_BYTES:
            await asyncio.to_thread(writer.send, ops)
        else:
            writer.send(ops)
        self.element_batches += 1

    def _element_failure(self, exc: OSError, n: int, key: str = "") -> None:
        text = f"{key}: {exc}" if key else str(exc)
        log.error("firewall: element batch of %d changes failed: %s", n, text)
        self._failed(text)
        if exc.errno in (errno.ENOENT, errno.EEXIST, errno.ENOBUFS, errno.ETIMEDOUT):
            self.queue_resync()  # the kernel is not what we think: read it again

    # ---- whole-table replacement ------------------------------------------------------------

    async def _replace(self, adds: Sequence[tuple[str, str]], result: dict[str, int]) -> None:
        """Replace both tables with everything desired, in one transaction."""
        inputs = self.inputs
        owned = {e for ep in inputs.endpoints.values() if (e := inputs.owner(ep.interface))}
        eps = [inputs.endpoints[e] for e in sorted(owned)]
        used = {g for p in inputs.profiles.values() for g in p.groups}
        remote = {r for g in used for r in inputs.group_rules[g].remote}
        # what the kernel will hold: everything desired at this moment
        inst_if = {ep.interface: inputs.elements[ep.id] for ep in eps}
        inst_members = {fwc.ident(g): inputs.members(g) for g in remote}
        inst_refs: dict[str, frozenset[str]] = {}
        for g in used:
            inst_refs.update(_group_refs(inputs.group_rules[g]))
        for p in inputs.profiles.values():
            inst_refs.update(_profile_refs(p))
        script = fwc.full_script(
            eps, inputs.groups, {g: inputs.member_ips(g) for g in remote}, inputs.settings
        )
        try:
            await self._nft(script)
        except nft.NftError as exc:
            log.error("firewall: replacing the table failed: %s", exc)
            self._failed(str(exc))
            for key, _ in adds:
                result[key] = errno.EIO
            return
        self.full_replacements += 1
        self._replace_table = False
        self._garbage = set()
        self._inst_if, self._inst_members, self._inst_refs = inst_if, inst_members, inst_refs
        for key, _ in adds:
            result[key] = 0
        # keys not in this batch are written (as no-op deltas) by the next passes

    # ---- garbage collection -----------------------------------------------------------------

    def _objects(self, key: str) -> set[str]:
        kind, _, name = key.partition(":")
        if kind == "sg":
            return set(fwc.group_chains_of_ident(name))
        if kind == "prof":
            return set(fwc.profile_chains(name))
        if kind == "set":
            return {f"@{s}" for s in fwc.sets_of_ident(name)}
        return set()

    async def _collect_garbage(self) -> None:
        """Delete the chains and sets that are not wanted and that nothing in the kernel
        references any more (a profile goes after its last TAP's map entries; a group
        after the last profile jumping to it; a group's sets after its last user)."""
        dead = {k for k in self._garbage if self.desired.get(k) is None}
        self._garbage = dead
        if not dead:
            return
        live: set[str] = set()
        for el in self._inst_if.values():
            live |= el.chains()
        objects = {k: self._objects(k) for k in dead}
        dead_chains = {c for k in dead for c in objects[k]}
        for chain, refs in self._inst_refs.items():
            if chain not in dead_chains:
                live |= refs
        while True:  # a dead object that stays (still referenced) keeps what it references
            keep = {k for k in dead if objects[k] & live}
            grown = {r for k in keep for c in objects[k] for r in self._inst_refs.get(c, ())}
            if grown <= live:
                break
            live |= grown
        doomed = sorted(k for k in dead if not objects[k] & live)
        if not doomed:
            return
        chains = [c for k in doomed if not k.startswith("set:") for c in sorted(objects[k])]
        sets = [k[4:] for k in doomed if k.startswith("set:")]
        try:
            await self._nft(fwc.gc_script(chains, sets, self.inputs.settings))
        except nft.NftError as exc:
            # something references them that we do not know of: read the kernel again
            # (the resync finds them, unwanted, and the sweep retries) rather than retry
            # a failing transaction after every write
            log.warning("firewall: removing %d unused chains/sets failed; resyncing: %s",
                        len(doomed), exc)
            self.stats.last_error = f"gc: {exc}"[:500]
            self._garbage = set()
            self.queue_resync()
            return
        for key in doomed:
            self._garbage.discard(key)
            for c in objects[key]:
                self._inst_refs.pop(c, None)
            if key.startswith("set:"):
                self._inst_members.pop(key[4:], None)

    def close(self) -> None:
        if self._lib is not None:
            self._lib.close()
            self._lib = None
        writer, self._writer = self._writer, None
        close = getattr(writer, "close", None)
        if callable(close):
            close()


def _in_layout(state: nft.TableState) -> bool:
    """Does the table hold only objects of the current layout (and all its fixed ones)?"""
    inet, arp = state.inet, state.arp
    if not (inet.exists and arp.exists):
        return False
    if not set(inet.sets) >= _LAYOUT_INET_SETS or set(inet.maps) != _LAYOUT_INET_MAPS:
        return False
    if any(s not in _LAYOUT_INET_SETS and not s.startswith(_GROUP_SET_PREFIXES)
           for s in inet.sets):
        return False
    for chain in inet.chains:
        if chain not in fwc.FIXED_CHAINS and not (
            _GROUP_CHAIN.fullmatch(chain) or _PROFILE_CHAIN.fullmatch(chain)
        ):
            return False
    return (
        set(arp.sets) == _LAYOUT_ARP_SETS
        and not arp.maps
        and set(arp.chains) <= {fwc.ARP_INPUT_CHAIN}
    )
