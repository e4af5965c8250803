"""Oracle for the BGP input fuzzer: an Established session, a reference reading of the
bytes, and a shadow RIB.

How it works
------------
:class:`Harness` owns one real :class:`~l3hostd.bgp.fsm.Session` (with the real
:class:`~l3hostd.bgp.codec.Codec`) on a virtual clock, one real
:class:`~l3hostd.bgp.rib.AdjRibIn`, and a *shadow* of that RIB: plain dicts of what was
accepted minus what was withdrawn, kept by rules written out here independently of rib.py.
The glue between session events and the RIB mirrors ``manager.py`` (apply UPDATEs, End-of-RIB
sweeps stale paths once every family sent one, a graceful drop marks paths stale, any other
drop removes them, the restart timer sweeps).

:meth:`Harness.feed` gives an input to the session (in one ``receive_data`` call or cut at
the input's offsets) and then judges every action against an independent reading of the
same bytes (:mod:`bench.fuzz_ref`, written from RFC 4271 §4/§6, RFC 7606, RFC 4760,
RFC 4724 and RFC 7911, not from our codec):

* no exception escapes ``receive_data``/``handle_timer``, and no internal error is
  swallowed on the way (``last_error`` is watched for the FSM's catch-all and for codec
  exceptions other than BgpError);
* frame by frame, in order: a header error ends the session with the one NOTIFICATION
  §6.1 prescribes (code, subcode, data); an OPEN in Established with FSM Error 5/3
  (RFC 6608); a received NOTIFICATION ends it without one being sent; a KEEPALIVE changes
  nothing; a ROUTE-REFRESH for a negotiated family with subtype 0 is reported, any other is
  ignored; an UPDATE is accepted, treated as withdraw, or resets the session only where the
  reference says a reset is allowed, with an UPDATE Message Error subcode from the allowed
  set; an UPDATE the reference says must reset (length fields, NLRI that cannot be parsed,
  MP_REACH/MP_UNREACH twice or broken) must not be accepted;
* an accepted UPDATE's prefixes are exactly the reference's; a treat-as-withdraw UPDATE
  announces nothing and withdraws every prefix the reference finds in it; an UPDATE that
  RFC 7606 says to treat as withdraw (missing or malformed ORIGIN, AS_PATH, NEXT_HOP,
  LOCAL_PREF, MED, COMMUNITIES, ...) is never accepted with routes; treat-as-withdraw needs
  a reason the reference can see; an unmutated generated UPDATE decodes to exactly what the
  generator built (next hops and attribute values included);
* a session that goes down emits exactly: one Send holding exactly one NOTIFICATION (none
  when the peer sent one), a Disconnect, a SessionDown naming that NOTIFICATION, and nothing
  else; timers only send KEEPALIVEs, or expire Hold exactly when no message came for the
  negotiated hold time;
* in OpenSent (:meth:`Harness.feed_open`): an OPEN the reference (:func:`read_open`) says
  must be refused (version, AS incl. RFC 7607's AS 0, hold time 1-2, identifier, optional
  parameter lengths and types) gets OPEN Message Error with one of the allowed subcodes
  (Unsupported Version carrying our version), any other OPEN leads to OpenConfirm with
  exactly what both OPENs agree on (families, 4-octet AS, hold time, ADD-PATH, GR, route
  refresh); other messages get FSM Error 5/1;
* after every message the RIB holds, for the peer and for its stale alias, exactly the
  shadow's paths, its path counter matches, and the selection deltas it handed out
  (applied to a mirror, as the learned-route reconciler does, each naming the old selection
  the mirror must have) add up to its current selection.

Every problem becomes one line in :attr:`Verdict.failures`; the outcome of each frame is
counted in :attr:`Verdict.outcomes` (accepted / treat-as-withdraw / End-of-RIB /
NOTIFICATION by code, ...).
"""

from __future__ import annotations

