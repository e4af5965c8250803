"""The sans-IO BGP session (l3hostd.bgp.fsm) and the framing (l3hostd.bgp.framing).

Everything runs on a virtual clock: ``now`` is a float the test chooses. Peer messages are
either packed by hand with struct (KEEPALIVE, NOTIFICATION, End-of-RIB, ROUTE-REFRESH,
broken headers) or encoded by the real :class:`~l3hostd.bgp.codec.Codec` (OPEN, UPDATE);
``Wire`` connects two real sessions back to back.
"""

# mypy: disable-error-code="comparison-overlap"
# (mypy narrows ``session.state`` after one ``is`` check and does not see inputs change it)

from __future__ import annotations

import ast
import itertools
import random
import struct
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l3hostd.bgp import framing
from l3hostd.bgp import fsm as fsm_module
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.fsm import (
    ADMIN_SHUTDOWN,
    Action,
    Connect,
    Disconnect,
    Established,
    RouteRefreshReceived,
    Send,
    Session,
    SessionConfig,
    SessionDown,
    State,
    Timer,
    UpdateReceived,
)
from l3hostd.bgp.messages import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    Announcement,
    BgpError,
    Capabilities,
    GracefulRestart,
    MessageType,
    Notification,
    Open,
)

ASN = 65501
LOCAL_ID = IPv4Address("10.255.0.11")
PEER_ID = IPv4Address("10.255.0.1")
MARKER = b"\xff" * 16

# ---- hand-packed peer messages -----------------------------------------------------------


def message(msg_type: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), msg_type) + body


def notification_bytes(code: int, subcode: int = 0, data: bytes = b"") -> bytes:
    return message(3, bytes([code, subcode]) + data)


def route_refresh_bytes(afi: int = 1, safi: int = 1, subtype: int = 0) -> bytes:
    return message(5, struct.pack("!HBB", afi, subtype, safi))


KEEPALIVE = message(4)
EOR_V4 = message(2, b"\x00\x00\x00\x00")  # an empty UPDATE: End-of-RIB IPv4 (RFC 4724 §2)
CEASE = notification_bytes(6, 2)
BAD_MARKER = b"\x00" * 16 + struct.pack("!HB", 19, 4)
BAD_LENGTH = MARKER + struct.pack("!HB", 5000, 4)
BAD_TYPE = MARKER + struct.pack("!HB", 19, 9)


def config(**changes: object) -> SessionConfig:
    """Our side; jitter off so that times are exact unless a test turns it on."""
    base = SessionConfig(
        local_asn=ASN,
        peer_asn=ASN,
        router_id=LOCAL_ID,
        jitter=0.0,
        families=frozenset({IPV4_UNICAST, IPV6_UNICAST}),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def peer_open_message(
    hold: int = 90,
    gr: bool = True,
    router_id: IPv4Address = PEER_ID,
    asn: int = ASN,
    restarting: bool = False,
) -> Open:
    families = frozenset({IPV4_UNICAST, IPV6_UNICAST})
    return Open(
        asn,
        hold,
        router_id,
        Capabilities(
            families=families,
            asn4=asn,
            route_refresh=True,
            graceful_restart=GracefulRestart(
                120, restarting, ((IPV4_UNICAST, True), (IPV6_UNICAST, True))
            )
            if gr
            else None,
        ),
    )


def peer_open(**kw: object) -> bytes:
    """An OPEN as the route reflector would send it, encoded by the real codec."""
    msg = peer_open_message(**kw)  # type: ignore[arg-type]
    return Codec(msg.asn, ASN).encode_open(msg)


def new_session(
    cfg: SessionConfig | None = None, seed: int = 1, codec: Codec | None = None
) -> Session:
    cfg = cfg or config()
    return Session(cfg, codec or Codec(cfg.local_asn, cfg.peer_asn), random.Random(seed))


# ---- describing actions ------------------------------------------------------------------


def split_messages(data: bytes) -> list[tuple[int, bytes]]:
    reader = framing.FrameReader()
    reader.feed(data)
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(frame)
    assert len(reader) == 0, "a Send must carry whole messages"
    return out


def describe(actions: list[Action]) -> list[str]:
    out: list[str] = []
    for action in actions:
        if isinstance(action, Connect):
            out.append("connect")
        elif isinstance(action, Disconnect):
            out.append("disconnect")
        elif isinstance(action, Send):
            for msg_type, body in split_messages(action.data):
                name = MessageType(msg_type).name
                if msg_type == MessageType.NOTIFICATION:
                    name += f" {body[0]}/{body[1]}"
                out.append("send " + name)
        elif isinstance(action, Established):
            out.append("established")
        elif isinstance(action, SessionDown):
            out.append("down graceful" if action.graceful else "down")
        elif isinstance(action, UpdateReceived):
            out.append("update")
        elif isinstance(action, RouteRefreshReceived):
            out.append("refresh")
        else:  # pragma: no cover
            raise AssertionError(action)
    return out


def sent_notifications(actions: list[Action]) -> list[Notification]:
    return [
        framing.decode_notification(body)
        for a in actions
        if isinstance(a, Send)
        for t, body in split_messages(a.data)
        if t == MessageType.NOTIFICATION
    ]


def downs(actions: list[Action]) -> list[SessionDown]:
    return [a for a in actions if isinstance(a, SessionDown)]


# ---- driving one session -----------------------------------------------------------------


def establish(s: Session, now: float, **open_kw: object) -> None:
    """From Connect or Active: the connection comes up and the peer answers."""
    s.connection_made(now)
    s.receive_data(peer_open(**open_kw), now)
    assert s.state is State.OPENCONFIRM, s.counters.last_error
    s.receive_data(KEEPALIVE, now)
    assert s.state is State.ESTABLISHED


def session_in(
    state: State, cfg: SessionConfig | None = None, **open_kw: object
) -> tuple[Session, float]:
    """A started session brought to ``state`` at time 10, actions drained."""
    s = new_session(cfg)
    now = 10.0
    s.start(now)
    if state is not State.IDLE:
        now = s.timers[Timer.IDLE_HOLD]
        s.handle_timer(now)
        assert s.state is State.CONNECT
        if state is State.ACTIVE:
            s.connection_failed(now)
        elif state is not State.CONNECT:
            s.connection_made(now)
            if state is not State.OPENSENT:
                s.receive_data(peer_open(**open_kw), now)
                if state is not State.OPENCONFIRM:
                    s.receive_data(KEEPALIVE, now)
    assert s.state is state
    s.take_actions()
    return s, now


def fire(s: Session, timer: Timer) -> float | None:
    """Run the clock to ``timer``'s deadline, firing (and discarding the actions of) any
    earlier timer first. Returns the time, or None when the timer is not armed."""
    s.take_actions()
    while timer in s.timers:
        deadline = s.timers[timer]
        earliest = s.next_deadline()
        assert earliest is not None
        if earliest < deadline:
            s.handle_timer(earliest)
            s.take_actions()
            continue
        s.handle_timer(deadline)
        return deadline
    return None


# ---- framing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (b"\xfe" + b"\xff" * 15 + struct.pack("!HB", 19, 4), (1, 1, b"")),
        (MARKER + struct.pack("!HB", 18, 4), (1, 2, b"\x00\x12")),
        (MARKER + struct.pack("!HB", 4097, 2), (1, 2, b"\x10\x01")),
        (MARKER + struct.pack("!HB", 20, 4), (1, 2, b"\x00\x14")),  # KEEPALIVE must be 19
        (MARKER + struct.pack("!HB", 28, 1), (1, 2, b"\x00\x1c")),  # OPEN >= 29
        (MARKER + struct.pack("!HB", 22, 2), (1, 2, b"\x00\x16")),  # UPDATE >= 23
        (MARKER + struct.pack("!HB", 20, 3), (1, 2, b"\x00\x14")),  # NOTIFICATION >= 21
        (MARKER + struct.pack("!HB", 24, 5), (1, 2, b"\x00\x18")),  # ROUTE-REFRESH == 23
        (MARKER + struct.pack("!HB", 19, 0), (1, 3, b"\x00")),
        (MARKER + struct.pack("!HB", 19, 6), (1, 3, b"\x06")),
        (MARKER + struct.pack("!HB", 19, 255), (1, 3, b"\xff")),
    ],
)
def test_header_errors_carry_the_rfc4271_notification(
    header: bytes, error: tuple[int, int, bytes]
) -> None:
    reader = framing.FrameReader()
    reader.feed(header)  # the header alone is enough: no waiting for the body
    with pytest.raises(BgpError) as info:
        reader.next_frame()
    assert (info.value.code, info.value.subcode, info.value.data) == error


