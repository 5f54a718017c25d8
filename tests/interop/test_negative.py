"""Packets the plugin must refuse: each dropped, counted and reported.

Every case sends one or more good packets first (they must come through intact, which
proves the setup is right), then one bad packet. The bad one must be dropped, and
ipsec.log must hold a `[SEC][<bundle>]` line carrying the name of the drop counter that
went up (the names of plugin/src/stats.rs, which ipsecdump prints too), so an operator
can tell the attacks apart.
"""

import copy
import re
import struct
import zlib
from dataclasses import dataclass

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.ipsec import ESP, _ESPPlain, split_for_transport
from scapy.packet import Raw

from cases import MODES
from ipsec_sa import (IPPROTO_ESP, IPPROTO_IPCOMP, IPPROTO_IPIP, MANUAL_SPI_RANGE, Bundle,
                      PeerReceiver, ah_encrypt, encapsulate, fix_ip_header, raw_deflate)
from tools import run_replay
from traffic import endpoints, ip_diff, sample_packets

# RFC 3173 leaves the limit to the implementation; the plugin's is 64 KiB.
IPCOMP_BOMB_BYTES = 1 << 20


@dataclass
class Attack:
    bundle: Bundle
    good_plain: list
    good_wire: list
    bad_wire: bytes
    counter: str


def traffic(bundle, count=2):
    return sample_packets(*endpoints(bundle, "in"))[:count]


