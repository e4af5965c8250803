"""Fuzzing the BGP input path (issue 7, part 1), CI-sized, and the bugs the fuzzer found.

The generator (``bench/fuzz_gen.py``), the reference reading of the bytes
(``bench/fuzz_ref.py``) and the oracle (``bench/fuzz_oracle.py``) are the ones the deep run
(``python -m bench.fuzz --inputs 1000000``) uses; here hypothesis drives the generator (every
random choice is one hypothesis draw, so a failure shrinks to a small input) against a real
:class:`~l3hostd.bgp.fsm.Session` + :class:`~l3hostd.bgp.codec.Codec` +
:class:`~l3hostd.bgp.rib.AdjRibIn` in every session profile (IPv4/IPv6/both, with and
without ADD-PATH, 2- or 4-octet AS, with and without graceful restart). What the oracle
checks is listed in ``bench/fuzz_oracle.py``: no exception escapes, every input ends in
acceptance, treat-as-withdraw or the one correct NOTIFICATION, the RIB equals a shadow of
what was accepted after every message.

Below the property tests: checks that the oracle does fail on a broken codec, session or
RIB, and one regression test per bug the fuzzer found.
"""

from __future__ import annotations

import functools
import struct
import sys
from ipaddress import IPv4Address, ip_network
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# bench/ is not an installed package: make it importable however pytest was started
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.fuzz_gen import (
    PROFILES,
    Expected,
    Input,
    Profile,
    attr,
    encoder_corpus,
    generate,
    message,
    mp_reach_value,
    mp_unreach_value,
    open_input,
    prefix_entry,
    stream_input,
)
from bench.fuzz_oracle import Harness, Verdict, peer_open
from l3hostd.bgp import fsm
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import IPV4_UNICAST, IPV6_UNICAST, BgpError, Open, Update
from l3hostd.bgp.rib import AdjRibIn

ASN = 65501
V4 = frozenset({IPV4_UNICAST})
V6 = frozenset({IPV6_UNICAST})
BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})


class HypothesisChooser:
    """The generator's Chooser, one hypothesis draw per decision."""

    def __init__(self, data: Any) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return int(self.data.draw(st.integers(low, high)))

    def raw(self, size: int) -> bytes:
        return bytes(self.data.draw(st.binary(min_size=size, max_size=size)))


@functools.cache
def corpus(index: int) -> list[tuple[bytes, Expected]]:
    return encoder_corpus(PROFILES[index], seed=index)


def feed_all(profile_index: int, inputs: list[tuple[Input, bool]]) -> Verdict:
    verdict = Verdict()
    harness = Harness(PROFILES[profile_index], seed=profile_index)
    for item, lose in inputs:
        harness.feed(item, verdict, lose_connection=lose)
        assert not verdict.failures, (PROFILES[profile_index].label(), item.label, item.data.hex())
    return verdict


PROFILE_INDEX = st.integers(0, len(PROFILES) - 1)
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=_HEALTH)


# ---- the property tests -------------------------------------------------------------------


@fuzz(120)
@given(profile=PROFILE_INDEX, data=st.data())
def test_fuzz_established_session(profile: int, data: Any) -> None:
    """Mutated OPEN/UPDATE/NOTIFICATION/ROUTE-REFRESH/KEEPALIVE, messages our own encoder
    made, random bytes: a few inputs in a row into one Established session."""
    c = HypothesisChooser(data)
    harness = Harness(PROFILES[profile], seed=profile)
    inputs = [
        (generate(c, PROFILES[profile], harness.open_body, corpus(profile)), c.integer(0, 9) == 0)
        for _ in range(c.integer(1, 6))
    ]
    feed_all(profile, inputs)


@fuzz(60)
@given(profile=PROFILE_INDEX, data=st.data())
def test_fuzz_streams_cut_anywhere(profile: int, data: Any) -> None:
    """Several messages (mostly valid) and junk back to back, cut at random points into
    receive_data calls; and plain random bytes, cut the same way."""
    c = HypothesisChooser(data)
    open_body = Harness(PROFILES[profile]).open_body
    inputs = [(stream_input(c, PROFILES[profile], open_body), False) for _ in range(2)]
    junk = c.raw(c.integer(1, 60))
    cuts = tuple(sorted({c.integer(1, len(junk)) for _ in range(3)} - {len(junk)}))
    inputs.append((Input(junk, cuts, {}, "random-bytes"), False))
    feed_all(profile, inputs)


