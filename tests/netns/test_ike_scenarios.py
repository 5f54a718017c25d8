"""Every cfg-samples/ike scenario with our pluto on both sides: Main Mode and Quick Mode
on demand (the first packet is held, ACQUIRE, keys), then ping and a 10 MB TCP transfer
through host-sim tun, with a capture of the outer links that shows no cleartext packet of
a protected flow at any point, from the first held packet on."""

import pytest

from ike import IKE_SAMPLES, IkeNet
from scenarios import (SCENARIOS, TRANSFER_BYTES, cleartext_leaks, ipsec_bytes,
                       payload_samples)


def test_every_ike_sample_matches_a_scenario():
    on_disk = {p.name for p in IKE_SAMPLES.iterdir() if p.is_dir()}
    assert on_disk == set(SCENARIOS), "every scenario needs an IKE variant"
    for name, scenario in SCENARIOS.items():
        machines = {p.name for p in (IKE_SAMPLES / name).iterdir()
                    if (p / "ipsec.cfg").is_file() and (p / "isecrets.cfg").is_file()}
        assert machines == {n.name for n in scenario.nodes if n.hostsim}, name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_ike_scenario_keys_and_carries_traffic(lab, binaries, name):
    scenario = SCENARIOS[name]
    net = IkeNet(lab, scenario, binaries)
    captures = net.capture_wan()
    net.connect_dialups()
    for src, dst in scenario.flows:
        # The first packets wait for Main Mode and Quick Mode; ping's default deadline
        # per packet is long enough, and none of them may leave in clear meanwhile.
        net.ping(src, dst, count=3, timeout=60)
    src, dst = scenario.flows[0]
    report = net.transfer(src, dst, TRANSFER_BYTES)
    print(f"{name}: {src} -> {dst}: {report}")

    wan = [p for c in captures for p in c.stop()]
    leaks = cleartext_leaks(wan, scenario.protected)
    assert not leaks, "cleartext on the WAN:\n" + "\n".join(leaks[:20])
    assert ipsec_bytes(wan, scenario.protected) >= TRANSFER_BYTES
    raw = b"".join(wan)
    for sample in payload_samples():
        assert sample not in raw, "transfer data visible on the WAN"
    for node, pluto in net.plutos.items():
        text = pluto.log_text()
        assert "IPsec SA established" in text, f"{node}: {pluto.describe()}"
        assert "[ERR]" not in text, f"{node}: {pluto.describe()}"
    for node, hs in net.host_sims.items():
        assert hs.quit() == 0, f"{node}: {hs.describe()}"
