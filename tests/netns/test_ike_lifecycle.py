"""The keying daemon's life cycle under traffic (issue 4, acceptance 5): pluto killed in
the middle of a transfer and restarted, then `pinit`: the transfer completes; no
cleartext packet of the protected flow appears on the wire at any point. And rekeying
forced by short lifetimes during a transfer loses no packet."""

import json
import subprocess
import time

from ike import IKE_SAMPLES, IkeNet
from lab import LabError
from scenarios import SCENARIOS, TCP_HASH, cleartext_leaks, ipsec_bytes, wait_for

H2H = SCENARIOS["host-to-host"]


def start_transfer(net, src, dst, nbytes, rate=None, port=5301, timeout=180):
    """A TCP transfer in the background; returns a function that waits for its report."""
    server = net.lab.spawn(net.ns[dst], "python3", TCP_HASH, "serve", str(port), str(timeout),
                           stdout=subprocess.PIPE)
    if not server.stdout.readline().startswith("listening"):
        raise LabError("tcp_hash server did not start")
    argv = ["python3", TCP_HASH, "send", net.ip(dst), str(port), str(nbytes), "7"]
    if rate:
        argv.append(str(rate))
    client = net.lab.spawn(net.ns[src], *argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def finish():
        out, _ = client.communicate(timeout=timeout)
        server.wait(timeout)
        if client.returncode != 0:
            raise LabError(f"transfer {src} -> {dst} failed:\n{out}" + net.diagnostics())
        return out.strip()
    return finish


def dump(net, node):
    out = net.lab.run(net.ns[node], net.binaries["ipsecdump"], "--socket",
                      net.lab.workdir / node / "control.sock", "--json").stdout
    return json.loads(out)


def test_pluto_killed_mid_transfer_restarts_and_traffic_resumes(lab, binaries):
    net = IkeNet(lab, H2H, binaries)
    captures = net.capture_wan()
    net.ping("host1", "host2", count=2, timeout=60)
    finish = start_transfer(net, "host1", "host2", 24 * 1024 * 1024, rate=2_000_000)
    time.sleep(3)
    pluto = net.plutos["host1"]
    pluto.kill()
    time.sleep(2)  # traffic keeps flowing on the installed SAs meanwhile
    pluto.start()
    done = lab.run(net.ns["host1"], binaries["pinit"], "--socket",
                   lab.workdir / "host1" / "control.sock", check=False)
    assert done.returncode == 0, f"pinit: {done.stdout}{done.stderr}"
    print("pinit:", done.stdout.strip())
    report = finish()
    print("transfer:", report)
    # The new daemon started over: it made the plugin drop the old SAs and keyed anew.
    pluto.wait_log("IPsec SA established", timeout=30)
    net.ping("host1", "host2", count=3)
    wan = [p for c in captures for p in c.stop()]
    leaks = cleartext_leaks(wan, H2H.protected)
    assert not leaks, "cleartext on the WAN:\n" + "\n".join(leaks[:20])
    assert ipsec_bytes(wan, H2H.protected) >= 24 * 1024 * 1024


def short_lived(tmp, lifetime, margin):
    """host-to-host's IKE files with short SA lifetimes and no fuzz."""
    root = tmp / "short"
    for node in ("host1", "host2"):
        d = root / "host-to-host" / node
        d.mkdir(parents=True)
        text = (IKE_SAMPLES / "host-to-host" / node / "ipsec.cfg").read_text()
        text += f"lifetime = {lifetime}s\nrekeymargin = {margin}s\nrekeyfuzz = 0%\n"
        (d / "ipsec.cfg").write_text(text)
        (d / "isecrets.cfg").write_bytes(
            (IKE_SAMPLES / "host-to-host" / node / "isecrets.cfg").read_bytes())
    return root


def test_rekeying_under_traffic_loses_no_packet(lab, binaries, tmp_path):
    net = IkeNet(lab, H2H, binaries, config_root=short_lived(tmp_path, 24, 8))
    net.ping("host1", "host2", count=2, timeout=60)
    # ~40 s of traffic: the SAs (24 s) are rekeyed at 16 s and again at 32 s.
    finish = start_transfer(net, "host1", "host2", 40 * 250_000, rate=250_000)
    ping = net.ping("host1", "host2", count=400, args=("-i", "0.1"), timeout=90)
    print(ping.stdout.splitlines()[-2])
    print("transfer:", finish())
    rekeys = [p.log_text().count("IPsec SA established") for p in net.plutos.values()]
    assert min(rekeys) >= 3, f"expected two rekeys on each side, got {rekeys}"
    for node in ("host1", "host2"):
        table = dump(net, node)
        drops = {k: v for b in table["bundles"] for k, v in b["drops"].items()}
        drops.update(table["global_drops"])
        assert not drops, f"{node} dropped packets across the rekeys: {drops}"