@fuzz(60)
@given(profile=PROFILE_INDEX, data=st.data())
def test_fuzz_open_in_opensent(profile: int, data: Any) -> None:
    """The peer's OPEN mutated (version, AS, hold time, identifier, parameter and
    capability lengths and codes) while the session waits for it."""
    c = HypothesisChooser(data)
    open_body = Harness(PROFILES[profile]).open_body
    feed_all(profile, [(open_input(c, PROFILES[profile], open_body), False) for _ in range(3)])


def test_every_profile_reaches_established_and_accepts_the_encoder_corpus() -> None:
    for index, profile in enumerate(PROFILES):
        inputs = [(Input(m, (), {m: e}, "corpus"), False) for m, e in corpus(index)]
        verdict = feed_all(index, inputs)
        assert verdict.outcomes["accepted"] + verdict.outcomes["end-of-rib"] == len(inputs), (
            profile.label(),
            verdict.outcomes,
        )


def test_hold_timer_expiry_is_judged() -> None:
    """A peer that goes silent: KEEPALIVEs go out, Hold expires after exactly the
    negotiated 90 s with NOTIFICATION 4/0 (graceful: its routes stay as stale), and the
    session comes back. The oracle follows the timers, not only the input."""
    for index in (0, 1):  # with and without graceful restart
        corpus_input = [(Input(m, (), {m: e}, "corpus"), False) for m, e in corpus(index)[:3]]
        silence = [(Input(b"", (), {}, "nothing"), False) for _ in range(100)]
        verdict = feed_all(index, [*corpus_input, *silence, *corpus_input])
        assert verdict.outcomes["hold timer expired"] == 1, verdict.outcomes


# ---- the oracle can fail ----------------------------------------------------------------------


def _run_valid(profile: Profile, inputs: int = 60) -> Verdict:
    """Valid UPDATEs only (no mutation), so any failure comes from what was broken."""
    import random

    from bench.fuzz_gen import RandomChooser, one_update

    c = RandomChooser(random.Random(7))
    verdict = Verdict()
    harness = Harness(profile)
    for _ in range(inputs):
        data, expected, label = one_update(c, profile, mutate=False)
        assert expected is not None
        harness.feed(Input(data, (), {data: expected}, label), verdict)
    return verdict


def test_oracle_passes_the_real_thing() -> None:
    assert _run_valid(PROFILES[0]).failures == []


def test_oracle_sees_a_codec_that_loses_withdrawals(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Codec.decode_update

    def lossy(self: Codec, body: bytes) -> Update:
        update = real(self, body)
        return Update(update.all_announced(), update.withdrawn[1:], update.end_of_rib)

    monkeypatch.setattr(Codec, "decode_update", lossy)
    failures = _run_valid(PROFILES[0]).failures
    assert any("withdrawn" in f or "valid UPDATE decoded" in f for f in failures), failures


def test_oracle_sees_a_rib_that_keeps_withdrawn_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(AdjRibIn, "_remove", lambda self, key, ident: False)
    failures = _run_valid(PROFILES[0]).failures
    assert any("differ from the shadow" in f for f in failures), failures


def test_oracle_sees_an_exception_swallowed_by_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: Codec, body: bytes) -> Update:
        raise IndexError("boom")

    monkeypatch.setattr(Codec, "decode_update", broken)
    failures = _run_valid(PROFILES[0], inputs=2).failures
    assert any("swallowed exception" in f for f in failures), failures


def test_oracle_sees_a_wrong_notification(monkeypatch: pytest.MonkeyPatch) -> None:
    """A header error answered with the wrong subcode."""
    real = fsm.framing.check_header

    def wrong(buf: bytes | bytearray, offset: int = 0) -> tuple[int, int]:
        try:
            return real(buf, offset)
        except BgpError as err:
            raise BgpError(err.code, 3 if err.subcode != 3 else 2, err.data) from None

    monkeypatch.setattr(fsm.framing, "check_header", wrong)
    verdict = Verdict()
    harness = Harness(PROFILES[0])
    harness.feed(Input(message(4, b"", length_lie=5000)), verdict)
    assert any("header error" in f for f in verdict.failures), verdict.failures


# ---- regressions: one per bug the fuzzer found ------------------------------------------


def receiver(families: frozenset[tuple[int, int]] = BOTH) -> Codec:
    """Our codec, negotiated with a peer offering ``families`` (no ADD-PATH)."""
    theirs = peer_open(Profile(families, False, True, False))
    ours = Open(
        ASN,
        90,
        IPv4Address("10.255.0.11"),
        peer_open(Profile(BOTH, False, True, False)).capabilities,
    )
    codec = Codec(ASN, ASN)
    codec.negotiate(ours, theirs, 30)
    return codec


