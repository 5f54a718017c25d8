"""Path MTU through the nested sample: host1's TUN advertises the link MTU less the
overhead of both nested bundles as the plugin reports it; ping with DF and tracepath find
exactly that; and when the TUN is left at the link MTU, the plugin's own ICMP
fragmentation-needed (written back into the TUN) teaches the kernel the same number."""

import re

from scenarios import SCENARIOS, Net

LINK_MTU = 1500


def overhead(hs):
    return int(hs.state["overhead"])


def tracepath_pmtu(net, src, dst):
    done = net.lab.run(net.ns[src], "tracepath", "-n", "-m", "5", net.ip(dst), check=False,
                       timeout=60)
    found = re.findall(r"pmtu (\d+)", done.stdout)
    assert found, f"tracepath printed no pmtu:\n{done.stdout}{done.stderr}"
    return int(found[-1]), done.stdout


def test_nested_path_mtu_is_link_mtu_less_both_bundles(lab, binaries):
    net = Net(lab, SCENARIOS["nested"], binaries)
    host1, gw, host2 = (net.host_sims[n] for n in ("host1", "gw", "host2"))
    # host1 applies [inner] then [outer]; gw and host2 one each: the plugin adds them up.
    assert overhead(host1) == overhead(gw) + overhead(host2) > 0
    path_mtu = LINK_MTU - overhead(host1)
    assert host1.mtu() == path_mtu

    too_big = net.ping("host1", "host2", count=1, args=("-M", "do", "-s", "1472"),
                       check=False)
    assert too_big.returncode != 0
    assert f"mtu={path_mtu}" in too_big.stdout + too_big.stderr, too_big.stdout + too_big.stderr
    pmtu, trace = tracepath_pmtu(net, "host1", "host2")
    assert pmtu == path_mtu, trace
    net.ping("host1", "host2", count=2, args=("-M", "do", "-s", str(path_mtu - 28)))
    over = net.ping("host1", "host2", count=1, args=("-M", "do", "-s", str(path_mtu - 27)),
                    check=False)
    assert over.returncode != 0, over.stdout

    # A PC behind gw sending DF packets to host1 hears from gw's kernel, which forwards
    # into a TUN of gw's own advertised MTU.
    from_lan = net.ping("pc", "host1", count=1, args=("-M", "do", "-s", "1472"), check=False)
    gw_mtu = LINK_MTU - overhead(gw)
    assert f"Frag needed and DF set (mtu = {gw_mtu})" in from_lan.stdout, from_lan.stdout
    net.ping("pc", "host1", count=2, args=("-M", "do", "-s", str(gw_mtu - 28)))


def test_plugin_answers_df_packets_that_would_not_fit(lab, binaries):
    net = Net(lab, SCENARIOS["nested"], binaries,
              extra_args={"host1": ["--tun-mtu", str(LINK_MTU)]})
    host1 = net.host_sims["host1"]
    assert host1.mtu() == LINK_MTU
    path_mtu = LINK_MTU - overhead(host1)

    first = net.ping("host1", "host2", count=1, args=("-M", "do", "-s", "1472"), check=False)
    assert first.returncode != 0
    assert f"Frag needed and DF set (mtu = {path_mtu})" in first.stdout, first.stdout
    assert host1.stats()["emitted-inbound"] >= 1
    # The kernel keeps what it learnt: the path MTU, below the TUN's.
    pmtu, trace = tracepath_pmtu(net, "host1", "host2")
    assert pmtu == path_mtu, trace
    net.ping("host1", "host2", count=2, args=("-M", "do", "-s", str(path_mtu - 28)))
