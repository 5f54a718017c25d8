"""ipsecdump on a live host-sim tun (--control): after exactly N pings through the
host-to-host sample, every SA counts exactly N packets, as host-sim counted them too."""

import json
import subprocess

from scenarios import SCENARIOS, Net

PINGS = 7


def live_table(binaries, socket, json_output=True):
    argv = [str(binaries["ipsecdump"]), "--socket", str(socket)] + (["--json"] if json_output else [])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}"
    return json.loads(done.stdout) if json_output else done.stdout


def sa_packets(table, bundle):
    found = next(b for b in table["bundles"] if b["name"] == bundle)
    return {(sa["protocol"], sa["direction"]): sa["packets"] for sa in found["sas"]}


def test_ipsecdump_counts_what_the_test_sent(lab, binaries):
    sockets = {name: lab.workdir / f"{name}.sock" for name in ("host1", "host2")}
    net = Net(lab, SCENARIOS["host-to-host"], binaries,
              extra_args={name: ["--control", str(path)] for name, path in sockets.items()})
    for name, path in sockets.items():
        table = live_table(binaries, path)
        assert set(sa_packets(table, "host1-host2").values()) == {0}, (name, table)

    net.ping("host1", "host2", count=PINGS)

    every_sa = {("esp", "out"): PINGS, ("esp", "in"): PINGS,
                ("ah", "out"): PINGS, ("ah", "in"): PINGS}
    for name, path in sockets.items():
        counted = sa_packets(live_table(binaries, path), "host1-host2")
        assert counted == every_sa, f"{name}: {counted}"
        stats = net.host_sims[name].stats()
        assert (stats["out-transformed"], stats["in-transformed"]) == (PINGS, PINGS), stats
        # host-sim's own `dump json` reads the same table through the C ABI.
        dumped = json.loads("\n".join(net.host_sims[name].command("dump json")))
        assert sa_packets(dumped, "host1-host2") == every_sa, name
    text = live_table(binaries, sockets["host1"], json_output=False)
    assert f"packets {PINGS} " in text, text

    net.host_sims["host1"].quit()
    gone = subprocess.run([str(binaries["ipsecdump"]), "--socket", str(sockets["host1"])],
                          capture_output=True, text=True, timeout=20)
    assert gone.returncode == 1, "ipsecdump still reached host1 after it quit"
