"""Interop with strongSwan 5.9.8's charon (issue 4, acceptance 2): host-sim tun + the
plugin + our pluto in namespace `ours` against charon with kernel-libipsec in namespace
`sw`, IKEv1 with a pre-shared key, ESP tunnel between 10.1.0.0/24 and 10.2.0.0/24. charon
fakes NAT detection and always puts ESP in UDP 4500, so this also runs our NAT-T: IKE
floats to 4500 and the plugin gets SAs with UDP encapsulation. For aes128-sha1,
3des-sha1 and aes128gcm16, with our side as initiator and as responder: ping and a TCP
transfer through the tunnel, and a capture of the outer link with no cleartext packet
between the subnets. See docs/strongswan-peer.md.
"""

import os

import pytest

from ike import Pluto
from lab import Capture, HostSim
from peers.strongswan import CHARON, Charon, Conn
from scenarios import cleartext_leaks, payload_samples, tcp_transfer

OURS, PEER = "192.0.2.1", "192.0.2.2"
OUR_LAN, PEER_LAN = "10.1.0.0/24", "10.2.0.0/24"
OUR_HOST, PEER_HOST = "10.1.0.1", "10.2.0.1"
PSK = "strongswan interop: change me"
TRANSFER = 4 * 1024 * 1024

# our esp, our ike, charon's esp and ike proposals (PFS: charon needs the group named)
SUITES = {
    "aes128-sha1": ("aes128-sha1", "aes128-sha1-modp2048", "aes128-sha1", "aes128-sha1-modp2048"),
    "3des-sha1": ("3des-sha1", "3des-sha1-modp1536", "3des-sha1", "3des-sha1-modp1536"),
    "aes128gcm16": ("aes128gcm16", "aes128-sha1-modp2048", "aes128gcm16", "aes128-sha1-modp2048"),
}


@pytest.fixture(scope="module")
def charon_installed():
    if not os.path.exists(CHARON):
        pytest.fail(f"charon not found at {CHARON}: run .ci/setup-strongswan", pytrace=False)


class Pair:
    """Our machine and charon's, as a two-node Net (for ping/transfer/diagnostics)."""

    def __init__(self, lab, binaries, suite):
        esp, ike, sw_esp, sw_ike = SUITES[suite]
        self.lab = lab
        ours, sw = lab.netns("ours"), lab.netns("sw")
        lab.veth(ours, "wan0", sw, "wan0")
        lab.address(ours, "wan0", f"{OURS}/24")
        lab.address(sw, "wan0", f"{PEER}/24")
        for ns, host in ((ours, OUR_HOST), (sw, PEER_HOST)):
            lab.veth(ns, "lan0", ns, "lan1")   # no dummy driver here: a veth stands in
            lab.address(ns, "lan0", f"{host}/24")
        cfg = lab.workdir / "ours-cfg"
        cfg.mkdir()
        (cfg / "ipsec.cfg").write_text(
            f"[sw]\nlocal = {OURS}\nremote = {PEER}\nmode = tunnel\n"
            f"local_subnet = {OUR_LAN}\nremote_subnet = {PEER_LAN}\nesp = {esp}\n"
            f"keying = ike\nike = {ike}\npfs = yes\nreplay_window = 64\n")
        (cfg / "isecrets.cfg").write_text(f'{OURS} {PEER} : PSK "{PSK}"\n')
        self.pluto = Pluto(lab, ours, binaries["pluto"], "ours", cfg / "isecrets.cfg")
        self.hs = HostSim(lab, ours, binaries["host-sim"], binaries["plugin"], cfg, "wan0",
                          "ours", extra=["--daemon", self.pluto.socket])
        # Our own traffic to the peer's LAN leaves from our LAN address (host-sim routes
        # the selector without a source: 192.0.2.1 is outside local_subnet).
        lab.run(ours, "ip", "route", "replace", PEER_LAN, "dev", "tun0", "src", OUR_HOST)
        self.charon = Charon(lab, sw, name="charon")
        self.charon.start([Conn("ours", local=PEER, remote=OURS, local_ts=PEER_LAN,
                                remote_ts=OUR_LAN, psk=PSK, ike=sw_ike, esp=sw_esp,
                                pfs_group=sw_ike.rsplit("-", 1)[1])])
        self.ns = {"ours": ours, "sw": sw}

    def describe(self):
        return (f"\n===== ours\n{self.hs.describe()}\n{self.pluto.describe()}"
                f"\n===== charon\n{self.charon.describe()}")


@pytest.mark.parametrize("role", ["we-initiate", "charon-initiates"])
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_charon_carries_ping_and_tcp(lab, binaries, charon_installed, suite, role):
    p = Pair(lab, binaries, suite)
    capture = Capture(lab, p.ns["ours"], "wan0", "wan")
    if role == "charon-initiates":
        p.charon.initiate("ours", timeout=60)
    else:
        # The first packet is held and sets off ACQUIRE; it is released the moment our
        # plugin has the SAs, which can be before charon (which installs its inbound SA
        # only once it has Quick Mode message 3) accepts it. So it may be lost.
        lab.run(p.ns["ours"], "ping", "-n", "-c", "1", "-W", "3", PEER_HOST, check=False)
        p.charon.wait_established("ours", timeout=30)
    ping = lab.run(p.ns["ours"], "ping", "-n", "-c", "5", "-i", "0.2", "-W", "3", PEER_HOST,
                   check=False, timeout=60)
    assert "5 received" in ping.stdout, ping.stdout + p.describe()

    report = tcp_transfer(lab, p.ns["ours"], p.ns["sw"], PEER_HOST, TRANSFER, port=5401,
                          diagnostics=p.describe)
    print(f"{suite} {role}: {report}")

    sas = p.charon.sas()
    child = sas[0]["children"][0]
    assert child.get("encap") == "yes", child
    packets = capture.stop()
    pairs = [(OUR_LAN, PEER_LAN)]
    leaks = cleartext_leaks(packets, pairs)
    assert not leaks, "cleartext between the subnets:\n" + "\n".join(leaks[:20])
    esp_in_udp = [x for x in packets if x[9] == 17 and int.from_bytes(x[22:24], "big") == 4500
                  and x[28:32] != b"\0\0\0\0"]
    assert sum(len(x) for x in esp_in_udp) >= TRANSFER, "the transfer did not go as ESP in UDP"
    raw = b"".join(packets)
    for sample in payload_samples(seed=1):
        assert sample not in raw
    log = p.pluto.log_text()
    assert "ESP in UDP 4500->4500" in log, p.pluto.describe()
    assert "[ERR]" not in log, p.pluto.describe()
