"""The BGP session state machine (RFC 4271 §8), sans-IO.

How it is used (the aioquic/h11 pattern): the asyncio glue (``speaker.py``) owns the TCP
socket and the clock; :class:`Session` owns everything else. Inputs are method calls that
carry ``now`` (a monotonic time in seconds): :meth:`Session.start`, :meth:`Session.stop`,
:meth:`Session.connection_made`, :meth:`Session.connection_failed`,
:meth:`Session.connection_lost`, :meth:`Session.receive_data`, :meth:`Session.handle_timer`,
:meth:`Session.send_updates`, :meth:`Session.request_route_refresh`. After each input the
caller drains :meth:`Session.take_actions` (in order: :class:`Connect`, :class:`Send`,
:class:`Disconnect` for the transport; :class:`Established`, :class:`SessionDown`,
:class:`UpdateReceived`, :class:`RouteRefreshReceived` for the RIB) and sleeps until
:meth:`Session.next_deadline`. Nothing here touches a socket, reads a clock or draws a
random number except from the injected :class:`random.Random`, so tests drive a session
(or two sessions wired back to back) with a virtual clock and see every byte.

How it is built (OpenBGPD's ``bgp_fsm()``): every input becomes one RFC 4271 §8.1 event
(:class:`Event`) and goes through :meth:`Session._fsm`, a switch on the state and inside it
on the event; each arm sets timers, sends, and calls :meth:`Session._change_state`, which
sets the new state and then runs that state's entry actions in one place (entering Idle
stops every timer, clears the receive buffer, closes the transport, reports the session
down, and schedules the automatic restart). Any message that is unexpected in OpenSent,
OpenConfirm or Established is answered with a NOTIFICATION Finite State Machine Error whose
subcode names the state (RFC 6608) and the session goes Idle.

Our reading of RFC 4271 §8 for a hypervisor that only connects out:

- **Connect** means our TCP connect is in progress; **Active** means we wait for the
  ConnectRetry timer before the next attempt (there is no listening socket, so nothing is
  "listened for"; with ``passive=True`` the session instead waits in Active, with no timer,
  for the caller to hand it an accepted connection through :meth:`Session.connection_made`).
  Connection collision detection (§6.8) is not done: a session has one transport, a second
  connection is the caller's to refuse (Cease / Connection Rejected, RFC 4486), and
  :meth:`Session.connection_made` while connected is ignored.
- **Timers** (§8, §10) are named deadlines: ConnectRetry (first wait ``connect_retry_time``
  5 s, doubling per failed attempt up to ``max_connect_retry_time`` 30 s, reset when the
  session reaches Established), Hold (``open_hold_time`` 4 min in OpenSent, then the
  negotiated hold time; 0 = no hold timer and no keepalives, §4.2), Keepalive (negotiated),
  IdleHold (the automatic restart, RFC 4271 §8.1.1 DampPeerOscillations). RFC 4271 §10
  jitter (a factor uniform in [1 - ``jitter``, 1], i.e. -25 %..0 by default: never longer
  than the configured value, so a cap stays a cap) is applied to ConnectRetry, Keepalive
  and IdleHold.
- **Damping** (OpenBGPD's IdleHoldTime, BIRD's error wait/forget time): after
  :meth:`Session.start` and after every failure the session waits IdleHold in Idle before
  connecting. The first wait is ``connect_delay`` (2 s); each failure doubles the next
  wait up to ``max_idle_hold_time``; every ``damping_decay_time`` seconds spent in
  Established halves it again down to ``connect_delay``. A peer that flaps right after
  Established therefore waits 2, 4, 8, ... s; a stable one comes back after 2 s. Graceful
  drops and NOTIFICATION Unsupported Version (NotifMsgVerErr) are not punished.
- **Graceful restart** (RFC 4724 §4.2, the receiving-speaker side): :class:`SessionDown`
  has ``graceful=True`` -- keep the peer's routes as stale -- exactly when the session was
  Established, both we and the peer advertised the GR capability, no NOTIFICATION was
  received, and no NOTIFICATION was sent other than Hold Timer Expired. So: TCP failure
  (:meth:`Session.connection_lost`), hold timer expiry (a peer whose control plane is
  restarting stops sending KEEPALIVEs; RFC 8538 treats it so when its N bit is
  negotiated) and our own :meth:`Session.stop` without a NOTIFICATION (our own restart)
  are graceful; a Cease, an error NOTIFICATION in either direction, and
  :meth:`Session.stop` with a NOTIFICATION are not. We do not advertise RFC 8538's N bit,
  so a NOTIFICATION always ends GR. When the N bit is added, a received NOTIFICATION other
  than Cease / Hard Reset becomes graceful here (:meth:`Session._graceful`) and nowhere
  else.
- **Errors**: header errors come from :mod:`l3hostd.bgp.framing`; decode errors come from
  the codec as :class:`~l3hostd.bgp.messages.BgpError` carrying the NOTIFICATION to send
  (RFC 4271 §6). Anything else the codec raises is treated as malformed: OPEN Message
  Error (2/0) for an OPEN, UPDATE Message Error / Malformed Attribute List (3/1) for an
  UPDATE. No exception leaves :meth:`Session.receive_data`; an internal error there ends
  the session with FSM Error / unspecific (5/0) and is recorded in ``last_error``.
- Bytes that arrive while no connection is up (Idle, Connect, Active) belong to a closed
  connection and are dropped. :meth:`Session.send_updates` outside Established drops the
  messages and returns False (the Adj-RIB-Out resends everything on the next session).

KEEPALIVE and NOTIFICATION are encoded with :mod:`l3hostd.bgp.framing` (so they can be
sent whatever the codec does); OPEN, UPDATE and ROUTE-REFRESH go through the codec.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import TypeAlias

from l3hostd.bgp import framing
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import (
    CEASE_ADMIN_SHUTDOWN,
    FSM_UNEXPECTED_IN_ESTABLISHED,
    FSM_UNEXPECTED_IN_OPENCONFIRM,
    FSM_UNEXPECTED_IN_OPENSENT,
    IPV4_UNICAST,
    OPEN_BAD_BGP_IDENTIFIER,
    OPEN_BAD_PEER_AS,
    OPEN_UNACCEPTABLE_HOLD_TIME,
    OPEN_UNSUPPORTED_VERSION,
    UPDATE_MALFORMED_ATTRIBUTE_LIST,
    BgpError,
    Capabilities,
    ErrorCode,
    Family,
    GracefulRestart,
    MessageType,
    Negotiated,
    Notification,
    Open,
    RouteRefresh,
    Update,
)

__all__ = [
    "Action",
    "Connect",
    "Disconnect",
    "Established",
    "Event",
    "RouteRefreshReceived",
    "Send",
    "Session",
    "SessionConfig",
    "SessionCounters",
    "SessionDown",
    "State",
    "Timer",
    "UpdateReceived",
]

BGP_VERSION = 4
ADMIN_SHUTDOWN = Notification(ErrorCode.CEASE, CEASE_ADMIN_SHUTDOWN)


class State(enum.Enum):
    """RFC 4271 §8.2.2 session states."""

    IDLE = "Idle"
    CONNECT = "Connect"
    ACTIVE = "Active"
    OPENSENT = "OpenSent"
    OPENCONFIRM = "OpenConfirm"
    ESTABLISHED = "Established"

    def __str__(self) -> str:
        return self.value


#: States in which a TCP connection is up and BGP messages flow.
CONNECTED_STATES = frozenset({State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED})


class Event(enum.IntEnum):
    """RFC 4271 §8.1 events (their RFC numbers) that this FSM uses."""

    MANUAL_START = 1
    MANUAL_STOP = 2
    CONNECT_RETRY_TIMER_EXPIRES = 9
    HOLD_TIMER_EXPIRES = 10
    KEEPALIVE_TIMER_EXPIRES = 11
    IDLE_HOLD_TIMER_EXPIRES = 13  # the automatic restart (§8.1.1 DampPeerOscillations)
    TCP_CONNECTION_CONFIRMED = 17  # also stands for Tcp_CR_Acked (16): the transport is up
    TCP_CONNECTION_FAILS = 18
    BGP_OPEN = 19
    BGP_HEADER_ERR = 21
    BGP_OPEN_MSG_ERR = 22
    NOTIF_MSG_VER_ERR = 24
    NOTIF_MSG = 25
    KEEPALIVE_MSG = 26
    UPDATE_MSG = 27
    UPDATE_MSG_ERR = 28
    ROUTE_REFRESH_MSG = 2918  # RFC 2918: not an RFC 4271 event; numbered after its RFC


class Timer(enum.IntEnum):
    """Named deadlines. The value orders timers expiring at the same instant."""

    HOLD = 1
    KEEPALIVE = 2
    CONNECT_RETRY = 3
    IDLE_HOLD = 4
    IDLE_HOLD_DECAY = 5  # not RFC 4271: halves the damped IdleHold while Established


_TIMER_EVENTS = {
    Timer.HOLD: Event.HOLD_TIMER_EXPIRES,
    Timer.KEEPALIVE: Event.KEEPALIVE_TIMER_EXPIRES,
    Timer.CONNECT_RETRY: Event.CONNECT_RETRY_TIMER_EXPIRES,
    Timer.IDLE_HOLD: Event.IDLE_HOLD_TIMER_EXPIRES,
}

_MESSAGE_TYPES = {int(t): t for t in MessageType}
_MESSAGE_EVENTS = {
    MessageType.OPEN: Event.BGP_OPEN,
    MessageType.UPDATE: Event.UPDATE_MSG,
    MessageType.KEEPALIVE: Event.KEEPALIVE_MSG,
    MessageType.ROUTE_REFRESH: Event.ROUTE_REFRESH_MSG,
}

_UNEXPECTED_SUBCODE = {
    State.OPENSENT: FSM_UNEXPECTED_IN_OPENSENT,
    State.OPENCONFIRM: FSM_UNEXPECTED_IN_OPENCONFIRM,
    State.ESTABLISHED: FSM_UNEXPECTED_IN_ESTABLISHED,
}


# ---- configuration -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """One peer's session parameters. Times are seconds."""

    local_asn: int
    peer_asn: int
    router_id: IPv4Address
    hold_time: int = 90  # offered; the lower of both offers wins (RFC 4271 §4.2)
    keepalive_time: int = 30
    families: frozenset[Family] = frozenset({IPV4_UNICAST})
    add_path_receive: bool = False
    graceful_restart: bool = True  # advertise GR (RFC 4724) and keep a peer's routes stale
    restart_time: int = 120
    restarting: bool = False  # set the R bit: we restarted (RFC 4724 §3)
    passive: bool = False  # never connect; wait for connection_made
    connect_delay: float = 2.0  # first IdleHold after start(); the damping floor
    #: the IdleHold of the session's very first start() (None: connect_delay). A daemon
    #: that just started has nothing to damp: l3hostd connects at once (BIRD's peers
    #: connect to it at once too, it listens; we only connect).
    start_delay: float | None = None
    connect_retry_time: float = 5.0
    max_connect_retry_time: float = 30.0
    max_idle_hold_time: float = 120.0
    damping_decay_time: float = 60.0  # Established this long halves the damped IdleHold
    open_hold_time: float = 240.0  # Hold timer in OpenSent (RFC 4271 §8.2.2 "4 minutes")
    jitter: float = 0.25  # RFC 4271 §10: factor uniform in [1 - jitter, 1]

    def __post_init__(self) -> None:
        if not 0 < self.local_asn < 2**32 or not 0 < self.peer_asn < 2**32:
            raise ValueError("AS numbers must be 1..4294967295")
        if self.hold_time != 0 and not 3 <= self.hold_time <= 65535:
            raise ValueError("hold_time must be 0 or 3..65535 (RFC 4271 §4.2)")
        if self.keepalive_time < 1:
            raise ValueError("keepalive_time must be >= 1")
        if not self.families:
            raise ValueError("at least one address family")
        if not 0 <= self.restart_time <= 4095:
            raise ValueError("restart_time must be 0..4095 (RFC 4724 §3: 12 bits)")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError("jitter must be in [0, 1)")
        if self.start_delay is not None and not 0 <= self.start_delay <= self.max_idle_hold_time:
            raise ValueError("need 0 <= start_delay <= max_idle_hold_time")
        if not 0 < self.connect_delay <= self.max_idle_hold_time:
            raise ValueError("need 0 < connect_delay <= max_idle_hold_time")
        if not 0 < self.connect_retry_time <= self.max_connect_retry_time:
            raise ValueError("need 0 < connect_retry_time <= max_connect_retry_time")
        if self.damping_decay_time <= 0 or self.open_hold_time <= 0:
            raise ValueError("damping_decay_time and open_hold_time must be > 0")