@pytest.mark.parametrize(
    "msg",
    [
        KEEPALIVE,
        EOR_V4,
        CEASE,
        route_refresh_bytes(),
        message(1, b"\x00" * 10),
        message(2, b"\x00" * (4096 - 19)),
    ],
)
def test_valid_headers_pass(msg: bytes) -> None:
    assert framing.check_header(msg) == (msg[18], len(msg))


def test_reader_reassembles_messages_split_at_every_byte() -> None:
    stream = KEEPALIVE + EOR_V4 + CEASE + route_refresh_bytes(2, 1)
    reader = framing.FrameReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        while (frame := reader.next_frame()) is not None:
            got.append(frame)
        reader.compact()
    assert got == [(4, b""), (2, b"\x00" * 4), (3, b"\x06\x02"), (5, b"\x00\x02\x00\x01")]
    assert len(reader) == 0


def test_reader_keeps_a_partial_message_across_compaction() -> None:
    reader = framing.FrameReader()
    reader.feed(KEEPALIVE + EOR_V4[:10])
    assert reader.next_frame() == (4, b"")
    assert reader.next_frame() is None
    reader.compact()
    assert len(reader) == 10
    reader.feed(EOR_V4[10:])
    assert reader.next_frame() == (2, b"\x00" * 4)
    reader.clear()
    assert len(reader) == 0


def test_notification_encoding_round_trips_and_truncates_long_data() -> None:
    n = Notification(6, 2, b"\x05bye!!")
    data = framing.encode_notification(n)
    assert data == notification_bytes(6, 2, b"\x05bye!!")
    assert framing.decode_notification(data[19:]) == n
    long = framing.encode_notification(Notification(3, 1, b"x" * 5000))
    assert len(long) == 4096
    assert framing.check_header(long) == (3, 4096)
    assert framing.encode_keepalive() == KEEPALIVE


def test_framing_and_fsm_are_pure() -> None:
    """No IO, no clock, no randomness of their own (DESIGN.md "Pure modules")."""
    forbidden = {
        "asyncio",
        "socket",
        "time",
        "os",
        "subprocess",
        "select",
        "selectors",
        "threading",
        "exabgp",
        "pyroute2",
        "uvloop",
        "datetime",
    }
    for module in (fsm_module, framing):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        assert not imported & forbidden, module.__name__
        # ``random`` only names the type of the injected generator
        uses = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
        }
        assert uses <= {"Random"}, module.__name__


# ---- every state x every event -------------------------------------------------------------

S = State
INPUTS: dict[str, Callable[[Session, float], None]] = {
    "start": lambda s, now: s.start(now),
    "stop": lambda s, now: s.stop(now, ADMIN_SHUTDOWN),
    "stop_without_notification": lambda s, now: s.stop(now, None),
    "connection_made": lambda s, now: s.connection_made(now),
    "connection_failed": lambda s, now: s.connection_failed(now),
    "connection_lost": lambda s, now: s.connection_lost(now),
    "recv_open": lambda s, now: s.receive_data(peer_open(), now),
    "recv_keepalive": lambda s, now: s.receive_data(KEEPALIVE, now),
    "recv_update": lambda s, now: s.receive_data(EOR_V4, now),
    "recv_notification": lambda s, now: s.receive_data(CEASE, now),
    "recv_route_refresh": lambda s, now: s.receive_data(route_refresh_bytes(), now),
    "recv_bad_marker": lambda s, now: s.receive_data(BAD_MARKER, now),
    "recv_bad_length": lambda s, now: s.receive_data(BAD_LENGTH, now),
    "recv_bad_type": lambda s, now: s.receive_data(BAD_TYPE, now),
}
TIMERS = {
    "timer_connect_retry": Timer.CONNECT_RETRY,
    "timer_hold": Timer.HOLD,
    "timer_keepalive": Timer.KEEPALIVE,
    "timer_idle_hold": Timer.IDLE_HOLD,
}
NOT_ARMED = None  # the timer cannot expire in this state: it is never armed there
_NO_CONNECTION_MESSAGES = (
    "open",
    "keepalive",
    "update",
    "notification",
    "route_refresh",
    "bad_marker",
    "bad_length",
    "bad_type",
)
# bytes of a closed connection: dropped
_NO_CONN: dict[str, tuple[State | None, list[str]] | None] = {
    f"recv_{m}": (None, []) for m in _NO_CONNECTION_MESSAGES
}


