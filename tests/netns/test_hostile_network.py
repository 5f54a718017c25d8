"""Garbage from the network never stops host-sim tun: an attacker on the WAN sends random
ESP, AH and IPComp payloads (some behind the SPI host1 really uses, and with host2's
address as source); host1's plugin drops them all, and traffic still flows afterwards."""

import textwrap

from scenarios import SCENARIOS, Net

# The SPI host1 accepts ESP with (cfg-samples/host-to-host/host1: esp_spi_in = 0xb27).
HOST1_ESP_SPI_IN = 0xB27
PER_PROTOCOL = 300

SENDER = textwrap.dedent("""
    import os, random, socket, struct, sys
    src, dst, count, spi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(7)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for proto in (50, 51, 108):
        for i in range(count):
            body = os.urandom(rng.choice([0, 1, 7, 8, 16, 40, 100, 1000, 1400]))
            if proto == 50 and i % 2:
                # A real SPI and sequence number: the plugin goes as far as the ICV.
                body = struct.pack("!II", spi, i) + body
            # Whole IPv4 headers, so that the source can be host2's (spoofed).
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i, 0, 64, proto, 0,
                                 socket.inet_aton(src), socket.inet_aton(dst))
            s.sendto(header + body, (dst, 0))
    s.close()
    print("sent", 3 * count)
""")


def test_random_ipsec_packets_are_dropped_and_traffic_flows(lab, binaries):
    net = Net(lab, SCENARIOS["host-to-host"], binaries)
    host1 = net.host_sims["host1"]
    net.ping("host1", "host2", count=2)
    before = host1.stats()

    attacker = net.add_wan_host("attacker", "192.0.2.99/24")
    sent = lab.run(attacker, "python3", "-c", SENDER, net.ip("host2"), net.ip("host1"),
                   str(PER_PROTOCOL), str(HOST1_ESP_SPI_IN))
    assert sent.stdout.strip() == f"sent {3 * PER_PROTOCOL}"
    net.ping("host2", "host1", count=3)

    after = host1.stats()
    assert host1.proc.poll() is None, "host-sim died"
    received = after["net-received"] - before["net-received"]
    dropped = after["in-drop"] - before["in-drop"]
    # The three echo requests (and their replies' ESP) come on top of the garbage.
    assert received >= 3 * PER_PROTOCOL, after
    assert dropped >= 3 * PER_PROTOCOL, after
    assert after["in-transformed"] - before["in-transformed"] == 3, after
    log = host1.log.read_text()
    assert "][SEC][" in log, "no security event logged for the garbage"
    assert len(log.splitlines()) < 3 * PER_PROTOCOL, "every dropped packet got its own log line"
    assert host1.quit() == 0
