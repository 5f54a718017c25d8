"""The reference side checked on its own, without our programs.

scapy must protect and open every case of the matrix with the keys we generate, tshark
must decode scapy's packets with the SA table we give it (which proves the mapping of our
algorithm names to Wireshark's), and both must notice a wrong key or a changed byte.
Otherwise a failure of the plugin tests could be the reference's fault.
"""

import pytest
from scapy.layers.ipsec import AUTH_ALGOS, CRYPT_ALGOS

from cases import MATRIX
from ipsec_sa import (AEADS, CIPHERS, ESP_SUITES, INTEGRITY, Bundle, EspSuite, PeerReceiver,
                      fix_ip_header, ip_checksum, ip_protocol_name, ipcomp_compress,
                      ipcomp_decompress)
from pcapio import LINKTYPE_ETHERNET, LINKTYPE_RAW, read_ipv4_packets, read_pcap, write_pcap
from tools import tshark_frames, tshark_problems
from traffic import compressible_packets, endpoints, ip_diff, sample_packets


def scapy_traffic(bundle, direction="in"):
    plain = sample_packets(*endpoints(bundle, direction))
    if bundle.ipcomp:
        plain += compressible_packets(*endpoints(bundle, direction))
    sender = bundle.peer_sender()
    return plain, [sender.protect(p) for p in plain]


def own_receiver(bundle):
    """Opens what bundle.peer_sender() built: the same keys, the same direction."""
    return PeerReceiver(bundle, bundle.keys_in, bundle.remote, bundle.local)


@pytest.mark.parametrize("suite", ESP_SUITES)
def test_scapy_has_every_esp_algorithm(suite):
    suite = EspSuite(suite)
    crypt = CRYPT_ALGOS[suite.cipher.scapy]
    crypt.check_key(b"\x00" * (suite.cipher.key_len - crypt.salt_size))
    if suite.integrity.scapy:
        assert AUTH_ALGOS[suite.integrity.scapy].icv_size == suite.integrity.icv_len


def test_algorithm_tables_cover_the_spec():
    # SPEC section 2: the cipher, integrity and AEAD names of `esp =` and `ah =`.
    assert set(CIPHERS) == {"null", "des", "3des", "aes128", "aes192", "aes256"}
    assert set(INTEGRITY) == {"none", "md5", "sha1", "sha256"}
    assert set(AEADS) == {"aes128gcm16", "aes256gcm16"}
    assert len(ESP_SUITES) == 6 * 3 + 5 + 2


@pytest.mark.parametrize("case", MATRIX, ids=str)
def test_scapy_round_trip(case):
    bundle = case.bundle()
    plain, wire = scapy_traffic(bundle)
    receiver = own_receiver(bundle)
    ivs = []
    for i, (w, p) in enumerate(zip(wire, plain)):
        opened = receiver.open(w)
        assert opened.plain == p, ip_diff(opened.plain, p)
        if bundle.esp:
            assert (opened.esp_spi, opened.esp_seq) == (bundle.keys_in.esp.spi, i + 1)
            ivs.append(opened.esp_iv)
        if bundle.ah:
            assert (opened.ah_spi, opened.ah_seq) == (bundle.keys_in.ah.spi, i + 1)
    if bundle.esp and bundle.esp.cipher.iv_len:
        assert len(set(ivs)) == len(ivs)


@pytest.mark.parametrize("case", [c for c in MATRIX if (c.esp and EspSuite(c.esp).has_icv) or c.ah],
                         ids=str)
def test_scapy_notices_a_changed_byte(case):
    bundle = case.bundle()
    _, wire = scapy_traffic(bundle)
    changed = bytearray(wire[0])
    changed[-1] ^= 0x01
    with pytest.raises(Exception):
        own_receiver(bundle).open(bytes(changed))


# Every algorithm once per mode; the ESP+AH pairs add no new tshark name.
TSHARK_CASES = [c for c in MATRIX if not (c.esp and c.ah) or c.ipcomp]


@pytest.mark.parametrize("case", TSHARK_CASES, ids=str)
def test_tshark_decodes_scapy(case, tshark, tmp_path):
    bundle = case.bundle()
    plain, wire = scapy_traffic(bundle)
    write_pcap(tmp_path / "scapy.pcap", wire)
    frames, argv = tshark_frames(tshark, tmp_path / "scapy.pcap", bundle.tshark_esp_sas("in"), tmp_path)
    assert len(frames) == len(wire)
    problems = tshark_problems(frames, want_icv=bool(bundle.esp and bundle.esp.has_icv))
    for i, (frame, want) in enumerate(zip(frames, plain)):
        layers = frame["frame.protocols"][0].split(":")
        if ip_protocol_name(want[9]) not in layers:
            problems.append(f"frame {i + 1}: decoded as {':'.join(layers)}")
        if bundle.esp and frame["esp.sequence"][:1] != [str(i + 1)]:
            problems.append(f"frame {i + 1}: ESP sequence {frame['esp.sequence']}")
    assert not problems, "\n".join(problems) + "\n$ " + " ".join(argv)


@pytest.mark.parametrize("suite", ["aes128-sha1", "3des-md5", "aes256-sha256", "aes128gcm16"])
def test_tshark_notices_a_wrong_key(suite, tshark, tmp_path):
    """The tshark checks can fail: a wrong integrity key gives a bad ICV, a wrong cipher
    key gives no inner protocol."""
    bundle = Bundle("wrong", esp=suite)
    plain, wire = scapy_traffic(bundle)
    write_pcap(tmp_path / "scapy.pcap", wire)
    sa = bundle.tshark_esp_sas("in")[0]
    if sa.auth_key:
        sa.auth_key = bytes(b ^ 0x55 for b in sa.auth_key)
        frames, _ = tshark_frames(tshark, tmp_path / "scapy.pcap", [sa], tmp_path)
        assert any("ICV bad" in p for p in tshark_problems(frames, want_icv=True))
    else:
        sa.enc_key = bytes(b ^ 0x55 for b in sa.enc_key)
        frames, _ = tshark_frames(tshark, tmp_path / "scapy.pcap", [sa], tmp_path)
        assert tshark_problems(frames, want_icv=True)


def test_pcap_files_round_trip(tshark, tmp_path):
    bundle = MATRIX[0].bundle()
    plain, wire = scapy_traffic(bundle)
    for linktype in (LINKTYPE_RAW, LINKTYPE_ETHERNET):
        path = tmp_path / f"{linktype}.pcap"
        write_pcap(path, wire, linktype=linktype)
        assert read_pcap(path)[0] == linktype
        assert read_ipv4_packets(path) == wire
        frames, _ = tshark_frames(tshark, path, [], tmp_path)
        assert len(frames) == len(wire)
    blob = (tmp_path / f"{LINKTYPE_RAW}.pcap").read_bytes()
    (tmp_path / "cut.pcap").write_bytes(blob[:-1])
    with pytest.raises(ValueError):
        read_pcap(tmp_path / "cut.pcap")


def test_ipcomp_helpers():
    packet = compressible_packets("192.0.2.2", "192.0.2.1")[0]
    compressed = ipcomp_compress(packet, 0x345)
    assert len(compressed) < len(packet) and compressed[9] == 108
    assert ip_checksum(compressed[:20]) == 0
    assert ipcomp_decompress(compressed) == (packet, 0x345)
    assert fix_ip_header(packet) == packet
