"""ESP in UDP (RFC 3948): the host-to-gateway tunnel with `udp_encap = yes`
(tests/netns/configs/udp-encap). The plugins emit IPv4/UDP 4500/ESP themselves and take
such packets whole on the inbound hook; host-sim sends and receives them as raw IPv4 and
keeps UDP port 4500 bound, so that no kernel answers with port unreachable."""

from pathlib import Path

from scenarios import (TRANSFER_BYTES, Net, Node, Scenario, cleartext_leaks, ipsec_bytes,
                       payload_samples)

CONFIGS = Path(__file__).resolve().parent / "configs"

UDP_ENCAP = Scenario(
    "udp-encap",
    [Node("host", wan="192.0.2.51/24"),
     Node("gw", wan="192.0.2.52/24", lan="10.2.0.1/24"),
     Node("pc", hostsim=False, behind="gw", addr="10.2.0.10/24")],
    flows=[("host", "pc")],
    protected=[("192.0.2.51/32", "10.2.0.0/24"), ("192.0.2.51/32", "192.0.2.52/32")],
)


def udp_ports(packet):
    at = (packet[0] & 0x0F) * 4
    return int.from_bytes(packet[at:at + 2], "big"), int.from_bytes(packet[at + 2:at + 4], "big")


def test_esp_in_udp_carries_ping_and_tcp(lab, binaries):
    net = Net(lab, UDP_ENCAP, binaries, config_root=CONFIGS)
    capture = net.capture_wan()
    net.ping("host", "pc", count=3)
    print(net.transfer("host", "pc", TRANSFER_BYTES))

    wire = [p for c in capture for p in c.stop()]
    leaks = cleartext_leaks(wire, UDP_ENCAP.protected)
    assert not leaks, "cleartext on the WAN:\n" + "\n".join(leaks[:20])
    between = [p for p in wire if {p[12:16], p[16:20]} == {bytes([192, 0, 2, 51]),
                                                          bytes([192, 0, 2, 52])}]
    assert between, "nothing between host and gw on the WAN"
    assert all(p[9] == 17 and udp_ports(p) == (4500, 4500) for p in between), \
        "a packet between host and gw that is not UDP 4500 -> 4500"
    assert ipsec_bytes(wire, UDP_ENCAP.protected) >= TRANSFER_BYTES
    assert not any(p[9] == 1 and p[20] == 3 for p in wire), "an ICMP unreachable on the WAN"
    assert b"".join(wire).count(payload_samples()[0]) == 0
    for name in ("host", "gw"):
        stats = net.host_sims[name].stats()
        assert stats["in-transformed"] > 0 and stats["net-recv-errors"] == 0, (name, stats)
