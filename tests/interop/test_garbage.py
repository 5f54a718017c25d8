"""Garbage in: host-sim and the plugin must never crash, and nothing bad gets through.

Random bytes, random payloads behind well-formed IPv4 headers (many starting with a
configured SPI, so that they reach the ESP, AH and IPComp parsers), every truncation of
valid packets and every single-bit change of one. host-sim must exit 0 with its closing
line each time; packets from the peer must all be dropped, since a bundle covers every
protocol between the peer and us.
"""

import random
import struct

import pytest
from scapy.layers.inet import IP
from scapy.packet import Raw

from cases import Case
from ipsec_sa import (IPPROTO_AH, IPPROTO_ESP, IPPROTO_IPCOMP, IPPROTO_IPIP, LOCAL, REMOTE,
                      fix_ip_header)
from tools import run_replay
from traffic import compressible_packets, endpoints, sample_packets

TRANSPORT = Case("transport", esp="aes128-sha1", ah="sha256", ipcomp=True)
TUNNEL = Case("tunnel", esp="aes256gcm16")


def garbage_bundles():
    return [TRANSPORT.bundle("garbage-transport"), TUNNEL.bundle("garbage-tunnel")]


def peer_packet(protocol, payload, src=REMOTE, dst=LOCAL):
    return bytes(IP(src=src, dst=dst, proto=protocol) / Raw(payload))


@pytest.mark.parametrize("direction", ["in", "out"])
def test_random_bytes(direction, host_sim, tmp_path):
    rng = random.Random(f"random bytes {direction}")
    packets = [rng.randbytes(rng.choice([0, 1, 19, 20, 21, 40, rng.randrange(1600)]))
               for _ in range(500)]
    # Some that look like IPv4 at first glance: version 4, a plausible header length.
    packets += [bytes([0x45]) + rng.randbytes(rng.randrange(19, 200)) for _ in range(300)]
    run = run_replay(host_sim, tmp_path, garbage_bundles(), direction, packets)
    run.check_ran()
    assert run.passed + run.transformed + run.dropped <= len(packets), run.describe()


def test_random_ipsec_payloads_are_all_dropped(host_sim, tmp_path):
    bundles = garbage_bundles()
    spis = [(IPPROTO_ESP, b.keys_in.esp.spi) for b in bundles]
    spis += [(IPPROTO_AH, bundles[0].keys_in.ah.spi), (IPPROTO_IPCOMP, bundles[0].keys_in.cpi)]
    rng = random.Random("ipsec payloads")
    packets = []
    for _ in range(800):
        size = rng.choice([0, 1, 4, 7, 8, 12, 15, 16, 24, 28, 31, 32, rng.randrange(1400)])
        payload = bytearray(rng.randbytes(size))
        protocol, spi = rng.choice(spis)
        if rng.random() < 0.3:
            protocol, spi = rng.choice([IPPROTO_ESP, IPPROTO_AH, IPPROTO_IPCOMP, IPPROTO_IPIP,
                                        1, 6, 17]), None
        # Where each header keeps its SPI (RFC 4303, RFC 4302) or CPI (RFC 3173).
        if spi is not None and protocol == IPPROTO_ESP and size >= 4:
            payload[0:4] = struct.pack("!I", spi)
        elif spi is not None and protocol == IPPROTO_AH and size >= 8:
            payload[4:8] = struct.pack("!I", spi)
            payload[1] = rng.choice([payload[1], 4, 5, 1, 0, 255])  # AH length, words - 2
        elif spi is not None and protocol == IPPROTO_IPCOMP and size >= 4:
            payload[2:4] = struct.pack("!H", spi)
        packets.append(peer_packet(protocol, bytes(payload)))
    run = run_replay(host_sim, tmp_path, bundles, "in", packets)
    run.check_ran()
    assert (run.passed, run.transformed, run.dropped) == (0, 0, len(packets)), run.describe()


def valid_packets():
    """One protected packet per garbage bundle, as the peer sends them."""
    packets = []
    for bundle in garbage_bundles():
        plain = compressible_packets(*endpoints(bundle, "in"))[1]
        packets.append((bundle.name, bundle.peer_sender().protect(plain, compress=bundle.ipcomp)))
    return packets


@pytest.mark.parametrize("index", [0, 1], ids=["transport-esp-ah-ipcomp", "tunnel-gcm"])
def test_every_truncation_is_dropped(index, host_sim, tmp_path):
    name, whole = valid_packets()[index]
    sanity = run_replay(host_sim, tmp_path / "whole", garbage_bundles(), "in", [whole])
    sanity.check_ran()
    assert sanity.transformed == 1, f"the untruncated packet must pass\n{sanity.describe()}"
    # Cut short with the IP header's total length fixed, and cut short as captured (the
    # header then claims more bytes than there are).
    fixed = [fix_ip_header(whole[:n]) for n in range(20, len(whole))]
    raw = [whole[:n] for n in range(len(whole))]
    run = run_replay(host_sim, tmp_path / "cut", garbage_bundles(), "in", fixed + raw)
    run.check_ran()
    assert run.passed == 0 and run.transformed == 0, run.describe()
    assert run.dropped >= len(fixed), run.describe()


def test_every_bit_flip_after_the_ip_header_is_dropped(host_sim, tmp_path):
    bundle = Case("transport", esp="aes128-sha1").bundle("garbage-bitflip")
    plain = sample_packets(*endpoints(bundle, "in"))[3]
    whole = bundle.peer_sender().protect(plain)
    flipped = []
    for bit in range(20 * 8, len(whole) * 8):
        packet = bytearray(whole)
        packet[bit // 8] ^= 0x80 >> (bit % 8)
        flipped.append(bytes(packet))
    run = run_replay(host_sim, tmp_path, [bundle], "in", [whole] + flipped)
    run.check_ran()
    assert (run.passed, run.transformed, run.dropped) == (0, 1, len(flipped)), run.describe()
    assert run.output == [plain]
