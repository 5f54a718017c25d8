#!/usr/bin/env python3
"""Self-test of the strongSwan peer harness: charon talks to charon, IKEv1 PSK, ESP tunnel
10.1.0.0/24 <-> 10.2.0.0/24, once per cipher suite.

    python3 tests/netns/peers/selftest_strongswan.py [-k SUBSTRING] [--keep]

Needs root and .ci/setup-strongswan (charon, swanctl, kernel-libipsec), tcpdump and ping.
Not a pytest module (pytest collects test_*.py only): it proves the harness itself.

    ns a: lan0 10.1.0.1/24 (a veth whose peer lan1 stays in a)   wan0 192.0.2.1/24
    ns b: lan0 10.2.0.1/24                                        wan0 192.0.2.2/24
          a:wan0 <-- veth --> b:wan0

For each suite both charons are started afresh, a initiates, and then: both ends show
the IKE SA ESTABLISHED and the CHILD_SA INSTALLED with the suite's algorithms and UDP
encapsulation; `ping 10.2.0.1` from a gets every answer (source 10.1.0.1 chosen by the
route charon installed in table 220); the CHILD_SA counters saw those packets; and a
tcpdump on a:wan0 saw IKE on UDP 500, ESP in UDP 4500 both ways, and no ICMP in clear.
Prints PASS/FAIL per suite and a summary; exits 1 if any failed. Every namespace and
process is removed whatever happens (Lab.close).
"""

import argparse
import shutil
import struct
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))    # tests/netns: lab.py
sys.path.insert(0, str(HERE))

from lab import Capture, Lab  # noqa: E402
from strongswan import Charon, CharonError, Conn  # noqa: E402

PSK = "selftest-psk with spaces & \"quotes\""
PINGS = 5


# name, IKE proposal, ESP cipher-integrity, PFS group, expected (IKE encr, child encr,
# child integ or None, child DH group or None)
SUITES = [
    ("aes128-sha1+modp2048", "aes128-sha1-modp2048", "aes128-sha1", "modp2048",
     ("AES_CBC", "AES_CBC", "HMAC_SHA1_96", "MODP_2048")),
    ("aes128-sha1 no-pfs", "aes128-sha1-modp2048", "aes128-sha1", None,
     ("AES_CBC", "AES_CBC", "HMAC_SHA1_96", None)),
    ("3des-sha1+modp1536", "3des-sha1-modp1536", "3des-sha1", "modp1536",
     ("3DES_CBC", "3DES_CBC", "HMAC_SHA1_96", "MODP_1536")),
    ("aes128gcm16+modp2048", "aes128-sha1-modp2048", "aes128gcm16", "modp2048",
     ("AES_CBC", "AES_GCM_16", None, "MODP_2048")),
]


def build(lab):
    a, b = lab.netns("a"), lab.netns("b")
    lab.veth(a, "wan0", b, "wan0")
    lab.address(a, "wan0", "192.0.2.1/24")
    lab.address(b, "wan0", "192.0.2.2/24")
    for ns, cidr in ((a, "10.1.0.1/24"), (b, "10.2.0.1/24")):
        lab.veth(ns, "lan0", ns, "lan1")     # no dummy driver here: a veth stands in
        lab.address(ns, "lan0", cidr)
    return a, b