def _table() -> dict[tuple[State, str], tuple[State | None, list[str]] | None]:
    """(state, event) -> (new state, actions), None for "not armed" timers. A new state of
    None means "unchanged"."""

    def hdr(sub: int, *after: str) -> tuple[State, list[str]]:
        return S.IDLE, [f"send NOTIFICATION 1/{sub}", "disconnect", *after]

    def fsm_error(sub: int, *after: str) -> tuple[State, list[str]]:
        return S.IDLE, [f"send NOTIFICATION 5/{sub}", "disconnect", *after]

    t: dict[State, dict[str, tuple[State | None, list[str]] | None]] = {
        S.IDLE: {
            "start": (None, []),
            "stop": (None, []),
            "stop_without_notification": (None, []),
            "connection_made": (None, ["disconnect"]),  # §8.2.2: Idle refuses connections
            "connection_failed": (None, []),
            "connection_lost": (None, []),
            **_NO_CONN,
            "timer_connect_retry": NOT_ARMED,
            "timer_hold": NOT_ARMED,
            "timer_keepalive": NOT_ARMED,
            "timer_idle_hold": (S.CONNECT, ["connect"]),
        },
        S.CONNECT: {
            "start": (None, []),
            "stop": (S.IDLE, ["disconnect"]),
            "stop_without_notification": (S.IDLE, ["disconnect"]),
            "connection_made": (S.OPENSENT, ["send OPEN"]),
            "connection_failed": (S.ACTIVE, []),
            "connection_lost": (S.ACTIVE, []),
            **_NO_CONN,
            "timer_connect_retry": (None, ["disconnect", "connect"]),
            "timer_hold": NOT_ARMED,
            "timer_keepalive": NOT_ARMED,
            "timer_idle_hold": NOT_ARMED,
        },
        S.ACTIVE: {
            "start": (None, []),
            "stop": (S.IDLE, []),
            "stop_without_notification": (S.IDLE, []),
            "connection_made": (S.OPENSENT, ["send OPEN"]),
            "connection_failed": (None, []),
            "connection_lost": (None, []),
            **_NO_CONN,
            "timer_connect_retry": (S.CONNECT, ["connect"]),
            "timer_hold": NOT_ARMED,
            "timer_keepalive": NOT_ARMED,
            "timer_idle_hold": NOT_ARMED,
        },
        S.OPENSENT: {
            "start": (None, []),
            "stop": (S.IDLE, ["send NOTIFICATION 6/2", "disconnect"]),
            "stop_without_notification": (S.IDLE, ["disconnect"]),
            "connection_made": (None, []),
            "connection_failed": (S.ACTIVE, []),
            "connection_lost": (S.ACTIVE, []),
            "recv_open": (S.OPENCONFIRM, ["send KEEPALIVE"]),
            "recv_keepalive": fsm_error(1),
            "recv_update": fsm_error(1),
            "recv_notification": (S.IDLE, ["disconnect"]),
            "recv_route_refresh": fsm_error(1),
            "recv_bad_marker": hdr(1),
            "recv_bad_length": hdr(2),
            "recv_bad_type": hdr(3),
            "timer_connect_retry": NOT_ARMED,
            "timer_hold": (S.IDLE, ["send NOTIFICATION 4/0", "disconnect"]),
            "timer_keepalive": NOT_ARMED,
            "timer_idle_hold": NOT_ARMED,
        },
        S.OPENCONFIRM: {
            "start": (None, []),
            "stop": (S.IDLE, ["send NOTIFICATION 6/2", "disconnect"]),
            "stop_without_notification": (S.IDLE, ["disconnect"]),
            "connection_made": (None, []),
            "connection_failed": (S.IDLE, []),
            "connection_lost": (S.IDLE, []),
            "recv_open": fsm_error(2),
            "recv_keepalive": (S.ESTABLISHED, ["established"]),
            "recv_update": fsm_error(2),
            "recv_notification": (S.IDLE, ["disconnect"]),
            "recv_route_refresh": fsm_error(2),
            "recv_bad_marker": hdr(1),
            "recv_bad_length": hdr(2),
            "recv_bad_type": hdr(3),
            "timer_connect_retry": NOT_ARMED,
            "timer_hold": (S.IDLE, ["send NOTIFICATION 4/0", "disconnect"]),
            "timer_keepalive": (None, ["send KEEPALIVE"]),
            "timer_idle_hold": NOT_ARMED,
        },
        S.ESTABLISHED: {
            "start": (None, []),
            "stop": (S.IDLE, ["send NOTIFICATION 6/2", "disconnect", "down"]),
            "stop_without_notification": (S.IDLE, ["disconnect", "down graceful"]),
            "connection_made": (None, []),
            "connection_failed": (S.IDLE, ["down graceful"]),
            "connection_lost": (S.IDLE, ["down graceful"]),
            "recv_open": fsm_error(3, "down"),
            "recv_keepalive": (None, []),
            "recv_update": (None, ["update"]),
            "recv_notification": (S.IDLE, ["disconnect", "down"]),
            "recv_route_refresh": (None, ["refresh"]),
            "recv_bad_marker": hdr(1, "down"),
            "recv_bad_length": hdr(2, "down"),
            "recv_bad_type": hdr(3, "down"),
            "timer_connect_retry": NOT_ARMED,
            "timer_hold": (S.IDLE, ["send NOTIFICATION 4/0", "disconnect", "down graceful"]),
            "timer_keepalive": (None, ["send KEEPALIVE"]),
            "timer_idle_hold": NOT_ARMED,
        },
    }
    return {(state, event): outcome for state, row in t.items() for event, outcome in row.items()}


TABLE = _table()
EVENTS = [*INPUTS, *TIMERS]


def test_the_table_covers_every_state_and_event() -> None:
    assert set(TABLE) == {(state, event) for state in State for event in EVENTS}


@pytest.mark.parametrize(("state", "event"), list(TABLE), ids=lambda v: str(v))
def test_state_event_table(state: State, event: str) -> None:
    s, now = session_in(state)
    expected = TABLE[state, event]
    if event in TIMERS:
        timer = TIMERS[event]
        at = fire(s, timer)
        if expected is NOT_ARMED:
            assert at is None, f"{timer.name} must not be armed in {state}"
            return
        assert at is not None, f"{timer.name} must be armed in {state}"
    else:
        assert expected is not None
        INPUTS[event](s, now)
    assert expected is not None
    new_state, actions = expected
    assert describe(s.take_actions()) == actions
    assert s.state is (new_state or state)


@pytest.mark.parametrize("state", list(State), ids=str)
def test_after_any_event_a_started_session_always_has_a_deadline(state: State) -> None:
    """Liveness: a started session is never stuck without a timer (hold time is not 0)."""
    for event in EVENTS:
        if event.startswith("stop"):
            continue
        s, now = session_in(state)
        if event in TIMERS:
            fire(s, TIMERS[event])
        else:
            INPUTS[event](s, now)
        assert s.next_deadline() is not None, (state, event)


# ---- OPEN handling ---------------------------------------------------------------------------


def test_opensent_sends_our_open_and_waits_four_minutes() -> None:
    s, now = session_in(State.CONNECT, config(add_path_receive=True, restart_time=90))
    s.connection_made(now)
    [send] = s.take_actions()
    assert isinstance(send, Send)
    sent = Codec(ASN, ASN).decode_open(send.data[19:])
    assert sent.asn == ASN and sent.hold_time == 90 and sent.router_id == LOCAL_ID
    assert sent.capabilities.families == {IPV4_UNICAST, IPV6_UNICAST}
    assert sent.capabilities.route_refresh
    gr = sent.capabilities.graceful_restart
    assert gr is not None and gr.restart_time == 90 and not gr.restarting
    assert {fam for fam, _ in sent.capabilities.add_path} == {IPV4_UNICAST, IPV6_UNICAST}
    assert s.timers == {Timer.HOLD: now + 240}


def test_restarting_sets_the_r_bit_until_cleared() -> None:
    s, now = session_in(State.CONNECT, config(restarting=True))
    s.connection_made(now)
    [send] = s.take_actions()
    assert isinstance(send, Send)
    gr = Codec(ASN, ASN).decode_open(send.data[19:]).capabilities.graceful_restart
    assert gr is not None and gr.restarting
    s.clear_restarting()
    s.stop(now, None)
    s.start(now)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    s.connection_made(now)
    sends = [a for a in s.take_actions() if isinstance(a, Send)]
    gr = Codec(ASN, ASN).decode_open(sends[0].data[19:]).capabilities.graceful_restart
    assert gr is not None and not gr.restarting