import itertools
import random
import struct
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.fuzz_gen import (
    ASN,
    LOCAL_ID,
    OWN_ADDRESS,
    PEER_ID,
    Expected,
    Input,
    Profile,
)
from bench.fuzz_ref import Frames, PathKey, RefUpdate, read_open, ref_frames, ref_update
from l3hostd.bgp import framing
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.fsm import (
    Action,
    Connect,
    Disconnect,
    RouteRefreshReceived,
    Send,
    Session,
    SessionConfig,
    SessionDown,
    State,
    UpdateReceived,
)
from l3hostd.bgp.messages import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    Capabilities,
    Family,
    GracefulRestart,
    Notification,
    Open,
    PathAttributes,
    Update,
)
from l3hostd.bgp.rib import (
    AdjRibIn,
    ImportPolicy,
    SelectionDelta,
    key_prefix,
    path_attrs,
    path_id,
    path_nh,
    path_peer,
)
from l3hostd.model import IPAddress, IPNetwork

PEER = "fuzz"
RESTART_TIME = 120
STEP = 1.0  # virtual seconds between two inputs

PathValue = tuple[IPAddress, PathAttributes]


# ---- the shadow RIB -------------------------------------------------------------------------


@dataclass(slots=True)
class ShadowRib:
    """What was accepted minus what was withdrawn, by the rules of the module docstring."""

    fresh: dict[PathKey, PathValue] = field(default_factory=dict)
    stale: Counter[tuple[IPNetwork, int, IPAddress, PathAttributes]] = field(
        default_factory=Counter
    )

    def apply(self, update: Update) -> None:
        for key in update.withdrawn:
            self.fresh.pop(key, None)
        for route in update.all_announced():
            key = (route.prefix, route.path_id)
            if route.attributes.originator_id == LOCAL_ID or route.next_hop == OWN_ADDRESS:
                self.fresh.pop(key, None)  # our own route reflected back: refused
            else:
                self.fresh[key] = (route.next_hop, route.attributes)

    def mark_stale(self) -> None:
        self.stale.update((p, pid, nh, a) for (p, pid), (nh, a) in self.fresh.items())
        self.fresh.clear()


def rib_content(
    rib: AdjRibIn, index: int | None
) -> Counter[tuple[IPNetwork, int, IPAddress, PathAttributes]]:
    out: Counter[tuple[IPNetwork, int, IPAddress, PathAttributes]] = Counter()
    if index is None:
        return out
    for key, have in rib.paths.items():
        for p in (have,) if isinstance(have, int) else have:
            if path_peer(p) == index:
                out[(key_prefix(key), path_id(p), rib.next_hops[path_nh(p)],
                     rib.attributes[path_attrs(p)])] += 1  # fmt: skip
    return out


# ---- the harness -------------------------------------------------------------------------------


@dataclass(slots=True)
class Verdict:
    failures: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)


def peer_open(profile: Profile) -> Open:
    fams = tuple(sorted(profile.families))
    return Open(
        ASN,
        90,
        PEER_ID,
        Capabilities(
            families=profile.families,
            asn4=ASN if profile.asn4 else None,
            route_refresh=True,
            graceful_restart=GracefulRestart(RESTART_TIME, False, tuple((f, True) for f in fams))
            if profile.graceful_restart
            else None,
            add_path=tuple((f, 2) for f in fams) if profile.add_path else (),
        ),
    )


def _describe(action: Action) -> str:
    if isinstance(action, Send):
        return f"Send({action.data[:40].hex()}{'...' if len(action.data) > 40 else ''})"
    if isinstance(action, UpdateReceived):
        u = action.update
        return (f"UpdateReceived({len(u.all_announced())} announced, {len(u.withdrawn)} withdrawn, "
                f"eor={u.end_of_rib}, taw={u.treat_as_withdraw!r})")  # fmt: skip
    return repr(action)