def flipped_esp_icv(mode):
    bundle = Bundle("neg-esp-icv", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    sender = bundle.peer_sender()
    bad = bytearray(sender.protect(plain[1]))
    bad[-1] ^= 0x01  # the last bit of the ICV
    return Attack(bundle, plain[:1], [sender.protect(plain[0])], bytes(bad), "auth_failed")


def flipped_ah_icv(mode):
    bundle = Bundle("neg-ah-icv", ah="sha256", mode=mode, replay_window=64)
    plain = traffic(bundle)
    sender = bundle.peer_sender()
    good = sender.protect(plain[0])
    bad = bytearray(sender.protect(plain[1]))
    bad[20 + 12] ^= 0x80  # first bit of the ICV, after the IP header and AH's fixed 12 bytes
    return Attack(bundle, plain[:1], [good], bytes(bad), "auth_failed")


def wrong_key(mode):
    bundle = Bundle("neg-wrong-key", esp="aes256-sha256", mode=mode, replay_window=64)
    plain = traffic(bundle)
    impostor = Bundle("neg-wrong-key", esp="aes256-sha256", mode=mode, seed="not our keys")
    impostor.keys_in.esp.spi = bundle.keys_in.esp.spi
    good = bundle.peer_sender().protect(plain[0])
    bad = impostor.peer_sender().protect(plain[1], seq=2)
    return Attack(bundle, plain[:1], [good], bad, "auth_failed")


def unknown_spi(mode):
    bundle = Bundle("neg-unknown-spi", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    stranger = copy.deepcopy(bundle)
    stranger.keys_in.esp.spi = next(s for s in reversed(MANUAL_SPI_RANGE) if s not in bundle.spis())
    good = bundle.peer_sender().protect(plain[0])
    bad = stranger.peer_sender().protect(plain[1], seq=2)
    return Attack(bundle, plain[:1], [good], bad, "unknown_spi")


def replayed(mode):
    bundle = Bundle("neg-replay", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle, 3)
    sender = bundle.peer_sender()
    good = [sender.protect(p) for p in plain]
    return Attack(bundle, plain, good, good[1], "replay")


def left_of_window(mode):
    bundle = Bundle("neg-too-old", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    sender = bundle.peer_sender()
    good = sender.protect(plain[0], seq=100)
    bad = sender.protect(plain[1], seq=30)  # 100 - 30 >= 64: left of the window
    return Attack(bundle, plain[:1], [good], bad, "replay_too_old")


def truncated(mode):
    bundle = Bundle("neg-truncated", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    sender = bundle.peer_sender()
    good = sender.protect(plain[0])
    whole = sender.protect(plain[1])
    # SPI, sequence number and 4 bytes: the SPI finds the bundle, but IV and ICV are gone.
    bad = fix_ip_header(whole[:20 + 8 + 4])
    return Attack(bundle, plain[:1], [good], bad, "truncated")


def bad_padding(mode):
    """ESP with a valid ICV around padding that is not 1, 2, 3, ... (RFC 4303 section 2.4)."""
    bundle = Bundle("neg-bad-padding", esp="aes128-sha1", mode=mode, replay_window=64)
    sender = bundle.peer_sender()
    plain = traffic(bundle, 1)
    good = sender.protect(plain[0])
    sa = sender.esp_sa
    src, dst = endpoints(bundle, "in")
    for size in range(1, 32):
        victim = IP(src=src, dst=dst) / ICMP(type=8) / Raw(bytes(range(size)))
        victim = IP(bytes(victim))
        if bundle.tunnel:
            header, nh, payload = IP(src=sender.src, dst=sender.dst), IPPROTO_IPIP, Raw(bytes(victim))
        else:
            header, nh, payload = split_for_transport(victim, IPPROTO_ESP)
        esp = sa.crypt_algo.pad(_ESPPlain(spi=sa.spi, seq=2, iv=sa.crypt_algo.generate_iv(),
                                          data=Raw(bytes(payload)), nh=nh))
        if esp.padlen >= 2:
            break
    esp.padding = bytes(reversed(esp.padding))  # right length, wrong bytes
    encrypted = sa.crypt_algo.encrypt(sa, esp, sa.crypt_key)
    sa.auth_algo.sign(encrypted, sa.auth_key)
    header.proto = IPPROTO_ESP
    header.remove_payload()
    bad = fix_ip_header(bytes(header) + bytes(encrypted))
    return Attack(bundle, plain, [good], bad, "bad_padding")


def cleartext(mode):
    bundle = Bundle("neg-cleartext", esp="aes128-sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    good = bundle.peer_sender().protect(plain[0])
    return Attack(bundle, plain[:1], [good], plain[1], "policy_violation")


def wrong_layer_order(mode):
    """AH inside ESP, where the bundle applies ESP and then AH on top."""
    bundle = Bundle("neg-layer-order", esp="aes128-sha1", ah="sha1", mode=mode, replay_window=64)
    plain = traffic(bundle)
    sender = bundle.peer_sender()
    good = sender.protect(plain[0])
    # Transport-mode SAs with the same keys, applied in the wrong order.
    inner = bytes(plain[1])
    if bundle.tunnel:
        inner = encapsulate(inner, sender.src, sender.dst)
    esp_sa, ah_sa = copy.copy(sender.esp_sa), copy.copy(sender.ah_sa)
    esp_sa.tunnel_header = ah_sa.tunnel_header = None
    with_ah = ah_encrypt(ah_sa, IP(inner), 2)
    bad = bytes(esp_sa.encrypt(with_ah, seq_num=2))
    return Attack(bundle, plain[:1], [good], bad, "wrong_layer_order")


def ipcomp_bomb(mode):
    """IPComp inside ESP whose deflate stream inflates to 1 MiB (RFC 3173 leaves the
    limit to the receiver; an unbounded one is a memory exhaustion attack)."""
    bundle = Bundle("neg-ipcomp-bomb", esp="aes128-sha1", ipcomp=True, mode=mode, replay_window=64)
    plain = traffic(bundle, 1)
    sender = bundle.peer_sender()
    good = sender.protect(plain[0], compress=True)
    src, dst = (sender.src, sender.dst) if bundle.tunnel else endpoints(bundle, "in")
    next_header = IPPROTO_IPIP if bundle.tunnel else 17
    body = struct.pack("!BBH", next_header, 0, bundle.keys_in.cpi) + raw_deflate(b"\x00" * IPCOMP_BOMB_BYTES)
    carrier = fix_ip_header(bytes(IP(src=src, dst=dst, proto=IPPROTO_IPCOMP)) + body)
    bad = bytes(sender.esp_sa.encrypt(IP(carrier), seq_num=2))
    return Attack(bundle, plain, [good], bad, "decompress_too_large")


ATTACKS = [flipped_esp_icv, flipped_ah_icv, wrong_key, unknown_spi, replayed, left_of_window,
           truncated, bad_padding, cleartext, wrong_layer_order, ipcomp_bomb]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make_attack", ATTACKS, ids=lambda f: f.__name__)
def test_dropped_counted_and_logged(make_attack, mode, host_sim, tmp_path):
    attack = make_attack(mode)
    bundle = attack.bundle
    run = run_replay(host_sim, tmp_path, [bundle], "in", attack.good_wire + [attack.bad_wire])
    run.check_ran()
    assert (run.passed, run.transformed, run.dropped) == (0, len(attack.good_wire), 1), run.describe()
    problems = [f"good packet {i + 1}: {ip_diff(got, want)}"
                for i, (got, want) in enumerate(zip(run.output, attack.good_plain)) if got != want]
    assert not problems, "\n".join(problems) + "\n" + run.describe()
    sec = [line for line in run.log_lines("SEC") if f"[SEC][{bundle.name}][" in line]
    assert sec, f"no [SEC][{bundle.name}] line in ipsec.log\n{run.describe()}"
    assert any(re.search(rf"\b{attack.counter}\b", line) for line in sec), \
        f"no SEC line names the drop counter {attack.counter}\n{run.describe()}"


def scapy_opens(bundle, wire):
    """What scapy, with the keys the plugin has, makes of a packet: (Opened, None) or
    (None, the exception's class name)."""
    receiver = PeerReceiver(bundle, bundle.keys_in, bundle.remote, bundle.local)
    try:
        return receiver.open(wire), None
    except Exception as e:  # what scapy raises is the finding
        return None, type(e).__name__


# What scapy (which checks no replay, padding or size) makes of each bad packet.
SCAPY_VERDICT = {
    "auth_failed": "IPSecIntegrityError",
    "unknown_spi": "TypeError",  # scapy's check_spi
    "policy_violation": "ProtocolMismatch",
    "wrong_layer_order": "ProtocolMismatch",
    "replay": None,
    "replay_too_old": None,
    "bad_padding": None,
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("make_attack", ATTACKS, ids=lambda f: f.__name__)
def test_attack_is_what_it_claims(make_attack, mode):
    """Checks the builders with scapy, so that a negative test cannot pass for the wrong
    reason: the good packets open, and each bad one is bad in exactly its own way."""
    attack = make_attack(mode)
    bundle = attack.bundle
    for wire, want in zip(attack.good_wire, attack.good_plain):
        opened, error = scapy_opens(bundle, wire)
        assert error is None and opened.plain == want
    if attack.counter == "decompress_too_large":
        # Too big for an IPv4 packet, so inflate it here rather than in PeerReceiver.
        sa = bundle.peer_sender().esp_sa
        carrier = bytes(sa.decrypt(IP(attack.bad_wire)))
        _, _, cpi = struct.unpack("!BBH", carrier[20:24])
        assert cpi == bundle.keys_in.cpi
        assert len(zlib.decompress(carrier[24:], -15)) > 65536
        return
    opened, error = scapy_opens(bundle, attack.bad_wire)
    if attack.counter == "truncated":
        assert error is not None
        return
    assert error == SCAPY_VERDICT[attack.counter]
    if attack.counter == "replay":
        assert attack.bad_wire in attack.good_wire
    if attack.counter == "replay_too_old":
        newest = scapy_opens(bundle, attack.good_wire[-1])[0].esp_seq
        assert newest - opened.esp_seq >= bundle.replay_window
    if attack.counter == "bad_padding":
        sa = bundle.peer_sender().esp_sa
        esp = sa.crypt_algo.decrypt(sa, IP(attack.bad_wire)[ESP], sa.crypt_key, sa.auth_algo.icv_size)
        assert esp.padlen >= 2 and esp.padding != bytes(range(1, esp.padlen + 1))
