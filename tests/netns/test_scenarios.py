"""Every cfg-samples scenario as real machines: ping and a 10 MB TCP transfer through
host-sim tun, checked end to end, with a capture of the outer links that shows no
cleartext packet of a protected flow."""

import pytest

from scenarios import (CFG_SAMPLES, SCENARIOS, TRANSFER_BYTES, Net, cleartext_leaks,
                       ipsec_bytes, payload_samples)


def test_every_sample_scenario_is_laid_out():
    on_disk = {p.name for p in CFG_SAMPLES.iterdir() if p.is_dir() and p.name != "ike"}
    assert on_disk == set(SCENARIOS), "describe new cfg-samples scenarios in scenarios.py"
    for name, scenario in SCENARIOS.items():
        machines = {p.name for p in (CFG_SAMPLES / name).iterdir() if (p / "ipsec.cfg").is_file()}
        assert machines == {n.name for n in scenario.nodes if n.hostsim}, name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenario_carries_real_traffic_protected(lab, binaries, name):
    scenario = SCENARIOS[name]
    net = Net(lab, scenario, binaries)
    net.connect_dialups()
    captures = net.capture_wan()
    lan_captures = {gw: net.capture_lan(gw) for gw in scenario.lan_protected}

    for src, dst in scenario.flows:
        net.ping(src, dst, count=3)
    src, dst = scenario.flows[0]
    report = net.transfer(src, dst, TRANSFER_BYTES)
    print(f"{name}: {src} -> {dst}: {report}")

    wan = [p for c in captures for p in c.stop()]
    leaks = cleartext_leaks(wan, scenario.protected)
    assert not leaks, "cleartext on the WAN:\n" + "\n".join(leaks[:20])
    carried = ipsec_bytes(wan, scenario.protected)
    assert carried >= TRANSFER_BYTES, (
        f"only {carried} bytes of IPsec on the WAN for a {TRANSFER_BYTES}-byte transfer")
    raw = b"".join(wan)
    for sample in payload_samples():
        assert sample not in raw, "transfer data visible on the WAN"
    for gw, caps in lan_captures.items():
        lan = [p for c in caps for p in c.stop()]
        leaks = cleartext_leaks(lan, scenario.lan_protected[gw])
        assert not leaks, f"cleartext on {gw}'s LAN:\n" + "\n".join(leaks[:20])
        assert ipsec_bytes(lan, scenario.lan_protected[gw]) > 0, f"no IPsec on {gw}'s LAN"

    for node, hs in net.host_sims.items():
        assert hs.quit() == 0, f"{node}: {hs.describe()}"
        tun = lab.run(net.ns[node], "ip", "link", "show", hs.tun, check=False)
        assert tun.returncode != 0, f"{node}: {hs.tun} still exists after quit"
