#!/usr/bin/env python3
"""Generates scapy_vectors.txt: RoCEv2 packets built by scapy, ICRC computed by scapy.

The Rust test `tests/scapy_vectors.rs` checks the crate's ICRC and parsers against every
vector, so that the ICRC is checked against an implementation written by someone else
(scapy.contrib.roce, BTH.compute_icrc). Run it again only to add vectors:

    pip install scapy
    python3 roce/tests/vectors/gen_vectors.py > roce/tests/vectors/scapy_vectors.txt

The output is deterministic for a given scapy version (fixed random seed).

Each vector line is `key=value` pairs separated by spaces:
  name         a short description
  ip           4 or 6
  opcode       BTH opcode (hex)
  qpn, psn     BTH destination QP and PSN (hex)
  tos, ttl     IPv4 TOS / IPv6 traffic class, IPv4 TTL / IPv6 hop limit
  payload_len  bytes of payload between the extension headers and the pad
  pad          BTH pad count
  canonical    1 if the packet is exactly what rxe (and the Rust emitter) would send for
               these values: IPv4, DF set, UDP checksum 0, reserved BTH bits zero
  icrc         the ICRC as a number; on the wire it is sent least significant byte first
  hex          the whole IP packet
"""

import random
import struct
import sys

import scapy
from scapy.compat import raw
from scapy.contrib.roce import BTH
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

# Extension headers per opcode, in wire order, and whether a payload follows (the rxe
# opcode table, drivers/infiniband/sw/rxe/rxe_opcode.c).
RC_TABLE = {
    0x00: ("SEND_FIRST", [], True),
    0x01: ("SEND_MIDDLE", [], True),
    0x02: ("SEND_LAST", [], True),
    0x03: ("SEND_LAST_WITH_IMMEDIATE", ["immdt"], True),
    0x04: ("SEND_ONLY", [], True),
    0x05: ("SEND_ONLY_WITH_IMMEDIATE", ["immdt"], True),
    0x06: ("RDMA_WRITE_FIRST", ["reth"], True),
    0x07: ("RDMA_WRITE_MIDDLE", [], True),
    0x08: ("RDMA_WRITE_LAST", [], True),
    0x09: ("RDMA_WRITE_LAST_WITH_IMMEDIATE", ["immdt"], True),
    0x0A: ("RDMA_WRITE_ONLY", ["reth"], True),
    0x0B: ("RDMA_WRITE_ONLY_WITH_IMMEDIATE", ["reth", "immdt"], True),
    0x0C: ("RDMA_READ_REQUEST", ["reth"], False),
    0x0D: ("RDMA_READ_RESPONSE_FIRST", ["aeth"], True),
    0x0E: ("RDMA_READ_RESPONSE_MIDDLE", [], True),
    0x0F: ("RDMA_READ_RESPONSE_LAST", ["aeth"], True),
    0x10: ("RDMA_READ_RESPONSE_ONLY", ["aeth"], True),
    0x11: ("ACKNOWLEDGE", ["aeth"], False),
    0x12: ("ATOMIC_ACKNOWLEDGE", ["aeth", "atomic_ack_eth"], False),
    0x13: ("COMPARE_SWAP", ["atomic_eth"], False),
    0x14: ("FETCH_ADD", ["atomic_eth"], False),
    0x16: ("SEND_LAST_WITH_INVALIDATE", ["ieth"], True),
    0x17: ("SEND_ONLY_WITH_INVALIDATE", ["ieth"], True),
}

TABLE = {}
for code, (name, headers, payload) in RC_TABLE.items():
    TABLE[code] = ("RC_" + name, headers, payload)
    if code <= 0x0B:
        TABLE[0x20 | code] = ("UC_" + name, headers, payload)
TABLE[0x64] = ("UD_SEND_ONLY", ["deth"], True)
TABLE[0x65] = ("UD_SEND_ONLY_WITH_IMMEDIATE", ["deth", "immdt"], True)
TABLE[0x81] = ("CNP", [], True)
UNKNOWN = [0x15, 0x1C, 0x44, 0xA0, 0xE7]

AETH_SYNDROMES = [0x1F, 0x00, 0x0E, 0x21, 0x60, 0x61, 0x62, 0x63, 0x64]


def ext_header(kind, rng):
    if kind == "reth":
        return struct.pack("!QII", rng.getrandbits(64), rng.getrandbits(32), rng.getrandbits(32))
    if kind == "aeth":
        return struct.pack("!I", (rng.choice(AETH_SYNDROMES) << 24) | rng.getrandbits(24))
    if kind == "atomic_eth":
        return struct.pack(
            "!QIQQ",
            rng.getrandbits(61) << 3,
            rng.getrandbits(32),
            rng.getrandbits(64),
            rng.getrandbits(64),
        )
    if kind == "atomic_ack_eth":
        return struct.pack("!Q", rng.getrandbits(64))
    if kind in ("immdt", "ieth"):
        return struct.pack("!I", rng.getrandbits(32))
    if kind == "deth":
        return struct.pack("!II", rng.getrandbits(32), rng.getrandbits(24))
    raise ValueError(kind)


def pad_for(length):
    return (4 - length % 4) % 4


