"""NAT traversal through a real NAT: a dialer on a private LAN behind a masquerading router
(nftables in its own namespace) keys a tunnel to a road-warrior gateway, our pluto on both
sides. NAT-D shows the NAT, IKE floats to 4500, the plugins exchange ESP in UDP through
the NAT's port mapping; when the NAT maps the dialer anew, the gateway's ESP follows.

    dialer 10.9.0.2 --- 10.9.0.1 [nat, masquerade] 192.0.2.50 --- 192.0.2.42 gw (LAN 10.2.0.1)
"""

import shutil
import time

import pytest

from ike import Pluto
from lab import Capture, HostSim
from scenarios import cleartext_leaks, tcp_transfer

DIALER, NAT_IN, NAT_OUT, GW, GW_LAN = "10.9.0.2", "10.9.0.1", "192.0.2.50", "192.0.2.42", "10.2.0.1"
PSK = "behind a NAT: change me"


@pytest.fixture(scope="module")
def nft():
    path = shutil.which("nft")
    if path is None:
        pytest.fail("nft is missing (apt-get install nftables)", pytrace=False)
    return path


def write(dir_, cfg, secrets):
    dir_.mkdir(parents=True)
    (dir_ / "ipsec.cfg").write_text(cfg)
    (dir_ / "isecrets.cfg").write_text(secrets)
    return dir_