def test_no_graceful_restart_capability_when_disabled() -> None:
    s, now = session_in(State.CONNECT, config(graceful_restart=False))
    s.connection_made(now)
    [send] = s.take_actions()
    assert isinstance(send, Send)
    assert Codec(ASN, ASN).decode_open(send.data[19:]).capabilities.graceful_restart is None


@pytest.mark.parametrize(
    ("open_kw", "code"),
    [
        ({"asn": 65000}, (2, 2)),  # Bad Peer AS
        ({"router_id": LOCAL_ID}, (2, 3)),  # our own router id on an iBGP session
        ({"router_id": IPv4Address("0.0.0.0")}, (2, 3)),
    ],
    ids=["bad-peer-as", "same-router-id", "zero-router-id"],
)
def test_bad_open_is_refused_with_open_message_error(
    open_kw: dict[str, object], code: tuple[int, int]
) -> None:
    s, now = session_in(State.OPENSENT)
    msg = peer_open_message(**open_kw)  # type: ignore[arg-type]
    s.receive_data(Codec(msg.asn, msg.asn).encode_open(msg), now)
    actions = s.take_actions()
    [n] = sent_notifications(actions)
    assert (n.code, n.subcode) == code
    assert s.state is State.IDLE
    assert "OPEN Message Error" in s.counters.last_error


def test_unacceptable_hold_time_is_refused() -> None:
    s, now = session_in(State.OPENSENT)
    # hold time 1 cannot be encoded by a correct codec: patch the field in a valid OPEN
    data = bytearray(peer_open(hold=90))
    data[19 + 3 : 19 + 5] = struct.pack("!H", 1)
    s.receive_data(bytes(data), now)
    [n] = sent_notifications(s.take_actions())
    assert (n.code, n.subcode) == (2, 6)
    assert s.state is State.IDLE


def test_negotiated_hold_time_is_the_lower_offer_and_sets_the_timers() -> None:
    s, now = session_in(State.OPENSENT, config(hold_time=90, keepalive_time=30))
    s.receive_data(peer_open(hold=9), now)
    neg = s.negotiated
    assert neg is not None and neg.hold_time == 9 and neg.keepalive_time == 3
    assert s.timers == {Timer.HOLD: now + 9, Timer.KEEPALIVE: now + 3}


def test_hold_time_zero_means_no_keepalives_and_no_hold_timer() -> None:
    s, now = session_in(State.OPENSENT)
    s.receive_data(peer_open(hold=0), now)
    assert describe(s.take_actions()) == ["send KEEPALIVE"]
    assert s.timers == {}
    s.receive_data(KEEPALIVE, now)
    assert s.state is State.ESTABLISHED
    assert describe(s.take_actions()) == ["established"]
    assert s.next_deadline() is None
    s.handle_timer(now + 100_000)
    assert s.take_actions() == []
    assert s.state is State.ESTABLISHED


def test_messages_after_the_keepalive_in_one_read_are_handled_in_established() -> None:
    s, now = session_in(State.OPENCONFIRM)
    s.receive_data(KEEPALIVE + EOR_V4 + EOR_V4 + route_refresh_bytes(2, 1), now)
    assert describe(s.take_actions()) == ["established", "update", "update", "refresh"]


def test_nothing_after_a_notification_is_read() -> None:
    s, now = session_in(State.ESTABLISHED)
    s.receive_data(EOR_V4 + CEASE + EOR_V4 + KEEPALIVE, now)
    actions = s.take_actions()
    assert describe(actions) == ["update", "disconnect", "down"]
    [down] = downs(actions)
    assert down.notification_received == Notification(6, 2)
    assert down.notification_sent is None
    assert s.counters.messages_in[MessageType.UPDATE] == 1
    assert "received NOTIFICATION Cease/Administrative Shutdown" in s.counters.last_error


def test_version_error_notification_in_opensent_is_not_punished() -> None:
    s, now = session_in(State.OPENSENT)
    before = s.idle_hold_time
    s.receive_data(notification_bytes(2, 1, b"\x00\x04"), now)
    assert s.state is State.IDLE
    assert s.idle_hold_time == before
    s2, now2 = session_in(State.OPENSENT)
    s2.receive_data(CEASE, now2)
    assert s2.idle_hold_time == 2 * before


# ---- UPDATE / ROUTE-REFRESH in Established --------------------------------------------------


def test_hold_timer_restarts_on_every_message() -> None:
    s, now = session_in(State.ESTABLISHED)
    assert s.timers[Timer.HOLD] == now + 90
    for msg in (KEEPALIVE, EOR_V4, route_refresh_bytes()):
        now += 50
        s.handle_timer(now)
        s.receive_data(msg, now)
        assert s.state is State.ESTABLISHED
        assert s.timers[Timer.HOLD] == now + 90


def test_end_of_rib_update_is_decoded_by_the_codec() -> None:
    s, now = session_in(State.ESTABLISHED)
    s.receive_data(EOR_V4, now)
    [ev] = s.take_actions()
    assert isinstance(ev, UpdateReceived)
    assert ev.update.end_of_rib == IPV4_UNICAST
    assert not ev.update.all_announced() and not ev.update.withdrawn


def test_malformed_update_sends_the_codecs_notification() -> None:
    s, now = session_in(State.ESTABLISHED)
    # withdrawn-routes length 10 in a 4-byte body: RFC 4271 §6.3 Malformed Attribute List
    s.receive_data(message(2, b"\x00\x0a\x00\x00"), now)
    actions = s.take_actions()
    [n] = sent_notifications(actions)
    assert n.code == 3
    [down] = downs(actions)
    assert down.notification_sent == n and not down.graceful
    assert s.state is State.IDLE


class ExplodingCodec(Codec):
    """The real codec with one method replaced by an unexpected exception."""

    explode: str = ""

    def decode_update(self, body: bytes):  # type: ignore[no-untyped-def]
        if self.explode == "update":
            raise KeyError("boom")
        return super().decode_update(body)

    def decode_open(self, body: bytes):  # type: ignore[no-untyped-def]
        if self.explode == "open":
            raise IndexError("boom")
        return super().decode_open(body)

    def encode_open(self, message: Open) -> bytes:
        if self.explode == "encode_open":
            raise ValueError("cannot")
        return super().encode_open(message)

    def decode_route_refresh(self, body: bytes):  # type: ignore[no-untyped-def]
        if self.explode == "route_refresh":
            raise ValueError("boom")
        return super().decode_route_refresh(body)


def exploding(what: str, state: State) -> tuple[Session, float]:
    codec = ExplodingCodec(ASN, ASN)
    s = new_session(codec=codec)
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    if state is not State.CONNECT:
        establish(s, now)
    s.take_actions()
    codec.explode = what
    return s, now


def test_unexpected_exception_decoding_an_update_is_malformed_attribute_list() -> None:
    s, now = exploding("update", State.ESTABLISHED)
    s.receive_data(EOR_V4, now)
    actions = s.take_actions()
    assert [(n.code, n.subcode) for n in sent_notifications(actions)] == [(3, 1)]
    assert s.state is State.IDLE
    assert "KeyError" in s.counters.last_error