# ---- actions (outputs) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the TCP connection; report with connection_made / connection_failed."""


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes (one or more whole BGP messages) to the connection."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Close the connection (after writing what was sent), or abort the connect."""


@dataclass(frozen=True, slots=True)
class Established:
    """The session is up; UPDATEs may be sent (RFC 4271 §8.2.2 Established)."""

    negotiated: Negotiated


@dataclass(frozen=True, slots=True)
class SessionDown:
    """An Established session ended (always follows an :class:`Established`).

    ``graceful``: keep the peer's routes as stale (RFC 4724 §4.2); see the module doc."""

    reason: str
    notification_sent: Notification | None
    notification_received: Notification | None
    graceful: bool


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    update: Update


@dataclass(frozen=True, slots=True)
class RouteRefreshReceived:
    """The peer asks for our Adj-RIB-Out of this family again (RFC 2918)."""

    family: Family


Action: TypeAlias = (
    Connect | Send | Disconnect | Established | SessionDown | UpdateReceived | RouteRefreshReceived
)


def _zero_counts() -> dict[MessageType, int]:
    return dict.fromkeys(MessageType, 0)


@dataclass(slots=True)
class SessionCounters:
    """For ``l3hostctl show peers`` and the metrics."""

    messages_in: dict[MessageType, int] = field(default_factory=_zero_counts)
    messages_out: dict[MessageType, int] = field(default_factory=_zero_counts)
    connect_attempts: int = 0
    flaps: int = 0  # Established -> down transitions
    last_error: str = ""
    established_since: float | None = None