ORIGIN = attr(0x40, 1, b"\x00").pack()
AS_PATH_EMPTY = attr(0x40, 2, b"").pack()
NEXT_HOP = attr(0x40, 3, bytes([192, 0, 2, 1])).pack()
GOOD = ORIGIN + AS_PATH_EMPTY + NEXT_HOP
P1, P2, P3 = (ip_network(p) for p in ("10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"))
V6P = ip_network("2001:db8::1/128")
V6NH = ip_network("2001:db8:ffff::1/128").network_address.packed


def update(attrs: bytes, nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    return (
        struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    )


def nlri(*prefixes: Any) -> bytes:
    return b"".join(prefix_entry(p, None) for p in prefixes)


def test_fast_path_treat_as_withdraw_keeps_mp_unreach_withdrawals() -> None:
    """Bug: an UPDATE with IPv4 NLRI, a bad attribute and an MP_UNREACH_NLRI (IPv4 prefixes
    withdrawn through it) lost the MP_UNREACH withdrawals on the IPv4 fast path."""
    mp = attr(0x80, 15, mp_unreach_value(1, 1, [prefix_entry(P2, None)])).pack()
    body = update(attr(0x40, 1, b"\xff").pack() + AS_PATH_EMPTY + NEXT_HOP + mp, nlri(P1))
    for _ in range(2):  # the second time from the fast path's cache
        u = receiver().decode_update(body)
        assert u.treat_as_withdraw and not u.all_announced()
        assert set(u.withdrawn) == {(P1, 0), (P2, 0)}
    good = update(GOOD + mp, nlri(P1, P3))
    u = receiver().decode_update(good)
    assert {(r.prefix, r.path_id) for r in u.all_announced()} == {(P1, 0), (P3, 0)}
    assert u.withdrawn == ((P2, 0),)


def test_end_of_rib_is_only_an_empty_mp_unreach_alone() -> None:
    """Bug: ExaBGP called an UPDATE End-of-RIB when it held an empty MP_UNREACH_NLRI and
    another attribute (AIGP, a zero-length AS4_PATH), or an unknown AFI/SAFI."""
    empty_v6 = attr(0x80, 15, mp_unreach_value(2, 1, [])).pack()
    assert receiver().decode_update(update(empty_v6)).end_of_rib == IPV6_UNICAST
    for extra in (attr(0x90, 26, bytes(7)).pack(), attr(0xC0, 17, b"").pack()):
        u = receiver().decode_update(update(empty_v6 + extra))
        assert u == Update(), extra.hex()
    # an unknown AFI/SAFI, extended length (with a one-byte length ExaBGP resets: 3/9)
    unknown = bytes.fromhex("900f000373a64e")
    assert receiver().decode_update(update(unknown)) == Update()


@pytest.mark.parametrize(
    "extra", [attr(0xC0, 7, b""), attr(0xC0, 17, b""), attr(0xC0, 18, b"")], ids=str
)
def test_zero_length_discardable_attributes_are_discarded(extra: Any) -> None:
    """Bug: a zero-length AGGREGATOR, AS4_PATH or AS4_AGGREGATOR made ExaBGP treat the
    UPDATE as withdraw; RFC 7606 §7.7 / RFC 6793 §6 discard them and keep the routes."""
    u = receiver().decode_update(update(GOOD + extra.pack(), nlri(P1)))
    assert not u.treat_as_withdraw
    assert [(r.prefix, r.next_hop) for r in u.all_announced()] == [(P1, IPv4Address("192.0.2.1"))]


def test_repeated_as_path_after_an_empty_one_is_ignored() -> None:
    """Bug: ExaBGP drops an empty AS_PATH, then decoded a second AS_PATH as the first and
    treated the UPDATE as withdraw; RFC 7606 §3.g keeps the first and ignores repeats."""
    body = update(GOOD + attr(0x40, 2, bytes.fromhex("032a1bbd52e7b6")).pack(), nlri(P1))
    u = receiver().decode_update(body)
    assert not u.treat_as_withdraw
    assert u.all_announced()[0].attributes.as_path == ()


@pytest.mark.parametrize(
    ("attrs", "subcode"),
    [
        (b"\x80\x0f\x00", 9),  # MP_UNREACH_NLRI of zero length
        (b"\x80\x0e\x00" + ORIGIN + AS_PATH_EMPTY, 9),  # MP_REACH_NLRI of zero length
        (b"\x80\x0f\x00" + attr(0x80, 15, mp_unreach_value(2, 1, [nlri(V6P)])).pack(), 1),
        (b"\xff\x0e\x05", 1),  # an MP_REACH_NLRI whose extended length is cut
    ],
    ids=["empty-unreach", "empty-reach", "empty-then-second-unreach", "cut-header"],
)
def test_broken_mp_attributes_reset_the_session(attrs: bytes, subcode: int) -> None:
    """Bug: these were treat-as-withdraw; the NLRI they carry cannot be located, so RFC 7606
    §5.3/§3.j (and §3.g for a repeat) require a session reset."""
    with pytest.raises(BgpError) as err:
        receiver().decode_update(update(attrs))
    assert (err.value.code, err.value.subcode) == (3, subcode), err.value.reason


def test_ipv4_fields_are_ignored_without_ipv4_unicast() -> None:
    """Bug: a session that negotiated IPv6 only installed IPv4 routes from the classic NLRI
    field (and took them with the IPv6 routes into treat-as-withdraw)."""
    r = receiver(V6)
    assert r.decode_update(update(GOOD, nlri(P1))) == Update()
    assert r.decode_update(update(b"", withdrawn=nlri(P1))) == Update()
    assert r.decode_update(b"\x00\x00\x00\x00") == Update()  # IPv4 End-of-RIB: not ours
    mp = attr(0x80, 14, mp_reach_value(2, 1, V6NH, [nlri(V6P)])).pack()
    u = r.decode_update(update(mp + ORIGIN + AS_PATH_EMPTY, nlri(P1), withdrawn=nlri(P2)))
    assert [(x.prefix, x.path_id) for x in u.all_announced()] == [(V6P, 0)] and not u.withdrawn
    u = r.decode_update(update(attr(0x80, 15, mp_unreach_value(2, 1, [])).pack(), nlri(P1)))
    assert u == Update()  # not an End-of-RIB: it had an NLRI field


def open_body(params: bytes, asn: int = ASN, opt_len: int | None = None) -> bytes:
    n = len(params) if opt_len is None else opt_len
    return struct.pack("!BHH4sB", 4, asn, 90, bytes([10, 255, 0, 1]), n) + params


ASN4_CAP = b"\x02\x06\x41\x04" + struct.pack("!L", ASN)


@pytest.mark.parametrize(
    ("body", "subcode"),
    [
        (open_body(ASN4_CAP, opt_len=len(ASN4_CAP) + 4), 0),  # length runs past the end
        (open_body(b"\x01\x01\x00" + ASN4_CAP), 4),  # type 1 (ex-Authentication)
        (open_body(ASN4_CAP, asn=0), 2),  # My AS 0 (RFC 7607)
    ],
    ids=["opt-len-overrun", "param-type-1", "my-as-0"],
)
def test_open_errors_found_by_the_fuzzer(body: bytes, subcode: int) -> None:
    """Bugs: an Optional Parameters Length running past the message was accepted; an
    optional parameter of type 1 got the deprecated subcode 5; My AS 0 was accepted when a
    4-octet AS capability followed."""
    with pytest.raises(BgpError) as err:
        Codec(ASN, ASN).decode_open(body)
    assert (err.value.code, err.value.subcode) == (2, subcode), err.value.reason
    assert Codec(ASN, ASN).decode_open(open_body(ASN4_CAP)).asn == ASN


def test_same_prefix_in_nlri_and_mp_reach_checks_both_next_hops() -> None:
    """Bug: a prefix in the IPv4 NLRI field and again in an IPv4 MP_REACH_NLRI was taken
    for ExaBGP's link-local twin of an IPv6 prefix: the second route was dropped unchecked,
    so its next hop 0.0.0.0 went unnoticed and the UPDATE was accepted."""
    mp = attr(0x80, 14, mp_reach_value(1, 1, bytes(4), [nlri(P1)])).pack()
    u = receiver().decode_update(update(mp + GOOD, nlri(P1, P2)))
    assert u.treat_as_withdraw and not u.all_announced()
    assert set(u.withdrawn) == {(P1, 0), (P2, 0)}
    # ExaBGP's twin of an IPv6 prefix (32-byte next hop) is still folded into one route
    # with the global next hop, whatever the second address (FRR ignores a non-link-local
    # one too; the fuzzer's second finding was that second address being checked)
    for second in ("fe800000000000000000000000000001", "feff0000000000000000000000000001"):
        nh = V6NH + bytes.fromhex(second)
        twin = attr(0x80, 14, mp_reach_value(2, 1, nh, [nlri(V6P)])).pack()
        u = receiver().decode_update(update(twin + ORIGIN + AS_PATH_EMPTY))
        assert [(r.prefix, r.next_hop.packed) for r in u.all_announced()] == [(V6P, V6NH)]