def test_unexpected_exception_decoding_an_open_is_open_message_error() -> None:
    s, now = exploding("open", State.CONNECT)
    s.connection_made(now)
    s.take_actions()
    s.receive_data(peer_open(), now)
    assert [(n.code, n.subcode) for n in sent_notifications(s.take_actions())] == [(2, 0)]
    assert s.state is State.IDLE
    assert "IndexError" in s.counters.last_error


def test_an_open_the_codec_cannot_encode_goes_idle_and_retries() -> None:
    s, now = exploding("encode_open", State.CONNECT)
    s.connection_made(now)
    assert describe(s.take_actions()) == ["disconnect"]
    assert s.state is State.IDLE
    assert "cannot encode OPEN" in s.counters.last_error
    assert Timer.IDLE_HOLD in s.timers


def test_a_route_refresh_the_codec_chokes_on_is_ignored() -> None:
    s, now = exploding("route_refresh", State.ESTABLISHED)
    s.receive_data(route_refresh_bytes(), now)
    assert s.take_actions() == []
    assert s.state is State.ESTABLISHED


@pytest.mark.parametrize(
    "msg",
    [
        route_refresh_bytes(1, 1, subtype=1),
        route_refresh_bytes(1, 1, subtype=2),
        route_refresh_bytes(1, 1, subtype=7),
        route_refresh_bytes(2, 128),
    ],
    ids=["borr", "eorr", "unknown-subtype", "family-not-negotiated"],
)
def test_route_refresh_that_does_not_apply_is_ignored(msg: bytes) -> None:
    s, now = session_in(State.ESTABLISHED)
    s.receive_data(msg, now)
    assert s.state is State.ESTABLISHED
    assert [a for a in s.take_actions() if not isinstance(a, Send)] == []


def test_route_refresh_received_names_the_family() -> None:
    s, now = session_in(State.ESTABLISHED)
    s.receive_data(route_refresh_bytes(2, 1), now)
    assert s.take_actions() == [RouteRefreshReceived(IPV6_UNICAST)]


def test_request_route_refresh() -> None:
    s, now = session_in(State.OPENCONFIRM)
    assert not s.request_route_refresh(IPV4_UNICAST)  # not Established
    s.receive_data(KEEPALIVE, now)
    s.take_actions()
    assert s.request_route_refresh(IPV6_UNICAST)
    [send] = s.take_actions()
    assert isinstance(send, Send)
    assert split_messages(send.data) == [(5, b"\x00\x02\x00\x01")]
    assert not s.request_route_refresh((1, 128))  # not negotiated
    assert s.counters.messages_out[MessageType.ROUTE_REFRESH] == 1


def test_send_updates_only_in_established() -> None:
    s, now = session_in(State.OPENCONFIRM)
    assert not s.send_updates([EOR_V4])
    assert s.take_actions() == []
    s.receive_data(KEEPALIVE, now)
    s.take_actions()
    assert s.send_updates([EOR_V4, EOR_V4], now + 5)
    assert s.take_actions() == [Send(EOR_V4 + EOR_V4)]
    assert s.counters.messages_out[MessageType.UPDATE] == 2
    # §8.2.2: a sent UPDATE restarts the KeepaliveTimer
    assert s.timers[Timer.KEEPALIVE] == now + 5 + 30
    assert s.send_updates([])
    assert s.take_actions() == []


def test_counters() -> None:
    s, now = session_in(State.ESTABLISHED)
    c = s.counters
    assert c.established_since == now
    assert c.messages_in[MessageType.OPEN] == 1 and c.messages_in[MessageType.KEEPALIVE] == 1
    assert c.messages_out[MessageType.OPEN] == 1 and c.messages_out[MessageType.KEEPALIVE] == 1
    assert c.connect_attempts == 1 and c.flaps == 0
    s.receive_data(CEASE, now + 1)
    assert c.flaps == 1 and c.established_since is None
    assert c.messages_in[MessageType.NOTIFICATION] == 1


def test_large_reads_are_linear() -> None:
    """2 MiB of UPDATEs in one read (and in 64 KiB reads): ~90k messages each way."""
    s, now = session_in(State.ESTABLISHED)
    data = EOR_V4 * (2 * 1024 * 1024 // len(EOR_V4))
    s.receive_data(data, now)
    assert len(s.take_actions()) == len(data) // len(EOR_V4)
    for i in range(0, len(data), 65536):
        s.receive_data(data[i : i + 65536], now)
    assert len(s.take_actions()) == len(data) // len(EOR_V4)
    assert s.state is State.ESTABLISHED


# ---- timers: keepalive, hold, connect retry, damping ---------------------------------------


def test_hold_timer_expiry_sends_4_0_and_goes_idle_then_reconnects() -> None:
    s2, now2 = session_in(State.ESTABLISHED)
    for t in (30, 60, 89.9):  # our keepalives go out; the peer stays silent
        s2.handle_timer(now2 + t)
        assert describe(s2.take_actions()) == (["send KEEPALIVE"] if t != 89.9 else [])
    assert s2.state is State.ESTABLISHED
    s2.handle_timer(now2 + 90)
    actions = s2.take_actions()
    assert describe(actions) == ["send NOTIFICATION 4/0", "disconnect", "down graceful"]
    assert s2.state is State.IDLE
    assert "Hold Timer Expired" in s2.counters.last_error
    # automatic restart after the IdleHold
    assert s2.timers == {Timer.IDLE_HOLD: now2 + 90 + 2}
    s2.handle_timer(now2 + 92)
    assert describe(s2.take_actions()) == ["connect"]


def test_keepalives_are_sent_on_time_with_rfc4271_jitter() -> None:
    s = new_session(config(jitter=0.25), seed=7)
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    establish(s, now)
    s.take_actions()
    times = []
    t = now
    while t < now + 600:
        s.receive_data(KEEPALIVE, t)  # the peer is alive
        deadline = s.next_deadline()
        assert deadline is not None
        t = deadline
        s.handle_timer(t)
        if describe(s.take_actions()) == ["send KEEPALIVE"]:
            times.append(t)
    gaps = [b - a for a, b in zip([now, *times], times, strict=False)]
    assert len(gaps) >= 20
    assert all(30 * 0.75 <= g <= 30 for g in gaps), gaps
    assert len({round(g, 6) for g in gaps}) > len(gaps) // 2  # actually jittered


def test_connect_retry_backs_off_exponentially_to_the_cap() -> None:
    s = new_session(config(jitter=0.0))
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD)
    assert now == 2.0  # connect_delay
    waits = []
    for _ in range(7):
        assert describe(s.take_actions()) == ["connect"]
        s.connection_failed(now)
        assert s.state is State.ACTIVE
        nxt = fire(s, Timer.CONNECT_RETRY)
        assert nxt is not None
        waits.append(nxt - now)
        now = nxt
    assert waits == [5, 10, 20, 30, 30, 30, 30]
    # a connect that hangs is given up after the current interval and retried
    s.take_actions()
    assert s.state is State.CONNECT
    nxt = fire(s, Timer.CONNECT_RETRY)
    assert nxt == now + 30
    assert describe(s.take_actions()) == ["disconnect", "connect"]
    # reaching Established resets the backoff
    establish(s, now)
    s.receive_data(CEASE, now)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    s.take_actions()
    s.connection_failed(now)
    assert s.timers[Timer.CONNECT_RETRY] == now + 5


