"""Direction out: the plugin protects plaintext; scapy and tshark must be able to open it.

For each case of the matrix, `host-sim replay --direction out` protects the traffic we send
to the peer. scapy, holding the peer's inbound SAs (our `*_out` keys), verifies and removes
every layer and must get the original packets back; the SPIs must be ours, sequence numbers
1, 2, 3... and the IVs fresh per packet. tshark, given the same keys in its ESP SA table,
must decode every packet with the ICV verified and nothing malformed.
"""

import pytest

from cases import MATRIX
from ipsec_sa import IPPROTO_AH, IPPROTO_ESP, IPPROTO_IPCOMP, ip_checksum, ip_protocol_name
from tools import run_replay, tshark_frames, tshark_problems
from traffic import compressible_packets, endpoints, ip_diff, sample_packets


def outbound_traffic(bundle):
    src, dst = endpoints(bundle, "out")
    plain = sample_packets(src, dst)
    if bundle.ipcomp:
        plain += compressible_packets(src, dst)
    return plain


@pytest.fixture(scope="module")
def outbound_runs(host_sim, tmp_path_factory):
    """One replay per case, shared by the scapy and the tshark test of that case."""
    runs = {}

    def get(case):
        if case not in runs:
            bundle = case.bundle()
            plain = outbound_traffic(bundle)
            workdir = tmp_path_factory.mktemp("out-" + str(case).replace("+", "_"))
            run = run_replay(host_sim, workdir, [bundle], "out", plain)
            runs[case] = (bundle, plain, run)
        return runs[case]

    return get


def outer_header_problems(wire, bundle):
    """What is wrong with the header that goes on the wire (before any layer is opened)."""
    problems = []
    if len(wire) < 20 or wire[0] >> 4 != 4:
        return ["not an IPv4 packet"]
    ihl = (wire[0] & 0x0F) * 4
    if int.from_bytes(wire[2:4], "big") != len(wire):
        problems.append(f"total length {int.from_bytes(wire[2:4], 'big')}, packet is {len(wire)} bytes")
    if ip_checksum(wire[:ihl]) != 0:
        problems.append("bad header checksum")
    if int.from_bytes(wire[6:8], "big") & 0x3FFF:
        problems.append("fragmented")
    if wire[8] == 0:
        problems.append("TTL 0")
    src, dst = ".".join(map(str, wire[12:16])), ".".join(map(str, wire[16:20]))
    if (src, dst) != (bundle.local, bundle.remote):
        problems.append(f"addresses {src} -> {dst}, want {bundle.local} -> {bundle.remote}")
    want = IPPROTO_AH if bundle.ah else IPPROTO_ESP if bundle.esp else IPPROTO_IPCOMP
    if wire[9] != want:
        problems.append(f"protocol {ip_protocol_name(wire[9])}, want {ip_protocol_name(want)}")
    return problems


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_outbound_scapy_opens(case, outbound_runs):
    bundle, plain, run = outbound_runs(case)
    run.check_ran()
    assert (run.passed, run.transformed, run.dropped) == (0, len(plain), 0), run.describe()
    receiver = bundle.peer_receiver()
    problems, ivs = [], []
    for i, (wire, want) in enumerate(zip(run.output, plain)):
        where = f"packet {i + 1} ({ip_protocol_name(want[9])}, {len(want)} bytes)"
        problems += [f"{where}: {p}" for p in outer_header_problems(wire, bundle)]
        try:
            opened = receiver.open(wire)
        except Exception as e:  # scapy's ICV or decryption error, or a layer mismatch
            problems.append(f"{where}: scapy cannot open it: {type(e).__name__}: {e}")
            continue
        if opened.plain != want:
            problems.append(f"{where}: {ip_diff(opened.plain, want)}")
        if bundle.esp:
            if (opened.esp_spi, opened.esp_seq) != (bundle.keys_out.esp.spi, i + 1):
                problems.append(f"{where}: ESP SPI 0x{opened.esp_spi:x} seq {opened.esp_seq}, want "
                                f"0x{bundle.keys_out.esp.spi:x} seq {i + 1}")
            ivs.append(opened.esp_iv)
        if bundle.ah and (opened.ah_spi, opened.ah_seq) != (bundle.keys_out.ah.spi, i + 1):
            problems.append(f"{where}: AH SPI 0x{opened.ah_spi:x} seq {opened.ah_seq}, want "
                            f"0x{bundle.keys_out.ah.spi:x} seq {i + 1}")
        if bundle.ipcomp:
            # RFC 3173 section 2.2: compress only when that makes the payload smaller.
            if opened.compressed and opened.ipcomp_len >= opened.inflated_len:
                problems.append(f"{where}: IPComp made the payload grow, {opened.inflated_len} "
                                f"-> {opened.ipcomp_len} bytes")
            if len(want) > 1000 and not opened.compressed:
                problems.append(f"{where}: compressible packet sent uncompressed")
    if bundle.esp and bundle.esp.cipher.iv_len:
        if len(set(ivs)) != len(ivs):
            problems.append(f"IVs repeat across packets: {[iv.hex() for iv in ivs]}")
    assert not problems, "\n".join(problems) + "\n" + run.describe()


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_outbound_tshark_decodes(case, outbound_runs, tshark, tmp_path):
    bundle, plain, run = outbound_runs(case)
    run.check_ran()
    frames, argv = tshark_frames(tshark, run.output_pcap, bundle.tshark_esp_sas("out"),
                                 tmp_path)
    assert len(frames) == len(plain), f"tshark saw {len(frames)} frames, sent {len(plain)}"
    problems = tshark_problems(frames, want_icv=bool(bundle.esp and bundle.esp.has_icv))
    for i, (frame, want) in enumerate(zip(frames, plain)):
        layers = frame["frame.protocols"][0].split(":") if frame["frame.protocols"] else []
        inner = ip_protocol_name(want[9])
        # tshark names ICMP, TCP and UDP as we do; decoding down to them proves decryption.
        if inner not in layers:
            problems.append(f"frame {i + 1}: decoded as {':'.join(layers)}, no {inner} inside")
        if bundle.esp and frame["esp.sequence"][:1] != [str(i + 1)]:
            problems.append(f"frame {i + 1}: ESP sequence {frame['esp.sequence']}, want {i + 1}")
        if bundle.ah and frame["ah.sequence"][:1] != [str(i + 1)]:
            problems.append(f"frame {i + 1}: AH sequence {frame['ah.sequence']}, want {i + 1}")
    assert not problems, "\n".join(problems) + "\n$ " + " ".join(argv)
