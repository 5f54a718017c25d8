"""`host-sim tun --keys`: an AES-128-GCM bundle (`keying = ike`, tests/netns/configs/gcm)
keyed from a keys file, as `host-sim replay --keys` does, carries ping and TCP; without
the keys the plugin holds the bundle's traffic back."""

from pathlib import Path

from scenarios import Net, Node, Scenario, cleartext_leaks

CONFIGS = Path(__file__).resolve().parent / "configs"

GCM = Scenario(
    "gcm",
    [Node("host1", wan="192.0.2.61/24"), Node("host2", wan="192.0.2.62/24")],
    flows=[("host1", "host2")],
    protected=[("192.0.2.61/32", "192.0.2.62/32")],
)


def test_keys_file_keys_an_ike_bundle(lab, binaries):
    keys = {name: ["--keys", str(CONFIGS / "gcm" / name / "keys")] for name in ("host1", "host2")}
    net = Net(lab, GCM, binaries, config_root=CONFIGS, start=False)
    net.start("host1")
    net.start("host2", keys["host2"])
    unkeyed = net.ping("host1", "host2", count=2, check=False)
    assert unkeyed.returncode != 0, "traffic flowed through a bundle without keys"
    assert net.host_sims["host1"].stats()["out-transformed"] == 0

    net.host_sims["host1"].quit()
    capture = net.capture_wan()
    net.start("host1", keys["host1"])
    net.ping("host1", "host2", count=3)
    print(net.transfer("host1", "host2", 1024 * 1024))
    wire = [p for c in capture for p in c.stop()]
    assert not cleartext_leaks(wire, GCM.protected)
    spis = {p[20:24].hex() for p in wire if p[9] == 50}
    assert spis == {"00001001", "00001002"}, spis
