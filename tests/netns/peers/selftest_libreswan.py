#!/usr/bin/env python3
"""Self-test of the libreswan peer harness (libreswan.py): two namespaces joined by a veth,
one pluto in each, IKEv1 PSK Main Mode + Quick Mode in both directions, and the SAs the
two shims recorded must mirror each other (a's outbound SA is b's inbound SA: same SPI,
same keys, and the other way round).

    sudo python3 tests/netns/peers/selftest_libreswan.py [-k WORD] [--keep]

Needs root and `.ci/setup-libreswan`. Not a pytest module (pytest collects test_*.py
only): it proves the harness, not our product. Prints PASS/FAIL per case and a closing
`N passed, N failed` line; exits non-zero when a case fails. Everything it creates is
removed at the end (Lab.close), whatever happens; the work directory with the pluto
logs is kept when a case fails, or with --keep.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from lab import Lab, LabError  # noqa: E402
from libreswan import Conn, Libreswan  # noqa: E402

A, B = "192.0.2.1", "192.0.2.2"
A_NET, B_NET = "198.51.100.0/24", "203.0.113.0/24"     # tunnel-mode subnets

# What the shim records for each ESP transform: {field: (kernel name, key bytes)}.
EXPECT = {
    "aes128-sha1": {"enc": ("aes", 16), "auth": ("sha1", 20)},
    "3des-sha1": {"enc": ("des3_ede", 24), "auth": ("sha1", 20)},
    "aes_gcm128": {"aead": ("rfc4106(gcm(aes))", 20)},        # 16 key + 4 salt
}


@dataclass
class Case:
    name: str
    initiator: str                      # "a" or "b"
    type: str = "transport"
    esp: str = "aes128-sha1"
    pfs: bool = True
    extra: dict = field(default_factory=dict)
    encap: bool = False                 # expect ESP in UDP (RFC 3948)


CASES = [
    Case("aes128-sha1 pfs transport, a initiates", "a"),
    Case("aes128-sha1 pfs tunnel, b initiates", "b", type="tunnel"),
    Case("aes128-sha1 no-pfs transport, b initiates", "b", pfs=False),
    Case("aes128-sha1 no-pfs tunnel, a initiates", "a", type="tunnel", pfs=False),
    Case("3des-sha1 pfs tunnel, a initiates", "a", type="tunnel", esp="3des-sha1"),
    Case("aes_gcm128 pfs transport, b initiates", "b", esp="aes_gcm128"),
    Case("aes128-sha1 encapsulation=yes transport, a initiates", "a",
         extra={"encapsulation": "yes"}, encap=True),
]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wire(sa):
    """The fields both ends of one SA must agree on."""
    return {k: sa[k] for k in ("src", "dst", "spi", "proto", "mode", "enc", "auth", "aead",
                               "encap", "esn")}


def run_case(lab, n, case):
    ns = {"a": lab.netns(f"a{n}"), "b": lab.netns(f"b{n}")}
    lab.veth(ns["a"], "eth0", ns["b"], "eth0")
    lab.address(ns["a"], "eth0", f"{A}/24")
    lab.address(ns["b"], "eth0", f"{B}/24")
    tunnel = case.type == "tunnel"
    conn = Conn("selftest", left=A, right=B, type=case.type, esp=case.esp, pfs=case.pfs,
                leftsubnet=A_NET if tunnel else None, rightsubnet=B_NET if tunnel else None,
                extra=case.extra)
    peers = {side: Libreswan(lab, ns[side], name=f"case{n}-{side}") for side in "ab"}
    try:
        for p in peers.values():
            p.start([conn])
        init = peers[case.initiator]
        resp = peers["b" if case.initiator == "a" else "a"]
        out = init.initiate(conn.name, timeout=60)
        resp.wait_established(conn.name, timeout=30)

        # Main Mode (not Aggressive) and Quick Mode, in the roles asked for.
        check("initiating IKEv1 Main Mode" in out, f"initiator did not start Main Mode:\n{out}")
        check("responding to Main Mode" in resp.log_text(), "responder saw no Main Mode")
        check("responding to Quick Mode" in resp.log_text(), "responder saw no Quick Mode")
        check(("pfsgroup=MODP2048" in out) == case.pfs,
              f"Quick Mode PFS is not {'on' if case.pfs else 'off'}:\n{out}")
        check(f"IPsec SA established {case.type} mode" in out, f"no {case.type} SA:\n{out}")

        # The shims' records: each side one outbound and one inbound ESP SA, and a's
        # outbound is b's inbound (and the other way round), keys included.
        sas = {side: [s for s in p.installed_sas() if s["proto"] == "esp"]
               for side, p in peers.items()}
        addr = {"a": A, "b": B}
        for side, mine in sas.items():
            check(len(mine) == 2, f"{side}: expected 2 ESP SAs, shim recorded {mine}")
            out_sa = [s for s in mine if s["src"] == addr[side]]
            in_sa = [s for s in mine if s["dst"] == addr[side]]
            check(len(out_sa) == 1 and len(in_sa) == 1, f"{side}: not one out + one in: {mine}")
            for s in mine:
                check(s["mode"] == case.type, f"{side}: mode {s['mode']}, not {case.type}")
                for key, (alg, length) in EXPECT[case.esp].items():
                    check(s[key] and s[key]["name"] == alg, f"{side}: {key} is {s[key]}")
                    check(len(bytes.fromhex(s[key]["key"])) == length,
                          f"{side}: {key} key is not {length} bytes: {s[key]}")
                    check(set(s[key]["key"]) != {"0"}, f"{side}: all-zero {key} key")
                if case.encap:
                    check(s["encap"] and s["encap"]["sport"] == 4500
                          and s["encap"]["dport"] == 4500, f"{side}: no UDP 4500: {s}")
                else:
                    check(s["encap"] is None, f"{side}: encapsulated without NAT: {s}")
        a_out = next(s for s in sas["a"] if s["src"] == A)
        a_in = next(s for s in sas["a"] if s["dst"] == A)
        b_out = next(s for s in sas["b"] if s["src"] == B)
        b_in = next(s for s in sas["b"] if s["dst"] == B)
        check(wire(a_out) == wire(b_in), f"a->b differs:\na: {a_out}\nb: {b_in}")
        check(wire(b_out) == wire(a_in), f"b->a differs:\nb: {b_out}\na: {a_in}")
        check(a_out["spi"] != a_in["spi"], "same SPI both ways")
        for k in EXPECT[case.esp]:
            check(a_out[k]["key"] != a_in[k]["key"], f"same {k} key both ways")

        for p in peers.values():
            status = p.stop()
            check(status == 0, f"{p.name}: pluto did not shut down cleanly ({status})")
        return f"spi a->b {a_out['spi']} b->a {b_out['spi']}"
    except Exception:
        for p in peers.values():
            print(p.describe(40), file=sys.stderr)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", help="run only cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("selftest_libreswan: needs root (network namespaces)")

    workdir = Path(tempfile.mkdtemp(prefix="selftest-libreswan-"))
    lab = Lab(workdir)
    passed = failed = 0
    try:
        for n, case in enumerate(CASES):
            if args.k and args.k not in case.name:
                continue
            start = time.monotonic()
            try:
                detail = run_case(lab, n, case)
                passed += 1
                print(f"PASS  {case.name}  ({time.monotonic() - start:.1f} s; {detail})",
                      flush=True)
            except (AssertionError, LabError, OSError, KeyError, ValueError) as e:
                failed += 1
                print(f"FAIL  {case.name}\n{''.join(traceback.format_exception_only(e))}",
                      flush=True)
    finally:
        lab.close()
        left = lab.leftovers()
        if left:
            failed += 1
            print(f"FAIL  cleanup: namespaces left behind: {left}")
    if failed or args.keep:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