@pytest.mark.parametrize("seed", range(20))
def test_connect_retry_jitter_stays_within_bounds(seed: int) -> None:
    s = new_session(config(jitter=0.25), seed=seed)
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD)
    assert now is not None and 2 * 0.75 <= now <= 2
    waits = []
    for _ in range(8):
        s.take_actions()
        s.connection_failed(now)
        nxt = fire(s, Timer.CONNECT_RETRY)
        assert nxt is not None
        waits.append(nxt - now)
        now = nxt
    for wait, base in zip(waits, [5, 10, 20, 30, 30, 30, 30, 30], strict=True):
        assert base * 0.75 <= wait <= base, waits
    assert max(waits) <= 30  # the cap holds with jitter
    assert len(set(waits[3:])) > 1  # capped waits still differ


def test_jitter_differs_between_seeds_and_repeats_with_the_same_seed() -> None:
    def waits(seed: int) -> list[float]:
        s = new_session(config(jitter=0.25), seed=seed)
        s.start(0.0)
        now = fire(s, Timer.IDLE_HOLD) or 0.0
        out = [now]
        for _ in range(4):
            s.connection_failed(now)
            now = fire(s, Timer.CONNECT_RETRY) or 0.0
            out.append(now)
        return out

    assert waits(1) == waits(1)
    assert waits(1) != waits(2)


def flap(s: Session, now: float, after: float = 1.0) -> tuple[float, float]:
    """Connect, establish, and lose the session ``after`` seconds later (Cease received).
    Returns (time it went down, time of the next connect)."""
    assert describe(s.take_actions()) == ["connect"]
    establish(s, now)
    down_at = now + after
    s.handle_timer(down_at)
    s.receive_data(CEASE, down_at)
    assert s.state is State.IDLE
    s.take_actions()
    nxt = fire(s, Timer.IDLE_HOLD)
    assert nxt is not None
    return down_at, nxt


def test_idle_hold_doubles_on_flaps_up_to_the_cap() -> None:
    s = new_session(config())
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    waits = []
    for _ in range(9):
        down_at, now = flap(s, now)
        waits.append(now - down_at)
    assert waits == [2, 4, 8, 16, 32, 64, 120, 120, 120]
    assert s.counters.flaps == 9


def test_idle_hold_decays_while_established_is_stable() -> None:
    s = new_session(config())
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    for _ in range(5):
        _, now = flap(s, now)
    assert s.idle_hold_time == 64
    s.take_actions()
    establish(s, now)
    assert s.timers[Timer.IDLE_HOLD_DECAY] == now + 60
    # stable for 130 s: halved twice (64 -> 32 -> 16)
    t = now
    while t < now + 130:
        s.receive_data(KEEPALIVE, t)
        t += 10
        s.handle_timer(t)
    assert s.idle_hold_time == 16
    s.receive_data(CEASE, t)
    nxt = fire(s, Timer.IDLE_HOLD)
    assert nxt == t + 16
    assert s.idle_hold_time == 32  # the flap itself counts
    # long stability brings it back to connect_delay and the decay timer stops
    s.take_actions()
    establish(s, nxt)
    t = nxt
    while t < nxt + 600:
        s.receive_data(KEEPALIVE, t)
        t += 10
        s.handle_timer(t)
    assert s.idle_hold_time == 2
    assert Timer.IDLE_HOLD_DECAY not in s.timers


def test_a_flap_before_the_decay_period_does_not_decay() -> None:
    s = new_session(config())
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    for _ in range(3):
        _, now = flap(s, now)
    assert s.idle_hold_time == 16
    _, now = flap(s, now, after=59)
    assert s.idle_hold_time == 32


def test_graceful_drops_do_not_increase_damping() -> None:
    s, now = session_in(State.ESTABLISHED)
    before = s.idle_hold_time
    s.connection_lost(now)
    assert s.idle_hold_time == before
    assert s.timers == {Timer.IDLE_HOLD: now + before}


def test_opensent_failures_are_damped_too() -> None:
    s = new_session(config())
    s.start(0.0)
    now = fire(s, Timer.IDLE_HOLD) or 0.0
    waits = []
    for _ in range(4):
        s.take_actions()
        s.connection_made(now)
        s.receive_data(peer_open(asn=65000), now)  # refused: Bad Peer AS
        assert s.state is State.IDLE
        nxt = fire(s, Timer.IDLE_HOLD) or 0.0
        waits.append(nxt - now)
        now = nxt
    assert waits == [2, 4, 8, 16]


# ---- start / stop / passive --------------------------------------------------------------


def test_a_new_session_is_idle_with_no_deadline_until_started() -> None:
    s = new_session()
    assert s.state is State.IDLE and s.next_deadline() is None and s.take_actions() == []
    s.start(100.0)
    assert s.next_deadline() == 102.0  # connect_delay
    s.start(101.0)  # a second start changes nothing
    assert s.next_deadline() == 102.0


def test_stop_with_notification_in_established() -> None:
    s, now = session_in(State.ESTABLISHED)
    shutdown = Notification(6, 2, b"\x0bmaintenance")
    s.stop(now, shutdown)
    actions = s.take_actions()
    assert sent_notifications(actions) == [shutdown]
    [down] = downs(actions)
    assert down == SessionDown(down.reason, shutdown, None, False)
    assert "stopped" in down.reason
    assert s.state is State.IDLE and s.next_deadline() is None  # no automatic restart
    assert s.counters.last_error == ""  # a stop is not an error


def test_stop_without_notification_is_a_graceful_restart_stop() -> None:
    s, now = session_in(State.ESTABLISHED)
    s.stop(now, None)
    actions = s.take_actions()
    assert describe(actions) == ["disconnect", "down graceful"]
    [down] = downs(actions)
    assert down.notification_sent is None and down.notification_received is None
    assert s.next_deadline() is None


def test_stop_then_start_again() -> None:
    s, now = session_in(State.OPENSENT)
    s.stop(now)
    s.take_actions()
    s.receive_data(KEEPALIVE, now)  # leftovers of the closed connection
    s.connection_lost(now)
    assert s.take_actions() == [] and s.next_deadline() is None
    s.start(now + 1)
    assert s.next_deadline() == now + 3
    s.handle_timer(now + 3)
    assert describe(s.take_actions()) == ["connect"]


def test_stop_in_idle_cancels_the_automatic_restart() -> None:
    s, now = session_in(State.ESTABLISHED)
    s.receive_data(CEASE, now)
    assert Timer.IDLE_HOLD in s.timers
    s.take_actions()
    s.stop(now)
    assert s.next_deadline() is None
    s.handle_timer(now + 1000)
    assert s.take_actions() == []
    assert s.state is State.IDLE


