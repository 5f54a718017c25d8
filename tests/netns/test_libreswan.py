"""Interop with libreswan 4.10's pluto (issue 4, acceptance 3): Main Mode and Quick Mode
complete with our pluto as initiator and as responder, our plugin receives the SAs, and
tshark, given the keys libreswan derived (recorded by the LD_PRELOAD shim in
peers/libreswan_shim.c), decrypts the ESP our plugin sends and finds every ICV good:
both ends derived the same KEYMAT for the same SPIs.

libreswan runs in namespace `lsw` (192.0.2.2) and only negotiates (this kernel has no
ESP); ours runs host-sim tun + pluto in namespace `ours` (192.0.2.1). Without NAT both
stay on UDP 500 with plain ESP. See docs/libreswan-peer.md.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ike import Pluto
from lab import Capture, HostSim, LabError, read_pcap_ipv4
from peers.libreswan import ROOT, Conn, Libreswan
from scenarios import wait_for

OURS, PEER = "192.0.2.1", "192.0.2.2"
PSK = "libreswan interop: change me"

# (id, our ipsec.cfg suite lines, libreswan Conn keywords, tshark's names)
SUITES = {
    "aes128-sha1-pfs-transport": (
        "mode = transport\nesp = aes128-sha1\nike = aes128-sha1-modp2048\npfs = yes\n",
        dict(type="transport", ike="aes128-sha1;modp2048", esp="aes128-sha1", pfs=True)),
    "3des-sha1-tunnel": (
        "mode = tunnel\nremote_subnet = 10.2.0.0/24\nesp = 3des-sha1\n"
        "ike = 3des-sha1-modp1536\npfs = no\n",
        dict(type="tunnel", leftsubnet="10.2.0.0/24", rightsubnet=f"{OURS}/32",
             ike="3des-sha1;modp1536", esp="3des-sha1", pfs=False)),
    "aes128gcm16-pfs-transport": (
        "mode = transport\nesp = aes128gcm16\nike = aes256-sha256-modp2048\npfs = yes\n",
        dict(type="transport", ike="aes256-sha2_256;modp2048", esp="aes_gcm128", pfs=True)),
}

TSHARK_ENC = {"aes": "AES-CBC [RFC3602]", "cbc(aes)": "AES-CBC [RFC3602]",
              "des3_ede": "TripleDES-CBC [RFC2451]", "cbc(des3_ede)": "TripleDES-CBC [RFC2451]",
              "rfc4106(gcm(aes))": "AES-GCM with 16 octet ICV [RFC4106]"}
TSHARK_AUTH = {"sha1": "HMAC-SHA-1-96 [RFC2404]", "hmac(sha1)": "HMAC-SHA-1-96 [RFC2404]",
               "hmac(sha256)": "HMAC-SHA-256-128 [RFC4868]", "sha256": "HMAC-SHA-256-128 [RFC4868]",
               "md5": "HMAC-MD5-96 [RFC2403]", "hmac(md5)": "HMAC-MD5-96 [RFC2403]"}


@pytest.fixture(scope="module")
def libreswan_installed():
    if not (ROOT / "usr/libexec/ipsec/pluto").exists():
        pytest.fail(f"libreswan 4.10 is not in {ROOT}: run .ci/setup-libreswan", pytrace=False)
    if shutil.which("tshark") is None:
        pytest.fail("tshark is missing (apt-get install tshark)", pytrace=False)


def build(lab, binaries, suite):
    ours_cfg, lsw_kw = SUITES[suite]
    ours, peer = lab.netns("ours"), lab.netns("lsw")
    lab.veth(ours, "wan0", peer, "wan0")
    lab.address(ours, "wan0", f"{OURS}/24")
    lab.address(peer, "wan0", f"{PEER}/24")
    cfg = lab.workdir / "ours-cfg"
    cfg.mkdir()
    (cfg / "ipsec.cfg").write_text(
        f"[lsw]\nlocal = {OURS}\nremote = {PEER}\nkeying = ike\nreplay_window = 64\n{ours_cfg}")
    (cfg / "isecrets.cfg").write_text(f'{OURS} {PEER} : PSK "{PSK}"\n')
    pluto = Pluto(lab, ours, binaries["pluto"], "ours", cfg / "isecrets.cfg",
                  extra=["--ikekeylog", lab.workdir / "ikev1_decryption_table"])
    control = lab.workdir / "ours" / "control.sock"
    hs = HostSim(lab, ours, binaries["host-sim"], binaries["plugin"], cfg, "wan0", "ours",
                 extra=["--daemon", pluto.socket, "--control", control])
    lsw = Libreswan(lab, peer, name="libreswan")
    lsw.start([Conn("ours", left=PEER, right=OURS, psk=PSK, **lsw_kw)])
    return ours, pluto, hs, lsw, control


def our_sas(lab, ns, binaries, control):
    out = lab.run(ns, binaries["ipsecdump"], "--socket", control, "--json").stdout
    return [sa for b in json.loads(out)["bundles"] for sa in b["sas"]]


def tshark_decrypts(lab, pcap, records):
    """tshark with libreswan's SAs on the ESP we sent (libreswan's kernel answers each with
    ICMP protocol unreachable, which quotes it: those are left out)."""
    argv = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]
    for r in records:
        aead = r.get("aead")
        enc = TSHARK_ENC[(aead or r["enc"])["name"]]
        key = (aead or r["enc"])["key"]
        auth = "NULL" if aead else TSHARK_AUTH[r["auth"]["name"]]
        auth_key = "" if aead else "0x" + r["auth"]["key"]
        fields = ["IPv4", r["src"], r["dst"], r["spi"], enc, "0x" + key, auth, auth_key]
        argv += ["-o", "uat:esp_sa:" + ",".join(f'"{f}"' for f in fields)]
    argv += ["-T", "fields", "-E", "separator=\t", "-e", "esp.spi", "-e", "esp.icv_good",
             "-e", "icmp.type", "-Y", "esp"]
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(lab.workdir / "wireshark"))
    (lab.workdir / "wireshark").mkdir(exist_ok=True)
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    # An ICMP error (type 3) quotes our ESP packet: its first ICMP layer is the error.
    rows = [r for r in rows if len(r) == 3 and not r[2].startswith("3")]
    return rows, " ".join(argv)


def ike_spis(lab, pcap):
    """The SPIs in the ISAKMP messages of `pcap`, decrypted by tshark with our key log."""
    config = lab.workdir / "wireshark-ike"
    config.mkdir(exist_ok=True)
    shutil.copyfile(lab.workdir / "ikev1_decryption_table", config / "ikev1_decryption_table")
    done = subprocess.run(["tshark", "-n", "-r", str(pcap), "-Y", "isakmp", "-T", "fields",
                           "-e", "isakmp.exchangetype", "-e", "isakmp.spi"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, WIRESHARK_CONFIG_DIR=str(config)))
    assert done.returncode == 0, done.stderr
    quick = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("32\t")]
    assert quick, f"no Quick Mode decrypted:\n{done.stdout}"
    return {spi.lower() for _, spis in quick for spi in spis.split(",") if spi}


@pytest.mark.parametrize("role", ["we-initiate", "libreswan-initiates"])
@pytest.mark.parametrize("suite", sorted(SUITES))
def test_libreswan_keys_match_ours(lab, binaries, libreswan_installed, suite, role):
    ours, pluto, hs, lsw, control = build(lab, binaries, suite)
    target = "10.2.0.1" if "tunnel" in suite else PEER
    capture = Capture(lab, ours, "wan0", "wire")
    time.sleep(0.5)
    if role == "we-initiate":
        # The first packet is held and sets off ACQUIRE -> Main Mode -> Quick Mode.
        lab.run(ours, "ping", "-n", "-c", "1", "-W", "1", target, check=False)
        lsw.wait_established("ours", timeout=60)
    else:
        lsw.initiate("ours", timeout=60)
    pluto.wait_log("SA to plugin", timeout=30)
    assert wait_for(lambda: len(our_sas(lab, ours, binaries, control)) >= 2, 10), hs.describe()

    lab.run(ours, "ping", "-n", "-c", "4", "-i", "0.2", "-W", "1", target, check=False)
    time.sleep(1.5)
    packets = capture.stop()
    assert any(p[9] == 50 for p in packets), "no ESP left our side"

    records = [r for r in lsw.installed_sas() if r["proto"] == "esp" and r["dst"] == PEER]
    assert records, f"libreswan installed no inbound ESP SA\n{lsw.describe()}"
    inbound_at_lsw = records[-1]
    ours_out = [sa for sa in our_sas(lab, ours, binaries, control)
                if sa.get("direction") == "out" and sa.get("protocol", sa.get("proto")) == "esp"]
    spis = {int(str(sa["spi"]), 0) for sa in ours_out}
    assert int(inbound_at_lsw["spi"], 16) in spis, (ours_out, inbound_at_lsw)

    # The IKE exchange itself, decrypted with the key log our pluto wrote: the Quick Mode
    # SA payloads carry exactly the SPIs our plugin holds.
    ours_in = [sa for sa in our_sas(lab, ours, binaries, control)
               if sa.get("direction") == "in" and sa.get("protocol") == "esp"]
    seen = ike_spis(lab, capture.path)
    for sa in ours_out + ours_in:
        assert f"{int(str(sa['spi']), 0):08x}" in seen, (sa, seen)

    rows, argv = tshark_decrypts(lab, capture.path, [inbound_at_lsw])
    esp_rows = [r for r in rows if r and r[0]]
    assert len(esp_rows) >= 4, f"{argv}\n{rows}"
    for r in esp_rows:
        assert r[1] in ("1", "True"), f"ICV not good with libreswan's keys: {r}\n{argv}"
        assert r[2] == "8", f"no ICMP echo inside after decryption: {r}\n{argv}"
    assert "[ERR]" not in pluto.log_text(), pluto.describe()