# ---- the session -------------------------------------------------------------------------


class Session:
    """One BGP session, sans-IO. See the module docstring."""

    def __init__(self, config: SessionConfig, codec: Codec, rng: random.Random) -> None:
        self.config = config
        self.counters = SessionCounters()
        self._codec = codec
        self._rng = rng
        self._state = State.IDLE
        self._actions: list[Action] = []
        self._timers: dict[Timer, float] = {}
        self._reader = framing.FrameReader()
        self._auto_start = False  # start() was called and stop() was not
        self._transport = False  # a connection (or a connect attempt) exists
        self._restarting = config.restarting
        self._sent_open: Open | None = None
        self._negotiated: Negotiated | None = None
        self._idle_hold = config.connect_delay
        self._started_once = False
        self._connect_retry = config.connect_retry_time

    # ---- introspection -------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def negotiated(self) -> Negotiated | None:
        """What the OPENs agreed on (OpenConfirm and Established only)."""
        return self._negotiated

    @property
    def idle_hold_time(self) -> float:
        """The (damped) IdleHold the next failure will wait, before jitter."""
        return self._idle_hold

    @property
    def connect_retry_interval(self) -> float:
        """The ConnectRetry wait the next failed connect will use, before jitter."""
        return self._connect_retry

    @property
    def timers(self) -> dict[Timer, float]:
        """The armed timers and their deadlines (a copy)."""
        return dict(self._timers)

    # ---- outputs ---------------------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        return min(self._timers.values()) if self._timers else None

    # ---- inputs ----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """ManualStart: connect after ``connect_delay`` (or the damped IdleHold)."""
        self._fsm(Event.MANUAL_START, now)

    def stop(self, now: float, notification: Notification | None = ADMIN_SHUTDOWN) -> None:
        """ManualStop: send ``notification`` if a connection is up (None: just close, as a
        restarting speaker does for graceful restart), close, stay Idle."""
        self._fsm(Event.MANUAL_STOP, now, notification=notification)

    def clear_restarting(self) -> None:
        """Our restart is over: later OPENs no longer set the R bit (RFC 4724 §3)."""
        self._restarting = False

    def connection_made(self, now: float) -> None:
        self._fsm(Event.TCP_CONNECTION_CONFIRMED, now)

    def connection_failed(self, now: float) -> None:
        """The connect attempt failed."""
        self._transport = False
        self._fsm(Event.TCP_CONNECTION_FAILS, now)

    def connection_lost(self, now: float) -> None:
        """The connection was closed or reset by the peer or the network."""
        self._transport = False
        self._fsm(Event.TCP_CONNECTION_FAILS, now)

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes read from the connection. Never raises."""
        if self._state not in CONNECTED_STATES:
            return  # a closed connection's leftovers
        try:
            reader = self._reader
            reader.feed(data)
            while self._state in CONNECTED_STATES:
                try:
                    frame = reader.next_frame()
                except BgpError as err:
                    self._fsm(Event.BGP_HEADER_ERR, now, error=err)
                    break
                if frame is None:
                    break
                msg_type = _MESSAGE_TYPES[frame[0]]  # framing let only 1..5 through
                body = frame[1]
                self.counters.messages_in[msg_type] += 1
                if msg_type is MessageType.NOTIFICATION:
                    notification = framing.decode_notification(body)
                    event = (
                        Event.NOTIF_MSG_VER_ERR
                        if (notification.code, notification.subcode)
                        == (ErrorCode.OPEN_MESSAGE, OPEN_UNSUPPORTED_VERSION)
                        else Event.NOTIF_MSG
                    )
                    self._fsm(event, now, notification=notification)
                else:
                    self._fsm(_MESSAGE_EVENTS[msg_type], now, body=body)
            reader.compact()
        except Exception as exc:  # a bug of ours or of the codec: never let it escape
            self._internal_error(exc, now)

    def handle_timer(self, now: float) -> None:
        """Fire every timer whose deadline is <= now, earliest first."""
        for _ in range(2 * len(Timer)):  # each firing disarms or re-arms into the future
            expired = [
                (deadline, timer) for timer, deadline in self._timers.items() if deadline <= now
            ]
            if not expired:
                return
            _, timer = min(expired)
            del self._timers[timer]
            if timer is Timer.IDLE_HOLD_DECAY:
                self._decay_idle_hold(now)
            else:
                self._fsm(_TIMER_EVENTS[timer], now)

    def send_updates(self, messages: list[bytes], now: float | None = None) -> bool:
        """Queue encoded UPDATEs (one :class:`Send` for all). Returns False (and drops them)
        unless Established. With ``now``, the KeepaliveTimer restarts as §8.2.2 says for a
        sent UPDATE; without it a KEEPALIVE may go out between UPDATEs, which is harmless."""
        if self._state is not State.ESTABLISHED:
            return False
        if messages:
            self._actions.append(Send(b"".join(messages)))
            self.counters.messages_out[MessageType.UPDATE] += len(messages)
            if now is not None:
                self._arm_keepalive(now)
        return True

    def request_route_refresh(self, family: Family) -> bool:
        """Ask the peer to resend ``family`` (RFC 2918). False if not possible now."""
        neg = self._negotiated
        if (
            self._state is not State.ESTABLISHED
            or neg is None
            or not neg.route_refresh
            or family not in neg.families
        ):
            return False
        self._send(
            MessageType.ROUTE_REFRESH, self._codec.encode_route_refresh(RouteRefresh(family))
        )
        return True

    # ---- the state machine -----------------------------------------------------------------

    def _fsm(
        self,
        event: Event,
        now: float,
        *,
        body: bytes = b"",
        notification: Notification | None = None,
        error: BgpError | None = None,
    ) -> None:
        """RFC 4271 §8.2.2: a switch on the state, inside it on the event (OpenBGPD's
        bgp_fsm()). ``body`` is the raw message for BGP_OPEN / UPDATE_MSG /
        ROUTE_REFRESH_MSG (decoded only where it is expected), ``notification`` the one
        received (NOTIF_MSG*) or to send (MANUAL_STOP), ``error`` the one to report."""
        state = self._state
        if state is State.IDLE:
            if event is Event.MANUAL_START:
                self._auto_start = True
                self._connect_retry = self.config.connect_retry_time
                if Timer.IDLE_HOLD not in self._timers:
                    first = not self._started_once and self.config.start_delay is not None
                    delay = self.config.start_delay if first else self._idle_hold
                    self._started_once = True
                    self._arm(Timer.IDLE_HOLD, now, self._jitter(delay or 0.0))
            elif event is Event.MANUAL_STOP:
                self._auto_start = False
                self._timers.pop(Timer.IDLE_HOLD, None)
            elif event is Event.IDLE_HOLD_TIMER_EXPIRES:
                self._change_state(
                    State.ACTIVE if self.config.passive else State.CONNECT, now, event
                )
            elif event is Event.TCP_CONNECTION_CONFIRMED:
                self._actions.append(Disconnect())  # §8.2.2: Idle refuses connections
            # every other event is ignored in Idle (§8.2.2)

        elif state is State.CONNECT:
            if event is Event.MANUAL_START:
                pass
            elif event is Event.MANUAL_STOP:
                self._stop(now, None)
            elif event is Event.CONNECT_RETRY_TIMER_EXPIRES:
                self._actions.append(Disconnect())  # give up this attempt, start another
                self._transport = False
                self._connect(now)
            elif event is Event.TCP_CONNECTION_CONFIRMED:
                self._change_state(State.OPENSENT, now, event)
            elif event is Event.TCP_CONNECTION_FAILS:
                self._change_state(State.ACTIVE, now, event)
            else:
                self._change_state(State.IDLE, now, event, reason=f"{event.name} in Connect")

        elif state is State.ACTIVE:
            if event in (Event.MANUAL_START, Event.TCP_CONNECTION_FAILS):
                pass  # nothing in flight
            elif event is Event.MANUAL_STOP:
                self._stop(now, None)
            elif event is Event.CONNECT_RETRY_TIMER_EXPIRES:
                self._change_state(State.CONNECT, now, event)
            elif event is Event.TCP_CONNECTION_CONFIRMED:
                self._change_state(State.OPENSENT, now, event)
            else:
                self._change_state(State.IDLE, now, event, reason=f"{event.name} in Active")

        elif state is State.OPENSENT:
            if event in (Event.MANUAL_START, Event.TCP_CONNECTION_CONFIRMED):
                pass  # one transport per session: a second connection is not tracked
            elif event is Event.MANUAL_STOP:
                self._stop(now, notification)
            elif event is Event.TCP_CONNECTION_FAILS:
                # §8.2.2 OpenSent: close, restart ConnectRetry, go Active
                self._change_state(State.ACTIVE, now, event, reason="connection lost")
            elif event is Event.HOLD_TIMER_EXPIRES:
                self._fail(now, event, Notification(ErrorCode.HOLD_TIMER_EXPIRED))
            elif event is Event.BGP_OPEN:
                self._receive_open(now, body)
            elif event in (Event.BGP_HEADER_ERR, Event.BGP_OPEN_MSG_ERR):
                assert error is not None
                self._fail(now, event, error.notification(), error.reason)
            elif event in (Event.NOTIF_MSG, Event.NOTIF_MSG_VER_ERR):
                self._notified(now, event, notification)
            else:
                self._unexpected(now, event)

        elif state is State.OPENCONFIRM:
            if event in (Event.MANUAL_START, Event.TCP_CONNECTION_CONFIRMED):
                pass
            elif event is Event.MANUAL_STOP:
                self._stop(now, notification)
            elif event is Event.TCP_CONNECTION_FAILS:
                self._change_state(State.IDLE, now, event, reason="connection lost")
            elif event is Event.HOLD_TIMER_EXPIRES:
                self._fail(now, event, Notification(ErrorCode.HOLD_TIMER_EXPIRED))
            elif event is Event.KEEPALIVE_TIMER_EXPIRES:
                self._send_keepalive(now)
            elif event is Event.KEEPALIVE_MSG:
                self._arm_hold(now)
                self._change_state(State.ESTABLISHED, now, event)
            elif event in (Event.BGP_HEADER_ERR, Event.BGP_OPEN_MSG_ERR):
                assert error is not None
                self._fail(now, event, error.notification(), error.reason)
            elif event in (Event.NOTIF_MSG, Event.NOTIF_MSG_VER_ERR):
                self._notified(now, event, notification)
            else:
                self._unexpected(now, event)

        elif state is State.ESTABLISHED:
            if event in (Event.MANUAL_START, Event.TCP_CONNECTION_CONFIRMED):
                pass
            elif event is Event.MANUAL_STOP:
                self._stop(now, notification)
            elif event is Event.TCP_CONNECTION_FAILS:
                self._change_state(State.IDLE, now, event, reason="connection lost")
            elif event is Event.HOLD_TIMER_EXPIRES:
                self._fail(now, event, Notification(ErrorCode.HOLD_TIMER_EXPIRED))
            elif event is Event.KEEPALIVE_TIMER_EXPIRES:
                self._send_keepalive(now)
            elif event is Event.KEEPALIVE_MSG:
                self._arm_hold(now)
            elif event is Event.UPDATE_MSG:
                self._arm_hold(now)
                self._receive_update(now, body)
            elif event is Event.ROUTE_REFRESH_MSG:
                self._arm_hold(now)
                self._receive_route_refresh(now, body)
            elif event in (Event.BGP_HEADER_ERR, Event.UPDATE_MSG_ERR):
                assert error is not None
                self._fail(now, event, error.notification(), error.reason)
            elif event in (Event.NOTIF_MSG, Event.NOTIF_MSG_VER_ERR):
                self._notified(now, event, notification)
            else:
                self._unexpected(now, event)

    def _change_state(
        self,
        new: State,
        now: float,
        event: Event,
        *,
        reason: str = "",
        sent: Notification | None = None,
        received: Notification | None = None,
    ) -> None:
        """Set the new state, then run its entry actions (OpenBGPD's change_state())."""
        old, self._state = self._state, new
        if reason and event is not Event.MANUAL_STOP:
            self.counters.last_error = reason

        if new is State.IDLE:
            self._close_connection()
            self._timers.clear()
            self._sent_open = None
            graceful = False
            if old is State.ESTABLISHED:
                graceful = self._graceful(event, sent, received)
                self.counters.flaps += 1
                self.counters.established_since = None
                self._actions.append(
                    SessionDown(reason or event.name.lower(), sent, received, graceful)
                )
            self._negotiated = None
            if event is not Event.MANUAL_STOP and self._auto_start:
                self._arm(Timer.IDLE_HOLD, now, self._jitter(self._idle_hold))
                if not graceful and event is not Event.NOTIF_MSG_VER_ERR:
                    self._idle_hold = min(2 * self._idle_hold, self.config.max_idle_hold_time)

        elif new is State.CONNECT:
            self._connect(now)

        elif new is State.ACTIVE:
            self._close_connection()
            self._timers.clear()
            self._sent_open = None
            if not self.config.passive:
                self._arm(Timer.CONNECT_RETRY, now, self._jitter(self._connect_retry))
                self._connect_retry = min(
                    2 * self._connect_retry, self.config.max_connect_retry_time
                )

        elif new is State.OPENSENT:
            self._timers.pop(Timer.CONNECT_RETRY, None)
            self._transport = True
            self._reader.clear()
            self._send_open(now)

        elif new is State.OPENCONFIRM:
            pass  # the OPEN arm sent KEEPALIVE and armed the negotiated timers

        elif new is State.ESTABLISHED:
            assert self._negotiated is not None
            self._connect_retry = self.config.connect_retry_time
            self.counters.established_since = now
            if self._idle_hold > self.config.connect_delay:
                self._arm(Timer.IDLE_HOLD_DECAY, now, self.config.damping_decay_time)
            self._actions.append(Established(self._negotiated))

    # ---- arms' helpers ---------------------------------------------------------------------

    def _graceful(
        self, event: Event, sent: Notification | None, received: Notification | None
    ) -> bool:
        """RFC 4724 §4.2 as extended for hold timer expiry; see the module docstring."""
        neg = self._negotiated
        if not self.config.graceful_restart or neg is None:
            return False
        if neg.peer_graceful_restart is None or received is not None:
            return False
        return sent is None or event is Event.HOLD_TIMER_EXPIRES

    def _stop(self, now: float, notification: Notification | None) -> None:
        self._auto_start = False
        if self._state not in CONNECTED_STATES:
            notification = None  # no connection to send it on
        if notification is not None:
            self._send_notification(notification)
        self._change_state(
            State.IDLE,
            now,
            Event.MANUAL_STOP,
            reason=f"stopped ({notification})" if notification else "stopped",
            sent=notification,
        )

    def _fail(self, now: float, event: Event, notification: Notification, reason: str = "") -> None:
        """Send a NOTIFICATION and go Idle."""
        self._send_notification(notification)
        self._change_state(
            State.IDLE,
            now,
            event,
            reason=f"sent NOTIFICATION {notification}"
            + (f": {reason}" if reason and reason != str(notification) else ""),
            sent=notification,
        )

    def _unexpected(self, now: float, event: Event) -> None:
        """RFC 4271 §8.2.2 / RFC 6608: an event that has no business in this state."""
        state = self._state
        self._fail(
            now,
            event,
            Notification(ErrorCode.FSM, _UNEXPECTED_SUBCODE[state]),
            f"{event.name} in {state}",
        )

    def _notified(self, now: float, event: Event, notification: Notification | None) -> None:
        assert notification is not None
        self._change_state(
            State.IDLE,
            now,
            event,
            reason=f"received NOTIFICATION {notification}",
            received=notification,
        )

    def _internal_error(self, exc: Exception, now: float) -> None:
        reason = f"internal error: {exc!r}"
        if self._state in CONNECTED_STATES:
            self._fail(now, Event.UPDATE_MSG_ERR, Notification(ErrorCode.FSM), reason)
        else:
            self._reader.clear()
            self.counters.last_error = reason

    def _connect(self, now: float) -> None:
        self.counters.connect_attempts += 1
        self._transport = True
        self._actions.append(Connect())
        # The attempt's timeout: no doubling here, only after it failed (entering Active).
        self._arm(Timer.CONNECT_RETRY, now, self._jitter(self._connect_retry))

    def _close_connection(self) -> None:
        if self._transport:
            self._actions.append(Disconnect())
            self._transport = False
        self._reader.clear()

    def _local_open(self) -> Open:
        config = self.config
        families = tuple(sorted(config.families))
        graceful_restart = None
        if config.graceful_restart:
            # F bit set: the kernel routes survive our restarts (the daemon never flushes).
            graceful_restart = GracefulRestart(
                config.restart_time, self._restarting, tuple((f, True) for f in families)
            )
        return Open(
            asn=config.local_asn,
            hold_time=config.hold_time,
            router_id=config.router_id,
            capabilities=Capabilities(
                families=config.families,
                asn4=config.local_asn,
                route_refresh=True,
                graceful_restart=graceful_restart,
                add_path=tuple((f, 1) for f in families) if config.add_path_receive else (),
            ),
        )

    def _send_open(self, now: float) -> None:
        message = self._local_open()
        try:
            data = self._codec.encode_open(message)
        except Exception as exc:  # a configuration the codec cannot express
            self._change_state(
                State.IDLE,
                now,
                Event.TCP_CONNECTION_CONFIRMED,
                reason=f"cannot encode OPEN: {exc!r}",
            )
            return
        self._sent_open = message
        self._send(MessageType.OPEN, data)
        self._arm(Timer.HOLD, now, self.config.open_hold_time)

    def _check_open(self, received: Open) -> None:
        """Checks that need our configuration (RFC 4271 §6.2, RFC 6286)."""
        if received.version != BGP_VERSION:
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, OPEN_UNSUPPORTED_VERSION, BGP_VERSION.to_bytes(2, "big")
            )
        if received.asn != self.config.peer_asn:
            raise BgpError(
                ErrorCode.OPEN_MESSAGE,
                OPEN_BAD_PEER_AS,
                reason=f"peer AS {received.asn}, expected {self.config.peer_asn}",
            )
        if received.hold_time in (1, 2):
            raise BgpError(ErrorCode.OPEN_MESSAGE, OPEN_UNACCEPTABLE_HOLD_TIME)
        if int(received.router_id) == 0 or (
            received.router_id == self.config.router_id
            and self.config.local_asn == self.config.peer_asn
        ):
            raise BgpError(
                ErrorCode.OPEN_MESSAGE,
                OPEN_BAD_BGP_IDENTIFIER,
                reason=f"peer router id {received.router_id}",
            )

    def _receive_open(self, now: float, body: bytes) -> None:
        sent = self._sent_open
        assert sent is not None
        try:
            received = self._codec.decode_open(body)
            self._check_open(received)
            negotiated = self._codec.negotiate(sent, received, self.config.keepalive_time)
        except BgpError as err:
            self._fsm(Event.BGP_OPEN_MSG_ERR, now, error=err)
            return
        except Exception as exc:  # the codec choked: call it malformed
            self._fsm(
                Event.BGP_OPEN_MSG_ERR,
                now,
                error=BgpError(ErrorCode.OPEN_MESSAGE, 0, reason=f"OPEN not understood: {exc!r}"),
            )
            return
        self._negotiated = negotiated
        self._send_keepalive(now)
        self._arm_hold(now)
        self._change_state(State.OPENCONFIRM, now, Event.BGP_OPEN)

    def _receive_update(self, now: float, body: bytes) -> None:
        try:
            update = self._codec.decode_update(body)
        except BgpError as err:
            self._fsm(Event.UPDATE_MSG_ERR, now, error=err)
            return
        except Exception as exc:  # RFC 4271 §6.3: unparseable -> Malformed Attribute List
            self._fsm(
                Event.UPDATE_MSG_ERR,
                now,
                error=BgpError(
                    ErrorCode.UPDATE_MESSAGE,
                    UPDATE_MALFORMED_ATTRIBUTE_LIST,
                    reason=f"UPDATE not understood: {exc!r}",
                ),
            )
            return
        self._actions.append(UpdateReceived(update))

    def _receive_route_refresh(self, now: float, body: bytes) -> None:
        # We always advertise the capability, so the peer may send this (RFC 2918 §4).
        try:
            message = self._codec.decode_route_refresh(body)
        except BgpError as err:
            self._fail(now, Event.UPDATE_MSG_ERR, err.notification(), err.reason)
            return
        except Exception as exc:
            self.counters.last_error = f"ignored ROUTE-REFRESH: {exc!r}"
            return
        neg = self._negotiated
        # RFC 7313 subtypes 1/2 (BoRR/EoRR) need Enhanced Route Refresh, not negotiated;
        # RFC 2918 §4: a family we did not advertise is ignored.
        if message.subtype == 0 and neg is not None and message.family in neg.families:
            self._actions.append(RouteRefreshReceived(message.family))

    # ---- sending and timers ----------------------------------------------------------------

    def _send(self, msg_type: MessageType, data: bytes) -> None:
        self._actions.append(Send(data))
        self.counters.messages_out[msg_type] += 1

    def _send_notification(self, notification: Notification) -> None:
        self._send(MessageType.NOTIFICATION, framing.encode_notification(notification))

    def _send_keepalive(self, now: float) -> None:
        self._send(MessageType.KEEPALIVE, framing.encode_keepalive())
        self._arm_keepalive(now)

    def _arm(self, timer: Timer, now: float, delay: float) -> None:
        self._timers[timer] = now + delay

    def _arm_hold(self, now: float) -> None:
        neg = self._negotiated
        hold = neg.hold_time if neg is not None else self.config.open_hold_time
        if hold:
            self._arm(Timer.HOLD, now, hold)
        else:
            self._timers.pop(Timer.HOLD, None)

    def _arm_keepalive(self, now: float) -> None:
        neg = self._negotiated
        if neg is not None and neg.hold_time:
            self._arm(Timer.KEEPALIVE, now, self._jitter(max(1, neg.keepalive_time)))
        else:
            self._timers.pop(Timer.KEEPALIVE, None)

    def _jitter(self, value: float) -> float:
        jitter = self.config.jitter
        return value * self._rng.uniform(1.0 - jitter, 1.0) if jitter else value

    def _decay_idle_hold(self, now: float) -> None:
        self._idle_hold = max(self.config.connect_delay, self._idle_hold / 2)
        if self._idle_hold > self.config.connect_delay:
            self._arm(Timer.IDLE_HOLD_DECAY, now, self.config.damping_decay_time)
