"""Direction in: scapy plays the peer and protects traffic; the plugin must restore it.

For each case of the matrix the peer (192.0.2.2) sends ICMP, UDP and TCP of varied sizes
protected with the keys of our ipsec.cfg; `host-sim replay --direction in` must transform
every packet back into the original plaintext, byte for byte (in transport mode that means
the IP header with protocol, total length and checksum restored and TTL untouched), and
log no security event.
"""

import pytest

from cases import MATRIX, Case
from ipsec_sa import ip_protocol_name
from pcapio import LINKTYPE_ETHERNET
from tools import run_replay
from traffic import compressible_packets, endpoints, ip_diff, sample_packets


def inbound_traffic(bundle):
    src, dst = endpoints(bundle, "in")
    plain = sample_packets(src, dst)
    if bundle.ipcomp:
        plain += compressible_packets(src, dst)
    return plain


def check_restored(run, plain):
    run.check_ran()
    assert (run.passed, run.transformed, run.dropped) == (0, len(plain), 0), run.describe()
    problems = [f"packet {i + 1} ({ip_protocol_name(want[9])}, {len(want)} bytes): {ip_diff(got, want)}"
                for i, (got, want) in enumerate(zip(run.output, plain)) if got != want]
    assert not problems, "\n".join(problems) + "\n" + run.describe()
    assert not run.log_lines("SEC"), run.describe()


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_inbound(case, host_sim, tmp_path):
    bundle = case.bundle()
    plain = inbound_traffic(bundle)
    sender = bundle.peer_sender()
    wire = [sender.protect(p) for p in plain]
    if bundle.ipcomp:
        # RFC 3173 section 2.2: the receiver must take both forms.
        assert 0 < sum(sender.compressed) < len(wire), "the IPComp traffic should mix both forms"
    check_restored(run_replay(host_sim, tmp_path, [bundle], "in", wire), plain)


@pytest.mark.parametrize("case", [Case("transport", esp="aes128-sha1"),
                                  Case("tunnel", esp="aes256gcm16", ah="sha256")], ids=str)
def test_inbound_from_ethernet_capture(case, host_sim, tmp_path):
    """A capture taken on an Ethernet interface is read as well as a RAW one."""
    bundle = case.bundle()
    plain = inbound_traffic(bundle)
    sender = bundle.peer_sender()
    wire = [sender.protect(p) for p in plain]
    run = run_replay(host_sim, tmp_path, [bundle], "in", wire, linktype=LINKTYPE_ETHERNET)
    check_restored(run, plain)
