"""The pruned ExaBGP (l3hostd/bgp/exabgp_prune.py) decodes exactly what the full one does.

The same corpus of UPDATEs -- good ones, the two attributes whose parsers are pruned
(BGP-LS, Prefix-SID), MP_REACH/MP_UNREACH of every pruned family (FlowSpec, EVPN, BGP-LS,
MUP, MVPN, VPLS, RTC), extended communities, and seeded random mutations of all of them --
is decoded in two processes: one where ExaBGP is imported before l3hostd (the full
package: nothing to prune any more) and one as the daemon imports it. Every outcome (the
decoded UPDATE, or the error and its NOTIFICATION code) must be the same.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, random, struct, sys
if sys.argv[1] == "full":
    import exabgp.bgp.message  # the whole package, before l3hostd can prune it
from ipaddress import IPv4Address
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import IPV4_UNICAST, IPV6_UNICAST, BgpError, Capabilities, Open

placeholder = type(sys.modules["exabgp.bgp.message.update.nlri.flow"]).__name__
both = frozenset({IPV4_UNICAST, IPV6_UNICAST})

def receiver(add_path):
    mode = 3 if add_path else 0
    caps = Capabilities(families=both, asn4=65000,
                        add_path=((IPV4_UNICAST, mode), (IPV6_UNICAST, mode)) if mode else ())
    ours = Open(65000, 90, IPv4Address("10.0.0.1"), caps)
    theirs = Open(65000, 90, IPv4Address("10.255.0.1"), caps)
    c = Codec(65000, 65000)
    c.negotiate(ours, theirs, 30)
    return c

def attr(flags, code, value):
    if flags & 0x10 or len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value

def update(attrs, nlri=b"", withdrawn=b""):
    head = struct.pack("!H", len(withdrawn)) + withdrawn
    return head + struct.pack("!H", len(attrs)) + attrs + nlri

good = (attr(0x40, 1, b"\x00") + attr(0x40, 2, b"") + attr(0x40, 3, bytes([192, 0, 2, 1]))
        + attr(0x40, 5, struct.pack("!L", 100)))
nlri = b"\x20\x0a\x00\x00\x01" + b"\x18\x0a\x00\x01"
families = [(1, 133), (1, 134), (2, 133), (25, 70), (16388, 71), (16388, 72), (1, 132),
            (25, 65), (1, 5), (2, 5), (1, 85), (2, 85), (1, 128), (1, 4)]
corpus = [update(good, nlri)]
corpus.append(update(good + attr(0x80, 29, bytes.fromhex("0403000400000001")), nlri))
corpus.append(update(good + attr(0xC0, 29, b"\x00\x01\x00"), nlri))
corpus.append(update(good + attr(0xC0, 40, bytes.fromhex("010007000000000064")), nlri))
corpus.append(update(good + attr(0xC0, 40, b"\x05\x00"), nlri))
ext = bytes.fromhex("0002fde800000064800600004e6e6b28")  # route target, traffic-rate
corpus.append(update(good + attr(0xC0, 16, ext), nlri))
for afi, safi in families:
    mp = struct.pack("!HBB", afi, safi, 4) + bytes([192, 0, 2, 1])
    mp += b"\x00" + b"\x05\x01\x02\x03\x04\x05"
    corpus.append(update(good + attr(0x90, 14, mp)))
    corpus.append(update(attr(0x90, 15, struct.pack("!HB", afi, safi) + b"\x03\x01\x02\x03")))
rnd = random.Random(7)
base = list(corpus)
for _ in range(3000):
    b = bytearray(rnd.choice(base))
    for _ in range(rnd.randint(1, 4)):
        i = rnd.randrange(len(b))
        b[i] = rnd.randrange(256)
    corpus.append(bytes(b))

out = []
for add_path in (False, True):
    for body in corpus:
        c = receiver(add_path)
        try:
            u = c.decode_update(body)
            out.append("ok " + repr(u))
        except BgpError as err:
            n = err.notification()
            out.append(f"error {n.code}/{n.subcode}")
        except Exception as exc:
            out.append("exception " + type(exc).__name__)
print(json.dumps({"placeholder": placeholder, "outcomes": out}))
'''


def decode_all(mode: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_pruned_and_full_exabgp_decode_the_same() -> None:
    full, pruned = decode_all("full"), decode_all("pruned")
    assert full["placeholder"] == "module"  # the real package
    assert pruned["placeholder"] == "_Placeholder"  # what the daemon runs
    f, p = full["outcomes"], pruned["outcomes"]
    assert isinstance(f, list) and isinstance(p, list) and len(f) == len(p) > 6000
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(f, p, strict=True)) if a != b]
    assert not differ, differ[:5]
    assert not any(o.startswith("exception") for o in p)  # never an escaping exception
