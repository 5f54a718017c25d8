"""host-sim tun's life: commands it does not understand are errors it survives; SIGTERM,
SIGINT and the end of stdin each stop it cleanly (exit 0), and its TUN goes with it."""

import signal

import pytest

from lab import LabError
from scenarios import SCENARIOS, Net


def tun_exists(lab, ns, name):
    return lab.run(ns, "ip", "link", "show", name, check=False).returncode == 0


def test_bad_commands_are_answered_and_survived(lab, binaries):
    net = Net(lab, SCENARIOS["host-to-host"], binaries)
    host1 = net.host_sims["host1"]
    for bad in ("fly", "connect 192.0.2.300", "connect", "dump xml", "quit now"):
        with pytest.raises(LabError, match=r"-> error "):
            host1.command(bad)
    assert "connect A.B.C.D" in host1.command("help")[0]
    assert "host1-host2" in "\n".join(host1.command("dump"))
    net.ping("host1", "host2", count=2)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "end of input"])
def test_stops_cleanly_and_removes_its_tun(lab, binaries, how):
    net = Net(lab, SCENARIOS["host-to-host"], binaries, start=False)
    rp_filter = ["sysctl", "-n", "net.ipv4.conf.wan0.rp_filter"]
    before = lab.run(net.ns["host1"], *rp_filter).stdout.strip()
    assert before == "1", "the lab makes every interface strict"
    host1 = net.start("host1")
    assert tun_exists(lab, net.ns["host1"], host1.tun)
    assert lab.run(net.ns["host1"], *rp_filter).stdout.strip() == "2"
    if how == "end of input":
        host1.proc.stdin.close()
    else:
        host1.proc.send_signal(getattr(signal, how))
    assert host1.proc.wait(10) == 0, host1.describe()
    expected = {"SIGTERM": "signal 15", "SIGINT": "signal 2"}.get(how, how)
    assert f"tun0 stopped ({expected})" in host1.stderr()
    assert not tun_exists(lab, net.ns["host1"], host1.tun)
    routes = lab.run(net.ns["host1"], "ip", "route").stdout
    assert "tun0" not in routes, routes
    after = lab.run(net.ns["host1"], *rp_filter).stdout.strip()
    assert after == before, "rp_filter of wan0 not restored"