def build(rng, opcode, payload_len, ip_version=4, tos=0, ttl=64, udp_checksum=False,
          reserved_bits=False, pad=None, flags_random=True):
    headers, has_payload = TABLE.get(opcode, ("UNKNOWN", [], True))[1:]
    if not has_payload:
        payload_len = 0
    if pad is None:
        pad = pad_for(payload_len) if has_payload else 0
    body = b"".join(ext_header(kind, rng) for kind in headers)
    body += bytes(rng.getrandbits(8) for _ in range(payload_len))
    body += b"\x00" * pad
    qpn = rng.choice([1, 0x11, 0x123456, 0xFFFFFF, rng.getrandbits(24)])
    psn = rng.choice([0, 0xFFFFFF, rng.getrandbits(24)])
    bth = BTH(
        opcode=opcode,
        solicited=rng.getrandbits(1) if flags_random else 0,
        migreq=rng.getrandbits(1) if flags_random else 0,
        padcount=pad,
        version=0,
        pkey=rng.choice([0xFFFF, 0x8001, 0x7FFF]),
        fecn=rng.getrandbits(1) if flags_random else 0,
        becn=rng.getrandbits(1) if flags_random else 0,
        resv6=rng.getrandbits(6) if reserved_bits else 0,
        dqpn=qpn,
        ackreq=rng.getrandbits(1) if flags_random else 0,
        resv7=rng.getrandbits(7) if reserved_bits else 0,
        psn=psn,
    )
    sport = 0xC000 | rng.getrandbits(14)
    udp = UDP(sport=sport, dport=4791) if udp_checksum else UDP(sport=sport, dport=4791, chksum=0)
    if ip_version == 4:
        ip = IP(src="192.168.%d.%d" % (rng.getrandbits(8), rng.getrandbits(8)),
                dst="10.%d.%d.%d" % (rng.getrandbits(8), rng.getrandbits(8), rng.getrandbits(8)),
                tos=tos, ttl=ttl, id=rng.getrandbits(16), flags="DF")
    else:
        ip = IPv6(src="fe80::%x" % rng.getrandbits(16), dst="2001:db8::%x" % rng.getrandbits(16),
                  tc=tos, fl=rng.getrandbits(20), hlim=ttl)
    packet = ip / udp / bth / Raw(body)
    data = raw(packet)
    canonical = ip_version == 4 and not udp_checksum and not reserved_bits
    return dict(
        ip=ip_version, opcode=opcode, qpn=qpn, psn=psn, tos=tos, ttl=ttl,
        payload_len=payload_len, pad=pad, canonical=int(canonical),
        icrc=int.from_bytes(data[-4:], "little"), hex=data.hex(),
    )


def main():
    rng = random.Random(4791)
    vectors = []
    # Every known opcode, with payload lengths that exercise every pad count.
    for opcode in sorted(TABLE):
        name = TABLE[opcode][0]
        lengths = [0, 1, 2, 3, 5, 64] if TABLE[opcode][2] else [0]
        if opcode == 0x81:
            lengths = [16]
        for payload_len in lengths:
            vector = build(rng, opcode, payload_len)
            vector["name"] = "%s/len%d" % (name, payload_len)
            vectors.append(vector)
    # Full-MTU payloads.
    for opcode in (0x01, 0x07, 0x0E, 0x0A, 0x10):
        vector = build(rng, opcode, 1024)
        vector["name"] = "%s/mtu1024" % TABLE[opcode][0]
        vectors.append(vector)
    vector = build(rng, 0x04, 4096)
    vector["name"] = "RC_SEND_ONLY/len4096"
    vectors.append(vector)
    # Masked fields with values other than the defaults.
    for tos, ttl in ((0x02, 1), (0xB8, 255), (0xFF, 0), (0x03, 64)):
        vector = build(rng, 0x0A, rng.randrange(0, 200), tos=tos, ttl=ttl)
        vector["name"] = "RC_RDMA_WRITE_ONLY/tos%02x_ttl%d" % (tos, ttl)
        vectors.append(vector)
    # A non-zero UDP checksum and non-zero reserved BTH bits.
    for opcode in (0x04, 0x11, 0x0C):
        vector = build(rng, opcode, 33, udp_checksum=True)
        vector["name"] = "%s/udp_checksum" % TABLE[opcode][0]
        vectors.append(vector)
        vector = build(rng, opcode, 33, reserved_bits=True)
        vector["name"] = "%s/reserved_bits" % TABLE[opcode][0]
        vectors.append(vector)
    # Unknown opcodes: BTH, payload, pad.
    for opcode in UNKNOWN:
        vector = build(rng, opcode, rng.randrange(0, 40))
        vector["name"] = "UNKNOWN_%02X" % opcode
        vectors.append(vector)
    # IPv6.
    for opcode, payload_len in ((0x04, 7), (0x11, 0), (0x0B, 100), (0x12, 0)):
        vector = build(rng, opcode, payload_len, ip_version=6, tos=0x8A, ttl=17)
        vector["name"] = "%s/ipv6" % TABLE[opcode][0]
        vectors.append(vector)

    out = sys.stdout
    out.write("# RoCEv2 vectors built with scapy %s (scapy.contrib.roce, ICRC from "
              "BTH.compute_icrc) by gen_vectors.py\n" % scapy.VERSION)
    out.write("# one vector per line: name ip opcode qpn psn tos ttl payload_len pad canonical "
              "icrc hex (see gen_vectors.py)\n")
    for vector in vectors:
        out.write(
            "name={name} ip={ip} opcode=0x{opcode:02x} qpn=0x{qpn:06x} psn=0x{psn:06x} "
            "tos=0x{tos:02x} ttl={ttl} payload_len={payload_len} pad={pad} "
            "canonical={canonical} icrc=0x{icrc:08x} hex={hex}\n".format(**vector)
        )


if __name__ == "__main__":
    main()