class Harness:
    """One Established session with the fuzzing peer, its RIB and the shadow RIB."""

    def __init__(self, profile: Profile, seed: int = 0) -> None:
        self.profile = profile
        self.config = SessionConfig(
            local_asn=ASN,
            peer_asn=ASN,
            router_id=LOCAL_ID,
            families=frozenset({IPV4_UNICAST, IPV6_UNICAST}),
            add_path_receive=True,
            graceful_restart=True,
            jitter=0.25,
        )
        self.session = Session(self.config, Codec(ASN, ASN), random.Random(seed))
        self.open_message = Codec(ASN, ASN).encode_open(peer_open(profile))
        self.rib = AdjRibIn(policy=ImportPolicy(
            allow_default=True, router_id=LOCAL_ID, own_addresses=frozenset({OWN_ADDRESS})
        ))  # fmt: skip
        self.rib.add_peer(PEER, max_prefixes=10**9)
        self.shadow = ShadowRib()
        self.selected: dict[int, int] = {}  # the selection as told by the deltas (a FIB)
        self.delta_errors: list[str] = []
        self.now = 1000.0
        self.leftover = b""  # bytes of an incomplete message, per the reference framer
        self.last_rx = self.now
        self.eor_received: set[Family] = set()
        self.stale_deadline: float | None = None
        self.hold_time = 0
        self.messages = 0
        self.session.start(self.now)

    # ---- session life ------------------------------------------------------------------

    @property
    def open_body(self) -> bytes:
        return self.open_message[19:]

    def open_sent(self, verdict: Verdict) -> bool:
        """Drive the session from Idle or Active to OpenSent (our OPEN sent), checking each
        step; False (and a failure) if it does not get there."""
        s = self.session
        fail = verdict.failures.append
        if s.state not in (State.IDLE, State.ACTIVE):
            fail(f"open_sent: state {s.state}, expected Idle or Active")
            return False
        deadline = s.next_deadline()
        if deadline is None:
            fail(f"open_sent: {s.state} with no timer (no automatic restart)")
            return False
        self.now = max(self.now, deadline)
        self._timers(verdict)
        actions = s.take_actions()
        if s.state is not State.CONNECT or not any(isinstance(a, Connect) for a in actions):
            fail(f"open_sent: timer expiry gave {s.state} {[_describe(a) for a in actions]}")
            return False
        s.connection_made(self.now)
        actions = s.take_actions()
        sent = [a for a in actions if isinstance(a, Send)]
        if s.state is not State.OPENSENT or len(sent) != 1 or sent[0].data[18] != 1:
            fail(f"open_sent: connection_made gave {s.state} {[_describe(a) for a in actions]}")
            return False
        return True

    def establish(self, verdict: Verdict) -> None:
        """Drive the session to Established with the profile's OPEN, checking each step."""
        s = self.session
        if s.state is State.ESTABLISHED or not self.open_sent(verdict):
            return
        fail = verdict.failures.append
        s.receive_data(self.open_message + framing.KEEPALIVE, self.now)
        actions = s.take_actions()
        kinds = [type(a).__name__ for a in actions]
        if s.state is not State.ESTABLISHED or kinds != ["Send", "Established"]:
            fail(f"establish: OPEN + KEEPALIVE gave {s.state} {kinds}")
            return
        neg = s.negotiated
        assert neg is not None
        if (
            neg.families != self.profile.families
            or (
                neg.add_path_receive
                != (self.profile.families if self.profile.add_path else frozenset())
            )
            or neg.asn4 != self.profile.asn4
        ):
            fail(f"establish: negotiated {neg}, profile {self.profile}")
        self.hold_time = neg.hold_time
        self.last_rx = self.now
        self.leftover = b""
        self.eor_received = set()
        if self.rib.has_stale(PEER) and neg.peer_graceful_restart is None:
            self._delta(self.rib.sweep_stale(PEER))  # RFC 4724 §4.2, as manager.py does
            self.shadow.stale.clear()
            self.stale_deadline = None
        self._check_rib(verdict, "after establish")

    def feed_open(self, item: Input, verdict: Verdict) -> None:
        """Give ``item`` to a session in OpenSent (our OPEN out, the peer's awaited) and
        judge it: a header error or a refused OPEN sends the one NOTIFICATION that fits
        (RFC 4271 §6.1, §6.2, RFC 6608 for other messages) and closes; an accepted OPEN
        leads to OpenConfirm with exactly what both OPENs agree on. The connection is then
        dropped, so the next input starts a fresh session."""
        s = self.session
        fail = verdict.failures.append
        if s.state is State.ESTABLISHED:
            s.connection_lost(self.now)
            for action in s.take_actions():
                if isinstance(action, SessionDown):
                    self._down(action)
            self._check_rib(verdict, "after connection lost")
        if not self.open_sent(verdict):
            return
        ref = ref_frames(item.data)
        actions: list[Action] = []
        bounds = [0, *item.cuts, len(item.data)]
        for a, b in itertools.pairwise(bounds):
            s.counters.last_error = ""
            try:
                s.receive_data(item.data[a:b], self.now)
            except BaseException as exc:
                fail(f"receive_data raised {exc!r} in OpenSent")
                return
            if s.counters.last_error.startswith("internal error"):
                fail(f"swallowed exception in OpenSent: {s.counters.last_error}")
            actions.extend(s.take_actions())
        outcome = self._judge_open(verdict, ref, actions)
        verdict.outcomes[f"OpenSent: {outcome}"] += 1
        if s.state in (State.OPENSENT, State.OPENCONFIRM):
            s.connection_lost(self.now)
            rest = s.take_actions()
            if rest:
                fail(f"connection lost in {s.state}: {[_describe(x) for x in rest]}")
        self.now += STEP

    def _judge_open(self, verdict: Verdict, ref: Frames, actions: list[Action]) -> str:
        fail = verdict.failures.append
        s = self.session
        teardown = self._sent_notification(actions)
        if ref.frames:
            kind, body, whole = ref.frames[0]
        elif ref.header_error is not None:
            allowed = {Notification(c, sub, d) for c, sub, d in ref.header_error}
            kinds = [type(a) for a in actions]
            if teardown not in allowed or kinds != [Send, Disconnect]:
                fail(f"OpenSent header error: expected one of {sorted(map(str, allowed))}, "
                     f"got {[_describe(a) for a in actions]}")  # fmt: skip
            return f"sent {teardown.code}/{teardown.subcode}" if teardown else "?"
        else:
            if actions or s.state is not State.OPENSENT:
                fail(f"OpenSent, incomplete message: {s.state} {[_describe(a) for a in actions]}")
            return "incomplete"
        if kind == 3:
            if [type(a) for a in actions] != [Disconnect] or s.state is not State.IDLE:
                fail(f"OpenSent NOTIFICATION: {s.state} {[_describe(a) for a in actions]}")
            return "notification received"
        if kind != 1:
            if teardown != Notification(5, 1) or [type(a) for a in actions] != [Send, Disconnect]:
                fail(f"OpenSent message type {kind}: {[_describe(a) for a in actions]}")
            return "sent 5/1"
        ref_open = read_open(body)
        hexed = whole.hex()
        if teardown is not None:
            if [type(a) for a in actions] != [Send, Disconnect] or s.state is not State.IDLE:
                fail(f"OPEN refused: {s.state} {[_describe(a) for a in actions]} {hexed}")
            allowed = set(ref_open.must) | ref_open.may if ref_open.must else ref_open.may
            if teardown.code != 2 or teardown.subcode not in allowed:
                fail(f"OPEN refused with {teardown} ({s.counters.last_error}); allowed 2/"
                     f"{sorted(allowed)} ({ref_open.must}): {hexed}")  # fmt: skip
            if teardown.code == 2 and teardown.subcode == 1 and teardown.data != b"\x00\x04":
                fail(f"Unsupported Version Number data {teardown.data.hex()}, expected 0004")
            return f"sent {teardown.code}/{teardown.subcode}"
        if ref_open.must:
            fail(f"OPEN accepted though it must be refused ({ref_open.must}): {hexed}")
        kinds = [type(a) for a in actions]
        if (
            s.state is not State.OPENCONFIRM
            or kinds != [Send]
            or (
                actions and actions[0].data != framing.KEEPALIVE  # type: ignore[union-attr]
            )
        ):
            fail(f"OPEN accepted: {s.state} {[_describe(a) for a in actions]} {hexed}")
            return "accepted?"
        neg = s.negotiated
        if ref_open.exact and neg is not None:
            want = (
                self.config.families & ref_open.families,
                ref_open.asn4 is not None,
                min(self.config.hold_time, ref_open.hold),
                frozenset(f for f in self.config.families & ref_open.families
                          if ref_open.add_path.get(f, 0) & 2),
                ref_open.graceful_restart,
                ref_open.route_refresh,
            )  # fmt: skip
            got = (
                neg.families,
                neg.asn4,
                neg.hold_time,
                neg.add_path_receive,
                neg.peer_graceful_restart is not None,
                neg.route_refresh,
            )
            if got != want:
                fail(f"OPEN negotiated {got}, the OPENs say {want}: {hexed}")
        return "accepted"

    def _delta(self, delta: SelectionDelta) -> None:
        """What the learned-route reconciler does with a delta: keep the FIB in step. The
        old selection a delta names must be the one the FIB has."""
        for key, (old, new) in delta.items():
            if self.selected.get(key) != old:
                self.delta_errors.append(
                    f"delta for {key_prefix(key)}: old {old}, the FIB has {self.selected.get(key)}"
                )
            if new is None:
                self.selected.pop(key, None)
            else:
                self.selected[key] = new

    def _down(self, event: SessionDown) -> None:
        """manager.py's _down: graceful -> stale, else the paths go."""
        if event.graceful and self.profile.graceful_restart:
            self.rib.mark_stale(PEER)
            self.shadow.mark_stale()
            self.stale_deadline = self.now + RESTART_TIME
        else:
            self._delta(self.rib.peer_down(PEER))
            self.shadow.fresh.clear()
        self.leftover = b""

    def _apply_update(self, update: Update) -> None:
        """manager.py's _update."""
        if update.end_of_rib is not None:
            self.eor_received.add(update.end_of_rib)
            if self.profile.families <= self.eor_received:
                self._delta(self.rib.sweep_stale(PEER))
                self.shadow.stale.clear()
                self.stale_deadline = None
            return
        self._delta(self.rib.apply_update(PEER, update))
        self.shadow.apply(update)

    def _timers(self, verdict: Verdict) -> None:
        s = self.session
        if self.stale_deadline is not None and self.now >= self.stale_deadline:
            self._delta(self.rib.sweep_stale(PEER))  # manager.py's _stale_timeout
            self.shadow.stale.clear()
            self.stale_deadline = None
        was = s.state
        try:
            s.handle_timer(self.now)
        except Exception as exc:
            verdict.failures.append(f"handle_timer raised {exc!r}")
            return
        if was is not State.ESTABLISHED:
            return
        actions = s.take_actions()
        if s.state is State.ESTABLISHED:
            for a in actions:
                if not (isinstance(a, Send) and a.data == framing.KEEPALIVE):
                    verdict.failures.append(f"timer in Established: {_describe(a)}")
            if self.hold_time and self.now - self.last_rx > self.hold_time + STEP:
                verdict.failures.append(
                    f"hold timer did not expire: {self.now - self.last_rx:.0f}s > {self.hold_time}s"
                )
            return
        # Hold Timer Expired (RFC 4271 §6.5), and only when it is due
        if self.now - self.last_rx < self.hold_time:
            verdict.failures.append(
                f"session dropped by a timer after {self.now - self.last_rx:.0f}s of "
                f"{self.hold_time}s hold: {[_describe(a) for a in actions]}"
            )
        actions = [a for a in actions if not (isinstance(a, Send) and a.data == framing.KEEPALIVE)]
        self._check_drop(verdict, actions, Notification(4, 0), None, "hold timer")
        verdict.outcomes["hold timer expired"] += 1

    # ---- feeding -------------------------------------------------------------------------

    def feed(self, item: Input, verdict: Verdict, lose_connection: bool = False) -> None:
        """Give ``item`` to the Established session and judge what happens (an input
        meant for OpenSent goes to :meth:`feed_open`)."""
        if item.phase == "open":
            self.feed_open(item, verdict)
            return
        self.establish(verdict)
        if self.session.state is not State.ESTABLISHED:
            return
        s = self.session
        ref = ref_frames(self.leftover + item.data)
        actions: list[Action] = []
        bounds = [0, *item.cuts, len(item.data)]
        for a, b in itertools.pairwise(bounds):
            s.counters.last_error = ""
            try:
                s.receive_data(item.data[a:b], self.now)
            except BaseException as exc:  # the contract is "never raises"
                verdict.failures.append(f"receive_data raised {exc!r}")
                return
            error = s.counters.last_error
            if error.startswith("internal error") or "not understood" in error:
                verdict.failures.append(f"swallowed exception: {error}")
            actions.extend(s.take_actions())
        self._judge(verdict, item, ref, actions)
        if s.state is State.ESTABLISHED:
            self.leftover = ref.rest
            if lose_connection and self.leftover:
                # TCP drops mid-message: RFC 4724 keeps the routes as stale when both speak GR
                s.connection_lost(self.now)
                actions = s.take_actions()
                kinds = [type(a).__name__ for a in actions]
                downs = [a for a in actions if isinstance(a, SessionDown)]
                if kinds != ["SessionDown"] or downs[0].graceful != self.profile.graceful_restart:
                    verdict.failures.append(
                        f"connection_lost gave {[_describe(a) for a in actions]}"
                    )
                if downs:
                    self._down(downs[0])
                self._check_rib(verdict, "after connection lost")
                verdict.outcomes["connection lost"] += 1
        self.now += STEP
        self._timers(verdict)

    def _judge(self, verdict: Verdict, item: Input, ref: Frames, actions: list[Action]) -> None:
        fail = verdict.failures.append
        queue = list(actions)

        def take() -> Action | None:
            return queue.pop(0) if queue else None

        for kind, body, whole in ref.frames:
            self.messages += 1
            if kind == 4:  # KEEPALIVE
                self.last_rx = self.now
                verdict.outcomes["keepalive"] += 1
                continue
            if kind == 5:  # ROUTE-REFRESH (RFC 2918; 7313 subtypes not negotiated: ignored)
                self.last_rx = self.now
                afi, subtype, safi = struct.unpack("!HBB", body)
                if subtype == 0 and (afi, safi) in self.profile.families:
                    a = take()
                    if not isinstance(a, RouteRefreshReceived) or a.family != (afi, safi):
                        fail(f"ROUTE-REFRESH {afi}/{safi}: expected RouteRefreshReceived, got "
                             f"{_describe(a) if a else None}")  # fmt: skip
                        return
                    verdict.outcomes["route-refresh"] += 1
                else:
                    verdict.outcomes["route-refresh ignored"] += 1
                continue
            if kind == 3:  # NOTIFICATION received
                received = Notification(body[0], body[1], body[2:])
                self._check_drop(verdict, queue, None, received, "NOTIFICATION received")
                verdict.outcomes["notification received"] += 1
                return
            if kind == 1:  # OPEN in Established: RFC 6608 FSM Error 5/3
                self._check_drop(verdict, queue, Notification(5, 3), None, "OPEN in Established")
                verdict.outcomes["sent 5/3 (OPEN)"] += 1
                return
            # UPDATE
            self.last_rx = self.now
            if not self._judge_update(verdict, body, whole, item.expected.get(whole), queue):
                return
        if ref.header_error is not None:
            allowed = {Notification(c, s, d) for c, s, d in ref.header_error}
            sent = self._sent_notification(queue)
            if sent is None or sent not in allowed:
                fail(f"header error: expected one of {sorted(map(str, allowed))}, "
                     f"actions {[_describe(a) for a in queue]}")  # fmt: skip
                return
            self._check_drop(verdict, queue, sent, None, "header error")
            verdict.outcomes[f"sent {sent.code}/{sent.subcode} (header)"] += 1
            return
        if queue:
            fail(f"unexpected actions: {[_describe(a) for a in queue]}")
        if self.session.state is not State.ESTABLISHED:
            fail(f"session left Established ({self.session.state}) without a reason in the input")
        if ref.rest:
            verdict.outcomes["incomplete message pending"] += 1

    @staticmethod
    def _sent_notification(queue: list[Action]) -> Notification | None:
        if not queue or not isinstance(queue[0], Send):
            return None
        data = queue[0].data
        if len(data) < 21 or data[18] != 3:
            return None
        return Notification(data[19], data[20], data[21:])

    def _check_drop(
        self,
        verdict: Verdict,
        queue: list[Action],
        sent: Notification | None,
        received: Notification | None,
        why: str,
    ) -> None:
        """The rest of the actions are exactly one teardown."""
        fail = verdict.failures.append
        expected: list[type] = ([Send] if sent else []) + [Disconnect, SessionDown]
        if [type(a) for a in queue] != expected:
            fail(f"{why}: teardown actions {[_describe(a) for a in queue]}")
        else:
            if sent is not None:
                send = queue[0]
                assert isinstance(send, Send)
                frames = ref_frames(send.data)
                if len(frames.frames) != 1 or frames.rest or frames.header_error:
                    fail(f"{why}: the Send is not exactly one message: {send.data.hex()}")
                elif framing.encode_notification(sent) != send.data:
                    fail(f"{why}: sent {send.data.hex()}, expected NOTIFICATION {sent}")
            down = queue[-1]
            assert isinstance(down, SessionDown)
            if down.notification_sent != sent or down.notification_received != received:
                fail(f"{why}: {down}")
            graceful = (
                self.profile.graceful_restart and received is None
                and (sent is None or sent.code == 4)
            )  # fmt: skip
            if down.graceful != graceful:
                fail(f"{why}: SessionDown graceful={down.graceful}, expected {graceful}")
            self._down(down)
        queue.clear()
        if self.session.state is not State.IDLE:
            fail(f"{why}: state {self.session.state} after the drop, expected Idle")
        self._check_rib(verdict, why)

    def _judge_update(
        self,
        verdict: Verdict,
        body: bytes,
        whole: bytes,
        expected: Expected | None,
        queue: list[Action],
    ) -> bool:
        """One UPDATE frame; False when the session ended on it."""
        fail = verdict.failures.append
        ref = ref_update(body, self.profile)
        a = queue[0] if queue else None
        if isinstance(a, UpdateReceived):
            queue.pop(0)
            update = a.update
            if ref.must_reset:
                fail(f"UPDATE accepted though it must reset the session ({ref.must_reset}): "
                     f"{whole.hex()}")  # fmt: skip
            self._check_update(verdict, update, ref, expected, whole)
            self._apply_update(update)
            self._check_rib(verdict, "after UPDATE")
            return True
        sent = self._sent_notification(queue)
        if sent is None:
            fail(f"UPDATE: neither accepted nor refused: {[_describe(x) for x in queue]} "
                 f"{whole.hex()}")  # fmt: skip
            queue.clear()
            return False
        if expected is not None:
            fail(f"valid UPDATE refused with {sent}: {whole.hex()}")
        elif sent.code != 3 or sent.subcode not in ref.reset_subcodes:
            fail(f"UPDATE refused with {sent} ({self.session.counters.last_error}); allowed: "
                 f"3/{sorted(ref.reset_subcodes)} {whole.hex()}")  # fmt: skip
        verdict.outcomes[f"sent {sent.code}/{sent.subcode} (UPDATE)"] += 1
        self._check_drop(verdict, queue, sent, None, "UPDATE refused")
        return False

    def _check_update(
        self, verdict: Verdict, update: Update, ref: RefUpdate, expected: Expected | None,
        whole: bytes,
    ) -> None:  # fmt: skip
        fail = verdict.failures.append
        hexed = whole.hex()
        announced = {(r.prefix, r.path_id) for r in update.all_announced()}
        withdrawn = set(update.withdrawn)
        if update.end_of_rib is not None:
            verdict.outcomes["end-of-rib"] += 1
            if update.end_of_rib not in ref.eor:
                fail(f"End-of-RIB {update.end_of_rib} from an UPDATE that is not one: {hexed}")
            if announced or withdrawn:
                fail(f"End-of-RIB with routes: {hexed}")
        elif update.treat_as_withdraw:
            verdict.outcomes["treat-as-withdraw"] += 1
            if announced:
                fail(f"treat-as-withdraw with announced routes: {hexed}")
            everything = set(ref.announce) | ref.withdraw
            if withdrawn != everything:
                fail(f"treat-as-withdraw withdrew {sorted(map(str, withdrawn ^ everything))} "
                     f"differently from the reference: {hexed}")  # fmt: skip
            if not ref.may_taw and not ref.exotic and ref.announce:
                fail(f"treat-as-withdraw without a reason the reference sees "
                     f"({update.treat_as_withdraw}): {hexed}")  # fmt: skip
        else:
            verdict.outcomes["accepted" if announced or withdrawn else "accepted, empty"] += 1
            if None not in ref.eor and ref.eor:
                fail(f"End-of-RIB {sorted(f for f in ref.eor if f)} not reported: {hexed}")
            if announced != set(ref.announce):
                fail(f"announced {sorted(map(str, announced ^ set(ref.announce)))} "
                     f"differs from the reference: {hexed}")  # fmt: skip
            if withdrawn != ref.withdraw:
                fail(f"withdrawn {sorted(map(str, withdrawn ^ ref.withdraw))} "
                     f"differs from the reference: {hexed}")  # fmt: skip
            if announced and ref.must_taw:
                fail(f"accepted routes RFC 7606 treats as withdrawn ({ref.must_taw}): {hexed}")
            for r in update.all_announced():
                hops = ref.announce.get((r.prefix, r.path_id), set())
                if r.next_hop.packed not in hops:
                    fail(f"{r.prefix}: next hop {r.next_hop}, the wire says "
                         f"{sorted(h.hex() for h in hops)}: {hexed}")  # fmt: skip
                    break
                if r.attributes.origin not in (0, 1, 2):
                    fail(f"{r.prefix}: ORIGIN {r.attributes.origin}: {hexed}")
                    break
        if expected is not None:
            self._check_expected(verdict, update, expected, hexed)

    @staticmethod
    def _check_expected(verdict: Verdict, update: Update, expected: Expected, hexed: str) -> None:
        fail = verdict.failures.append
        got = {(r.prefix, r.path_id, r.next_hop) for r in update.all_announced()}
        if (
            update.treat_as_withdraw
            or got != expected.announced
            or set(update.withdrawn) != expected.withdrawn
            or update.end_of_rib != expected.end_of_rib
        ):
            fail(f"valid UPDATE decoded as {update}, expected {expected}: {hexed}")
            return
        e = expected.attributes
        for r in update.all_announced():
            a = r.attributes
            assert e is not None
            if (a.origin, a.as_path, a.local_pref, a.med, a.communities, a.large_communities,
                    a.originator_id, a.cluster_list) != (
                    e.origin, e.as_path, e.local_pref, e.med, e.communities,
                    e.large_communities, e.originator_id, e.cluster_list):  # fmt: skip
                fail(f"valid UPDATE: attributes {a!r}, expected {e}: {hexed}")
                return

    def _check_rib(self, verdict: Verdict, when: str) -> None:
        fail = verdict.failures.append
        peer = self.rib.peers[PEER]
        want = Counter({(p, pid, nh, a): 1 for (p, pid), (nh, a) in self.shadow.fresh.items()})
        have = rib_content(self.rib, peer.index)
        if have != want:
            fail(f"RIB {when}: peer paths differ from the shadow: "
                 f"{_diff(have, want)}")  # fmt: skip
        if peer.count != sum(have.values()):
            fail(f"RIB {when}: peer count {peer.count}, paths {sum(have.values())}")
        stale = rib_content(self.rib, peer.stale_alias)
        if stale != self.shadow.stale:
            fail(
                f"RIB {when}: stale paths differ from the shadow: {_diff(stale, self.shadow.stale)}"
            )
        if peer.stale_alias is None and self.shadow.stale:
            fail(f"RIB {when}: no stale alias, shadow has {len(self.shadow.stale)} stale paths")
        for error in self.delta_errors:
            fail(f"RIB {when}: {error}")
        self.delta_errors.clear()
        selected = self.rib.selected
        if selected != self.selected:
            wrong = {
                k
                for k in selected.keys() | self.selected.keys()
                if selected.get(k) != self.selected.get(k)
            }
            fail(
                f"RIB {when}: the selection deltas handed out disagree with the RIB for "
                f"{sorted(str(key_prefix(k)) for k in wrong)[:4]}"
            )
            self.selected = selected


def _diff(have: Counter[tuple[object, ...]], want: Counter[tuple[object, ...]]) -> str:
    extra = sorted(str(k[:3]) for k in (have - want))
    missing = sorted(str(k[:3]) for k in (want - have))
    return f"extra {extra[:4]}, missing {missing[:4]}"


def run_inputs(profile: Profile, inputs: Iterable[Input], seed: int = 0,
               lose_every: int = 7) -> Verdict:  # fmt: skip
    """Feed inputs to one harness (tests use this); every ``lose_every``-th input that
    leaves an incomplete message pending loses the connection."""
    verdict = Verdict()
    harness = Harness(profile, seed)
    for n, item in enumerate(inputs):
        harness.feed(item, verdict, lose_connection=lose_every > 0 and n % lose_every == 0)
    return verdict
