"""Plaintext IPv4 test traffic, as bytes with correct lengths and checksums."""

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.packet import Raw

from ipsec_sa import LOCAL, LOCAL_HOST, REMOTE, REMOTE_HOST


def _payload(size, salt):
    # Not all zeros, so that a decryption or padding error cannot go unnoticed.
    return bytes((i * 7 + salt) & 0xFF for i in range(size))


def compressible(size):
    """Text that deflate shrinks a lot, for IPComp."""
    line = b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
    return (line * (size // len(line) + 1))[:size]


def sample_packets(src, dst):
    """ICMP, UDP and TCP of varied sizes, including 1-byte and 1400-byte payloads.

    Each packet differs in IP ID and TTL, so that a reordering or a header mix-up in the
    plugin changes the bytes. UDP ports are traceroute's, which tshark shows as plain data
    (port 53 would be parsed as DNS, 4500 as NAT-T ESP).
    """
    packets = [
        IP(src=src, dst=dst, id=0x1001, ttl=64, flags="DF") / ICMP(type=8, id=0x4242, seq=1) / Raw(_payload(56, 1)),
        IP(src=src, dst=dst, id=0x1002, ttl=63) / UDP(sport=40000, dport=33434) / Raw(_payload(1, 2)),
        IP(src=src, dst=dst, id=0x1003, ttl=62) / TCP(sport=40001, dport=80, seq=1000, flags="PA")
        / Raw(_payload(1400, 3)),
        IP(src=src, dst=dst, id=0x1004, ttl=61) / ICMP(type=8, id=0x4242, seq=2) / Raw(_payload(1, 4)),
        IP(src=src, dst=dst, id=0x1005, ttl=60, tos=0x10) / UDP(sport=40002, dport=33435) / Raw(_payload(333, 5)),
        IP(src=src, dst=dst, id=0x1006, ttl=59) / TCP(sport=40003, dport=22, flags="S"),
    ]
    return [bytes(p) for p in packets]


def compressible_packets(src, dst):
    """Packets that IPComp shrinks, plus a tiny one it cannot."""
    packets = [
        IP(src=src, dst=dst, id=0x2001) / TCP(sport=40010, dport=80, flags="PA") / Raw(compressible(1400)),
        IP(src=src, dst=dst, id=0x2002) / UDP(sport=40011, dport=514) / Raw(compressible(600)),
        IP(src=src, dst=dst, id=0x2003) / UDP(sport=40012, dport=33436) / Raw(b"x"),
    ]
    return [bytes(p) for p in packets]


def endpoints(bundle, direction):
    """(src, dst) of the plaintext packets for a bundle and a direction of the plugin."""
    if bundle.tunnel:
        return (REMOTE_HOST, LOCAL_HOST) if direction == "in" else (LOCAL_HOST, REMOTE_HOST)
    return (REMOTE, LOCAL) if direction == "in" else (LOCAL, REMOTE)


IP_FIELDS = ("version", "ihl", "tos", "len", "id", "flags", "frag", "ttl", "proto", "chksum",
             "src", "dst")


def ip_diff(got, want):
    """'' when the packets are equal, else which header fields and payload bytes differ."""
    if got == want:
        return ""
    try:
        g, w = IP(got), IP(want)
    except Exception as e:  # scapy cannot even parse it: show the bytes
        return f"unparsable ({e}): got {got.hex()}, want {want.hex()}"
    diffs = [f"{f} got {getattr(g, f)!r} want {getattr(w, f)!r}"
             for f in IP_FIELDS if getattr(g, f) != getattr(w, f)]
    got_payload, want_payload = got[g.ihl * 4:], want[w.ihl * 4:]
    if got_payload != want_payload:
        first = next((i for i, (a, b) in enumerate(zip(got_payload, want_payload)) if a != b),
                     min(len(got_payload), len(want_payload)))
        diffs.append(f"payload ({len(got_payload)} vs {len(want_payload)} bytes) differs from "
                     f"offset {first}")
    return "; ".join(diffs) or "bytes differ"