def test_passive_session_waits_in_active_without_connecting() -> None:
    s = new_session(config(passive=True))
    s.start(0.0)
    s.handle_timer(2.0)
    assert s.state is State.ACTIVE
    assert s.take_actions() == [] and s.next_deadline() is None
    establish(s, 5.0)
    s.connection_lost(6.0)
    s.take_actions()
    s.handle_timer(8.0)
    assert s.state is State.ACTIVE and s.take_actions() == []
    s.connection_made(9.0)
    assert s.state is State.OPENSENT
    s.connection_lost(9.5)
    assert s.state is State.ACTIVE and s.next_deadline() is None


def test_session_config_is_validated() -> None:
    with pytest.raises(ValueError, match="hold_time"):
        config(hold_time=2)
    with pytest.raises(ValueError, match="AS"):
        config(peer_asn=0)
    with pytest.raises(ValueError, match="jitter"):
        config(jitter=1.5)
    with pytest.raises(ValueError, match="family"):
        config(families=frozenset())
    assert config(hold_time=0).hold_time == 0


# ---- graceful restart rule -----------------------------------------------------------------


def _lost(s: Session, now: float) -> None:
    s.connection_lost(now)


def _hold(s: Session, now: float) -> None:
    fire(s, Timer.HOLD)


@pytest.mark.parametrize(
    ("how", "local_gr", "peer_gr", "graceful"),
    [
        ("connection_lost", True, True, True),
        ("connection_lost", True, False, False),  # the peer did not advertise GR
        ("connection_lost", False, True, False),  # we do not do GR
        ("hold_timer", True, True, True),  # NOTIFICATION 4/0 sent, still graceful
        ("hold_timer", True, False, False),
        ("stop_silently", True, True, True),
        ("stop_with_cease", True, True, False),
        ("cease_received", True, True, False),
        ("hard_reset_received", True, True, False),
        ("update_error", True, True, False),
        ("fsm_error", True, True, False),
        ("header_error", True, True, False),
    ],
)
def test_graceful_flag(how: str, local_gr: bool, peer_gr: bool, graceful: bool) -> None:
    s, now = session_in(State.ESTABLISHED, config(graceful_restart=local_gr), gr=peer_gr)
    if how == "connection_lost":
        s.connection_lost(now)
    elif how == "hold_timer":
        s.handle_timer(now + 90)
    elif how == "stop_silently":
        s.stop(now, None)
    elif how == "stop_with_cease":
        s.stop(now, ADMIN_SHUTDOWN)
    elif how == "cease_received":
        s.receive_data(CEASE, now)
    elif how == "hard_reset_received":
        s.receive_data(notification_bytes(6, 9), now)
    elif how == "update_error":
        s.receive_data(message(2, b"\x00\x0a\x00\x00"), now)
    elif how == "fsm_error":
        s.receive_data(peer_open(), now)
    elif how == "header_error":
        s.receive_data(BAD_MARKER, now)
    [down] = downs(s.take_actions())
    assert down.graceful is graceful
    assert s.state is State.IDLE


def test_session_down_only_follows_established() -> None:
    for state in (State.OPENSENT, State.OPENCONFIRM):
        s, now = session_in(state)
        s.receive_data(CEASE, now)
        assert downs(s.take_actions()) == []
        assert s.counters.flaps == 0


# ---- two sessions back to back -------------------------------------------------------------


class Wire:
    """Two real sessions over an in-memory "TCP connection": A connects, B is passive.
    What one sends, the other receives at the same virtual time, unless ``cut``."""

    def __init__(self, a_cfg: SessionConfig, b_cfg: SessionConfig, seed: int = 0) -> None:
        self.codec_a = Codec(a_cfg.local_asn, a_cfg.peer_asn)
        self.codec_b = Codec(b_cfg.local_asn, b_cfg.peer_asn)
        self.a = Session(a_cfg, self.codec_a, random.Random(seed))
        self.b = Session(b_cfg, self.codec_b, random.Random(seed + 1))
        self.now = 0.0
        self.connected = False
        self.cut = False  # black hole: bytes are lost, nobody notices
        self.events: dict[str, list[Action]] = {"a": [], "b": []}
        self.sent: dict[str, list[tuple[float, str]]] = {"a": [], "b": []}

    def name(self, s: Session) -> str:
        return "a" if s is self.a else "b"

    def pump(self) -> None:
        busy = True
        while busy:
            busy = False
            for me, other in ((self.a, self.b), (self.b, self.a)):
                for action in me.take_actions():
                    busy = True
                    self.apply(me, other, action)

    def apply(self, me: Session, other: Session, action: Action) -> None:
        if isinstance(action, Connect):
            if other.state is State.ACTIVE and not self.connected:
                self.connected = True
                me.connection_made(self.now)
                other.connection_made(self.now)
            else:
                me.connection_failed(self.now)
        elif isinstance(action, Send):
            for kind in describe([action]):
                self.sent[self.name(me)].append((self.now, kind))
            if self.connected and not self.cut:
                other.receive_data(action.data, self.now)
        elif isinstance(action, Disconnect):
            if self.connected:
                self.connected = False
                other.connection_lost(self.now)
        else:
            self.events[self.name(me)].append(action)

    def run_until(self, until: float) -> None:
        while True:
            self.pump()
            deadlines = [
                d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None
            ]
            if not deadlines or min(deadlines) > until:
                self.now = until
                return
            self.now = max(self.now, min(deadlines))
            for s in (self.a, self.b):
                deadline = s.next_deadline()
                if deadline is not None and deadline <= self.now:
                    s.handle_timer(self.now)


def wired(a_hold: int = 90, b_hold: int = 30, jitter: float = 0.0, seed: int = 0) -> Wire:
    a_cfg = config(hold_time=a_hold, jitter=jitter)
    b_cfg = config(
        router_id=PEER_ID, hold_time=b_hold, keepalive_time=30, passive=True, jitter=jitter
    )
    w = Wire(a_cfg, b_cfg, seed)
    w.a.start(0.0)
    w.b.start(0.0)
    return w


def test_two_sessions_reach_established_with_negotiated_timers() -> None:
    w = wired(a_hold=90, b_hold=30)
    w.run_until(5.0)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    [ea] = w.events["a"]
    [eb] = w.events["b"]
    assert isinstance(ea, Established) and isinstance(eb, Established)
    for neg, peer_id in ((ea.negotiated, PEER_ID), (eb.negotiated, LOCAL_ID)):
        assert neg.hold_time == 30 and neg.keepalive_time == 10
        assert neg.peer_router_id == peer_id
        assert neg.families == {IPV4_UNICAST, IPV6_UNICAST}
        assert neg.peer_graceful_restart is not None
    # both came up at t=2 (connect_delay): the hold timers run from the last message
    assert 2 + 30 <= w.a.timers[Timer.HOLD] <= w.now + 30
    assert [k for _, k in w.sent["a"]][:2] == ["send OPEN", "send KEEPALIVE"]


def test_two_sessions_keep_the_session_up_with_keepalives_on_time() -> None:
    w = wired(a_hold=90, b_hold=30)
    w.run_until(3600.0)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    for side in "ab":
        times = [t for t, kind in w.sent[side] if kind == "send KEEPALIVE"]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and all(g == 10 for g in gaps), (side, set(gaps))
        assert 350 <= len(times) <= 362
    assert len(w.events["a"]) == 1 and len(w.events["b"]) == 1


