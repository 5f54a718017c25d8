"""The dynamic-address sample: the dialer's bundle (local = 0.0.0.0) carries nothing
before the host's connect event, comes alive with the connected address, follows a change
of address, and stops again at link-down."""

import shutil

from scenarios import CFG_SAMPLES, SCENARIOS, Net, cleartext_leaks

FIRST = "192.0.2.41"
SECOND = "192.0.2.141"


def esp_between(packets, src, dst):
    return [p for p in packets
            if p[9] == 50 and p[12:16] == bytes(map(int, src.split("."))) and
            p[16:20] == bytes(map(int, dst.split(".")))]


def test_dialer_follows_connect_and_address_change(lab, binaries, tmp_path):
    # A copy, so that the gateway's operator can point it at the dialer's new address.
    root = tmp_path / "cfg"
    shutil.copytree(CFG_SAMPLES / "dynamic-address", root / "dynamic-address")
    scenario = SCENARIOS["dynamic-address"]
    net = Net(lab, scenario, binaries, config_root=root)
    dialer, gw = net.host_sims["dialer"], net.host_sims["gw"]
    gw_ip = net.ip("gw")
    capture = net.capture_wan()

    # The link has its address, but the host has not reported it: the plugin holds the
    # bundle back, and nothing leaves in clear either.
    lab.address(net.ns["dialer"], "wan0", f"{FIRST}/24")
    assert int(dialer.state["overhead"]) == 0, dialer.state
    failed = net.ping("dialer", "pc", count=2, check=False)
    assert failed.returncode != 0, failed.stdout
    dropped = dialer.stats()["out-drop"]
    assert dropped >= 2, f"the plugin dropped {dropped} of the dialer's packets"

    dialer.command(f"connect {FIRST}")
    assert int(dialer.state["overhead"]) > 0, dialer.state
    assert dialer.mtu() == 1500 - int(dialer.state["overhead"])
    net.ping("dialer", "pc", count=3)
    routes = lab.run(net.ns["dialer"], "ip", "route", "show", "dev", "tun0").stdout
    assert f"src {FIRST}" in routes, routes

    # A new address: the bundle moves at once; the gateway (manual keys name their peer)
    # accepts it once its operator has changed its config and reloaded.
    lab.address(net.ns["dialer"], "wan0", f"{SECOND}/24")
    dialer.command(f"connect {SECOND}")
    routes = lab.run(net.ns["dialer"], "ip", "route", "show", "dev", "tun0").stdout
    assert f"src {SECOND}" in routes, routes
    refused = net.ping("dialer", "pc", count=2, check=False)
    assert refused.returncode != 0, "the gateway accepted a peer its config does not name"
    gw_cfg = root / "dynamic-address" / "gw" / "ipsec.cfg"
    gw_cfg.write_text(gw_cfg.read_text().replace(f"remote = {FIRST}", f"remote = {SECOND}"))
    gw.command("reload")
    net.ping("dialer", "pc", count=3)
    gw_routes = lab.run(net.ns["gw"], "ip", "route", "show", "dev", "tun0").stdout
    assert SECOND in gw_routes and FIRST not in gw_routes, gw_routes

    dialer.command("link-down")
    assert int(dialer.state["overhead"]) == 0 and dialer.mtu() == 1500, dialer.state
    down = net.ping("dialer", "pc", count=2, check=False)
    assert down.returncode != 0, "traffic flowed after link-down"

    wire = [p for c in capture for p in c.stop()]
    pairs = [(f"{a}/32", "10.2.0.0/24") for a in (FIRST, SECOND)]
    pairs += [(f"{a}/32", f"{gw_ip}/32") for a in (FIRST, SECOND)]
    leaks = cleartext_leaks(wire, pairs)
    assert not leaks, "cleartext on the WAN:\n" + "\n".join(leaks[:20])
    # Three requests of the first good ping, two refused and three good of the second.
    assert len(esp_between(wire, FIRST, gw_ip)) >= 3
    assert len(esp_between(wire, SECOND, gw_ip)) >= 5
    assert len(esp_between(wire, gw_ip, SECOND)) >= 3, "the gateway never answered the new address"
    assert dialer.quit() == 0