def conns(ike, esp, pfs):
    common = dict(psk=PSK, ike=ike, esp=esp, pfs_group=pfs, ike_lifetime=3600,
                  lifetime=1800, rekey_margin=300)
    west = Conn("west-east", local="192.0.2.1", remote="192.0.2.2",
                local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24", **common)
    east = Conn("west-east", local="192.0.2.2", remote="192.0.2.1",
                local_ts="10.2.0.0/24", remote_ts="10.1.0.0/24", **common)
    return west, east


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_sa(sa, expect, side):
    ike_encr, encr, integ, dh = expect
    child = sa["children"][0]
    check(sa.get("version") == "1", f"{side}: IKE version {sa.get('version')}")
    check(sa.get("encr-alg") == ike_encr, f"{side}: IKE encr {sa.get('encr-alg')}")
    check(child.get("mode") == "TUNNEL", f"{side}: mode {child.get('mode')}")
    check(child.get("protocol") == "ESP", f"{side}: protocol {child.get('protocol')}")
    check(child.get("encap") == "yes", f"{side}: encap {child.get('encap')}")
    check(child.get("encr-alg") == encr, f"{side}: ESP encr {child.get('encr-alg')}")
    check(child.get("integ-alg") == integ, f"{side}: ESP integ {child.get('integ-alg')}")
    check(child.get("dh-group") == dh, f"{side}: PFS group {child.get('dh-group')}")
    check(sa.get("remote-port") == "4500", f"{side}: IKE not floated to 4500: "
          f"{sa.get('remote-port')}")
    return child


def classify(packets, spis):
    """Counts of what crossed the outer link, by kind; ESP-in-UDP with an SPI other than
    `spis` (hex strings, as swanctl shows them) counts as "other"."""
    kinds = {"ike500": 0, "ike4500": 0, "esp-in-udp": 0, "keepalive": 0, "icmp": 0,
             "esp-raw": 0, "other": 0}
    for p in packets:
        ihl, proto = (p[0] & 0x0F) * 4, p[9]
        if proto == 1:
            kinds["icmp"] += 1
        elif proto == 50:
            kinds["esp-raw"] += 1
        elif proto == 17 and len(p) >= ihl + 8:
            sport, dport = struct.unpack("!HH", p[ihl:ihl + 4])
            payload = p[ihl + 8:]
            if 500 in (sport, dport):
                kinds["ike500"] += 1
            elif 4500 in (sport, dport):
                if len(payload) == 1 and payload == b"\xff":
                    kinds["keepalive"] += 1      # NAT-T keepalive (RFC 3948)
                elif payload[:4] == b"\0\0\0\0":
                    kinds["ike4500"] += 1        # non-ESP marker: IKE
                elif payload[:4].hex() in spis:
                    kinds["esp-in-udp"] += 1
                else:
                    kinds["other"] += 1
            else:
                kinds["other"] += 1
        else:
            kinds["other"] += 1
    return kinds


def run_suite(lab, a, b, suite):
    name, ike, esp, pfs, expect = suite
    west, east = conns(ike, esp, pfs)
    tag = name.replace(" ", "_").replace("+", "_")
    sw_a = Charon(lab, a, name=f"a-{tag}")
    sw_b = Charon(lab, b, name=f"b-{tag}")
    charons = (sw_a, sw_b)
    try:
        sw_b.start([east])
        sw_a.start([west])
        cap = Capture(lab, a, "wan0", f"wan-{tag}")
        try:
            sw_a.initiate("west-east", timeout=30)
            sa_b = sw_b.wait_established("west-east", timeout=10)
            sa_a = next(s for s in sw_a.sas() if s["name"] == "west-east")
            check_sa(sa_a, expect, "a")
            check_sa(sa_b, expect, "b")
            routes = lab.run(a, "ip", "route", "show", "table", "220").stdout
            check("10.2.0.0/24 dev ipsec0" in routes and "src 10.1.0.1" in routes,
                  f"a: table 220 has no route into ipsec0:\n{routes}")
            ping = lab.run(a, "ping", "-n", "-c", PINGS, "-i", "0.2", "-W", "2", "10.2.0.1",
                           check=False, timeout=30)
            check(ping.returncode == 0 and f"{PINGS} received" in ping.stdout,
                  f"ping 10.2.0.1 from a failed:\n{ping.stdout}{ping.stderr}")
        finally:
            # tcpdump (no --immediate-mode) gets packets from the kernel in blocks that
            # retire after 1 s; stopping it sooner loses them.
            time.sleep(1.5)
            packets = cap.stop()
        child = next(s for s in sw_a.sas() if s["name"] == "west-east")["children"][0]
        check(int(child["packets-out"]) >= PINGS and int(child["packets-in"]) >= PINGS,
              f"a: CHILD_SA counters out={child['packets-out']} in={child['packets-in']}")
        kinds = classify(packets, {child["spi-in"], child["spi-out"]})
        check(kinds["icmp"] == 0, f"{kinds['icmp']} ICMP packets in clear on the wire")
        check(kinds["esp-raw"] == 0, f"{kinds['esp-raw']} raw ESP packets on the wire")
        check(kinds["esp-in-udp"] >= 2 * PINGS, f"only {kinds['esp-in-udp']} ESP-in-UDP "
              f"packets for {PINGS} pings")
        check(kinds["ike500"] >= 2, "no IKE on UDP 500")
        check(kinds["other"] == 0, f"unexpected packets on the wire: {kinds}")
        return (f"SAs {child['encr-alg']}"
                f"{'/' + child['integ-alg'] if child.get('integ-alg') else ''}"
                f"{'/' + child['dh-group'] if child.get('dh-group') else ''} "
                f"spi in {child['spi-in']} out {child['spi-out']} encap={child['encap']}; "
                f"{PINGS}/{PINGS} pings; wire: {kinds}")
    except Exception:
        for charon in charons:
            print(charon.describe(lines=60))
        raise
    finally:
        for charon in charons:
            charon.stop()


def run_wrong_psk(lab, a, b):
    """The harness must fail loudly: with different PSKs `initiate` raises CharonError
    carrying charon's log, and no SA is left."""
    west, east = conns("aes128-sha1-modp2048", "aes128-sha1", "modp2048")
    east.psk = "not the same secret"
    sw_a, sw_b = Charon(lab, a, name="a-wrong-psk"), Charon(lab, b, name="b-wrong-psk")
    try:
        sw_b.start([east])
        sw_a.start([west])
        try:
            sw_a.initiate("west-east", timeout=10)
        except CharonError as e:
            check("charon.log" in str(e), "the error does not carry charon's log")
            check(not any(s.get("state") == "ESTABLISHED" for s in sw_b.sas()),
                  "b established an IKE SA with a wrong PSK")
            first = next((line for line in str(e).splitlines() if "initiate failed" in line),
                         str(e).splitlines()[0])
            return f"initiate raised CharonError ({first.strip()})"
        raise AssertionError("initiate succeeded with different PSKs")
    finally:
        sw_a.stop()
        sw_b.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-k", default="", help="run only suites whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    missing = [t for t in ("tcpdump", "ping", "swanctl", "unshare") if not shutil.which(t)]
    if missing or not Path("/usr/lib/ipsec/charon").exists():
        print(f"missing: {missing or '/usr/lib/ipsec/charon'} (run .ci/setup-strongswan)")
        return 2

    workdir = Path(tempfile.mkdtemp(prefix="sw-selftest-"))
    lab = Lab(workdir)
    results = []
    try:
        a, b = build(lab)
        for suite in SUITES:
            if args.k not in suite[0]:
                continue
            try:
                detail = run_suite(lab, a, b, suite)
                results.append((suite[0], True, detail))
            except Exception as e:
                traceback.print_exc()
                results.append((suite[0], False, str(e).splitlines()[0]))
            print(f"{'PASS' if results[-1][1] else 'FAIL'}: {suite[0]}: {results[-1][2]}",
                  flush=True)
        if args.k in "wrong-psk":
            try:
                results.append(("wrong-psk", True, run_wrong_psk(lab, a, b)))
            except Exception as e:
                traceback.print_exc()
                results.append(("wrong-psk", False, str(e).splitlines()[0]))
            print(f"{'PASS' if results[-1][1] else 'FAIL'}: wrong-psk: {results[-1][2]}",
                  flush=True)
    finally:
        lab.close()
        left = lab.leftovers()
        if left:
            print(f"FAIL: namespaces left behind: {left}")
            results.append(("cleanup", False, str(left)))
    failed = sum(not ok for _, ok, _ in results)
    print("\n== summary")
    for name, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"{len(results) - failed} passed, {failed} failed")
    if args.keep or failed:
        print(f"logs and captures: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