def test_dialer_behind_a_nat_reaches_a_road_warrior_gateway(lab, binaries, nft):
    dialer, nat, gw = lab.netns("dialer"), lab.netns("nat"), lab.netns("gw")
    lab.veth(dialer, "eth0", nat, "lan0")
    lab.veth(nat, "wan0", gw, "wan0")
    lab.address(dialer, "eth0", f"{DIALER}/24")
    lab.address(nat, "lan0", f"{NAT_IN}/24")
    lab.address(nat, "wan0", f"{NAT_OUT}/24")
    lab.address(gw, "wan0", f"{GW}/24")
    lab.veth(gw, "lan0", gw, "lan1")
    lab.address(gw, "lan0", f"{GW_LAN}/24")
    lab.run(dialer, "ip", "route", "add", "default", "via", NAT_IN)
    lab.forwarding(nat)
    lab.run(nat, nft, "add table ip nat")
    # UDP mappings are forgotten after a second of silence (for the re-mapping below).
    for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
        lab.run(nat, "sysctl", "-q", "-w", f"net.netfilter.{key}=1")
    lab.run(nat, nft, "add chain ip nat post { type nat hook postrouting priority 100 ; }")
    # Ports are mapped too (as a carrier-grade NAT does): the gateway sees the dialer at
    # 192.0.2.50:40xxx, and ESP in UDP must go back to that port.
    lab.run(nat, nft, "add rule ip nat post oifname wan0 meta l4proto udp masquerade to :40000-40999")
    lab.run(nat, nft, "add rule ip nat post oifname wan0 masquerade")

    d_cfg = write(lab.workdir / "dialer-cfg",
                  f"[to-gw]\nlocal = {DIALER}\nremote = {GW}\nmode = tunnel\n"
                  "remote_subnet = 10.2.0.0/24\nesp = aes128-sha1\nkeying = ike\n"
                  "replay_window = 64\n",
                  f'{DIALER} {GW} : PSK "{PSK}"\n')
    g_cfg = write(lab.workdir / "gw-cfg",
                  f"[road-warriors]\nlocal = {GW}\nremote = 0.0.0.0\nmode = tunnel\n"
                  "local_subnet = 10.2.0.0/24\nremote_subnet = 10.9.0.0/24\n"
                  "esp = aes128-sha1\nkeying = ike\nreplay_window = 64\n",
                  f'{GW} 0.0.0.0 : PSK "{PSK}"\n')
    plutos, sims = {}, {}
    for name, ns, cfg, outer in (("gw", gw, g_cfg, "wan0"), ("dialer", dialer, d_cfg, "eth0")):
        plutos[name] = Pluto(lab, ns, binaries["pluto"], name, cfg / "isecrets.cfg")
        sims[name] = HostSim(lab, ns, binaries["host-sim"], binaries["plugin"], cfg, outer,
                             name, extra=["--daemon", plutos[name].socket])
    # The dialer's own traffic into the tunnel leaves from its address.
    lab.run(dialer, "ip", "route", "replace", "10.2.0.0/24", "dev", "tun0", "src", DIALER)

    def describe():
        return "".join(f"\n===== {n}\n{sims[n].describe()}\n{plutos[n].describe()}"
                       for n in sims)

    capture = Capture(lab, gw, "wan0", "wan")
    lab.run(dialer, "ping", "-n", "-c", "1", "-W", "3", GW_LAN, check=False)
    ping = lab.run(dialer, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "3", GW_LAN,
                   check=False, timeout=60)
    assert "5 received" in ping.stdout, ping.stdout + describe()
    report = tcp_transfer(lab, dialer, gw, GW_LAN, 4 * 1024 * 1024, port=5501,
                          diagnostics=describe)
    print("through the NAT:", report)
    packets = capture.stop()

    # On the gateway's side of the NAT everything comes from the NAT's address: IKE
    # floated to 4500 and ESP in UDP, nothing else, and nothing of 10.9.0.0/24 in clear.
    assert not cleartext_leaks(packets, [("10.9.0.0/24", "10.2.0.0/24")])
    from_nat = [p for p in packets if p[12:16] == bytes(map(int, NAT_OUT.split(".")))]
    assert from_nat and all(p[9] == 17 for p in from_nat), "only UDP from the NAT"
    assert all(40000 <= int.from_bytes(p[20:22], "big") <= 40999 for p in from_nat), \
        "the NAT maps the ports"
    esp_in_udp = [p for p in from_nat if int.from_bytes(p[22:24], "big") == 4500
                  and p[28:32] != b"\0\0\0\0" and len(p) > 29]
    # And the gateway's ESP goes back to the mapped port.
    to_nat = [p for p in packets if p[16:20] == bytes(map(int, NAT_OUT.split(".")))
              and p[9] == 17 and int.from_bytes(p[20:22], "big") == 4500
              and p[28:32] != b"\0\0\0\0"]
    assert to_nat and all(40000 <= int.from_bytes(p[22:24], "big") <= 40999 for p in to_nat)
    assert sum(len(p) for p in esp_in_udp) >= 4 * 1024 * 1024, "the transfer was not ESP in UDP"
    # The NAT forgets the mapping (its UDP entries time out while the line is quiet) and
    # maps the dialer anew, to another range: the gateway's plugin follows the port of the
    # first authenticated packet, so replies find the dialer again.
    lab.run(nat, nft, "flush chain ip nat post")
    lab.run(nat, nft, "add rule ip nat post oifname wan0 meta l4proto udp masquerade to :41000-41999")
    lab.run(nat, nft, "add rule ip nat post oifname wan0 masquerade")
    time.sleep(3)
    capture = Capture(lab, gw, "wan0", "wan-after")
    ping = lab.run(dialer, "ping", "-n", "-c", "5", "-i", "0.2", "-W", "3", GW_LAN,
                   check=False, timeout=60)
    assert "5 received" in ping.stdout, ping.stdout + describe()
    time.sleep(1.5)
    after = capture.stop()
    back = [p for p in after if p[16:20] == bytes(map(int, NAT_OUT.split("."))) and p[9] == 17
            and p[28:32] != b"\0\0\0\0"]
    assert back and all(41000 <= int.from_bytes(p[22:24], "big") <= 41999 for p in back), \
        [int.from_bytes(p[22:24], "big") for p in back]
    assert "NAT mapping moved" in sims["gw"].log.read_text(), describe()

    for name in ("gw", "dialer"):
        log = plutos[name].log_text()
        assert "ESP in UDP" in log and "[ERR]" not in log, plutos[name].describe()