def test_two_sessions_with_jitter_stay_up() -> None:
    w = wired(a_hold=90, b_hold=30, jitter=0.25, seed=3)
    w.run_until(3600.0)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    times = [t for t, kind in w.sent["a"] if kind == "send KEEPALIVE"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(7.5 <= g <= 10 for g in gaps)


def test_two_sessions_exchange_updates_encoded_by_the_codec() -> None:
    w = wired()
    w.run_until(5.0)
    announce = [
        Announcement(ip_network(f"10.1.0.{i}/32"), ip_address("10.255.0.1")) for i in range(1, 200)
    ]
    messages = w.codec_b.encode_updates(announce, [ip_network("10.2.0.0/24")])
    assert w.b.send_updates(messages, w.now)
    w.pump()
    received = [e.update for e in w.events["a"] if isinstance(e, UpdateReceived)]
    prefixes = {r.prefix for u in received for r in u.all_announced()}
    assert prefixes == {a.prefix for a in announce}
    assert {p for u in received for p, _ in u.withdrawn} == {ip_network("10.2.0.0/24")}
    assert w.b.send_updates([w.codec_b.encode_end_of_rib(IPV6_UNICAST)])
    w.pump()
    last = w.events["a"][-1]
    assert isinstance(last, UpdateReceived) and last.update.end_of_rib == IPV6_UNICAST


def test_two_sessions_route_refresh() -> None:
    w = wired()
    w.run_until(5.0)
    assert w.a.request_route_refresh(IPV6_UNICAST)
    w.pump()
    assert w.events["b"][-1] == RouteRefreshReceived(IPV6_UNICAST)


def test_a_black_hole_ends_in_hold_timer_expiry_and_recovers() -> None:
    w = wired(a_hold=90, b_hold=30)
    w.run_until(5.0)
    w.cut = True
    last_heard = max(t for t, _ in w.sent["b"])  # what A last received from B
    w.run_until(last_heard + 29.99)
    assert w.a.state is State.ESTABLISHED
    w.run_until(last_heard + 30)
    [down_a] = downs(w.events["a"])
    assert down_a.notification_sent == Notification(4, 0)
    assert down_a.graceful  # the peer advertised GR: keep its routes as stale
    assert ("send NOTIFICATION 4/0") in [k for t, k in w.sent["a"] if t == last_heard + 30]
    [down_b] = downs(w.events["b"])  # B saw the connection close
    assert down_b.graceful and down_b.notification_received is None
    w.cut = False
    w.run_until(last_heard + 60)
    assert w.a.state is State.ESTABLISHED and w.b.state is State.ESTABLISHED
    assert w.a.counters.flaps == 1 and w.b.counters.flaps == 1


def test_a_peer_that_refuses_connections_is_retried_with_backoff() -> None:
    w = wired()
    w.b.stop(0.0)  # B refuses (not listening)
    w.run_until(100.0)
    connects = w.a.counters.connect_attempts
    # 2 s delay, then waits of 5, 10, 20, 30, 30 -> attempts at 2, 7, 17, 37, 67, 97
    assert connects == 6
    w.b.start(100.0)
    w.run_until(140.0)
    assert w.a.state is State.ESTABLISHED


# ---- garbage never escapes -------------------------------------------------------------------

VALID_MESSAGES = [
    KEEPALIVE,
    EOR_V4,
    route_refresh_bytes(),
    route_refresh_bytes(2, 1),
    CEASE,
    message(2, b"\x00\x00\x00\x00"),
    notification_bytes(3, 1, b"xyz"),
]


def check_invariants(s: Session, state_before: State) -> None:
    actions = s.take_actions()
    for action in actions:
        if isinstance(action, Send):
            split_messages(action.data)  # whatever we send is well framed
    assert isinstance(s.state, State)
    if s.state is State.IDLE:
        assert s.timers.keys() <= {Timer.IDLE_HOLD}
        assert s.next_deadline() is not None  # it will try again
        if state_before is State.ESTABLISHED:
            assert len(downs(actions)) == 1
    else:
        assert (
            s.state is State.ESTABLISHED
            or s.state is state_before
            or (state_before is State.OPENSENT and s.state is State.OPENCONFIRM)
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=6000),
    state=st.sampled_from([State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED]),
)
def test_random_bytes_never_raise(data: bytes, state: State) -> None:
    s, now = session_in(state)
    s.receive_data(data, now)
    check_invariants(s, state)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(min_size=1, max_size=300),
    state=st.sampled_from([State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED]),
)
def test_random_bodies_behind_valid_headers_never_raise(data: bytes, state: State) -> None:
    """Well-framed messages of every type with random bodies reach the codec."""
    s, now = session_in(state)
    for msg_type in (1, 2, 3, 5):
        if s.state is state:
            s.receive_data(message(msg_type, data), now)
    check_invariants(s, state)


@st.composite
def mutated_stream(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    msgs = draw(st.lists(st.sampled_from([*VALID_MESSAGES, peer_open()]), min_size=1, max_size=12))
    data = bytearray(b"".join(msgs))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[pos:]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return bytes(data), cuts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=mutated_stream(),
    state=st.sampled_from([State.OPENSENT, State.OPENCONFIRM, State.ESTABLISHED]),
)
def test_mutated_valid_streams_never_raise(stream: tuple[bytes, list[int]], state: State) -> None:
    data, cuts = stream
    s, now = session_in(state)
    last = 0
    for cut in [*cuts, len(data)]:
        s.receive_data(data[last:cut], now)
        last = cut
    check_invariants(s, state)


@settings(max_examples=100, deadline=None)
@given(
    msgs=st.lists(st.sampled_from([KEEPALIVE, EOR_V4, route_refresh_bytes(2, 1)]), max_size=30),
    cuts=st.lists(st.integers(0, 2000), max_size=10),
)
def test_chunking_does_not_change_the_result(msgs: list[bytes], cuts: list[int]) -> None:
    data = b"".join(msgs)
    whole, _ = session_in(State.ESTABLISHED)
    whole.receive_data(data, 10.0)
    pieces, _ = session_in(State.ESTABLISHED)
    last = 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        pieces.receive_data(data[last:cut], 10.0)
        last = cut
    assert pieces.take_actions() == whole.take_actions()
    assert pieces.counters.messages_in == whole.counters.messages_in


def test_the_first_start_waits_start_delay_later_starts_the_damped_idle_hold() -> None:
    s = new_session(config(jitter=0.0, start_delay=0.05))
    s.start(10.0)
    assert s.timers[Timer.IDLE_HOLD] == 10.05  # a fresh daemon connects at once
    now = fire(s, Timer.IDLE_HOLD)
    assert describe(s.take_actions()) == ["connect"]
    s.stop(now, None)
    s.take_actions()
    s.start(now)
    assert s.timers[Timer.IDLE_HOLD] == now + 2.0  # connect_delay: a restart is damped
    with pytest.raises(ValueError, match="start_delay"):
        config(start_delay=-1.0)
