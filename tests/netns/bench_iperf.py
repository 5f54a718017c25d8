#!/usr/bin/env python3
"""Throughput of host-sim tun: iperf3 TCP between two network namespaces over a veth pair,
in the clear and through two host-sims with ESP transport (aes128-sha1, manual keys;
aes128gcm16, `keying = ike` keyed with --keys), in one run. Prints Mbit/s and the CPU each
host-sim used (utime + stime from /proc/<pid>/stat over the iperf3 run).

A benchmark, not a test: run it by hand, as root, on an otherwise idle machine.

    cargo build --release -p host-sim -p ipsec-plugin
    sudo python3 tests/netns/bench_iperf.py [--seconds 10] [--target-dir target/release]

Needs iproute2 and iperf3. docs/benchmarks-netns.md has the figures and how to read them.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import HostSim, Lab, LabError, target_dir  # noqa: E402

A, B = "192.0.2.1", "192.0.2.2"
PLAIN_A, PLAIN_B = "198.51.100.1", "198.51.100.2"


def hexkey(n):
    return "0x" + os.urandom(n).hex()


def write_configs(root):
    """Per case: {machine: (config dir, keys file or None)}."""
    cases = {}
    keys = {d: (hexkey(16), hexkey(20)) for d in ("ab", "ba")}
    for name in ("a", "b"):
        local, remote = (A, B) if name == "a" else (B, A)
        out, inn = ("ab", "ba") if name == "a" else ("ba", "ab")
        spi = {"ab": "0x1a1", "ba": "0x1b1"}
        cbc = root / "cbc" / name
        cbc.mkdir(parents=True)
        (cbc / "ipsec.cfg").write_text(
            f"[bench]\nlocal = {local}\nremote = {remote}\nmode = transport\n"
            f"esp = aes128-sha1\nkeying = manual\n"
            f"esp_spi_out = {spi[out]}\nesp_enc_key_out = {keys[out][0]}\n"
            f"esp_auth_key_out = {keys[out][1]}\n"
            f"esp_spi_in = {spi[inn]}\nesp_enc_key_in = {keys[inn][0]}\n"
            f"esp_auth_key_in = {keys[inn][1]}\n")
        cases.setdefault("esp aes128-sha1", {})[name] = (cbc, None)
    gcm_keys = {d: hexkey(20) for d in ("ab", "ba")}  # AES-128 key + 4-byte salt
    for name in ("a", "b"):
        local, remote = (A, B) if name == "a" else (B, A)
        out, inn = ("ab", "ba") if name == "a" else ("ba", "ab")
        spi = {"ab": "0x1001", "ba": "0x1002"}
        gcm = root / "gcm" / name
        gcm.mkdir(parents=True)
        (gcm / "ipsec.cfg").write_text(
            f"[bench]\nlocal = {local}\nremote = {remote}\nmode = transport\n"
            f"esp = aes128gcm16\nkeying = ike\n")
        keys_file = gcm / "keys"
        keys_file.write_text(
            f"[bench]\nesp_spi_out = {spi[out]}\nesp_spi_in = {spi[inn]}\n"
            f"esp_enc_key_out = {gcm_keys[out]}\nesp_enc_key_in = {gcm_keys[inn]}\n")
        cases.setdefault("esp aes128gcm16", {})[name] = (gcm, keys_file)
    return cases


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(lab, client_ns, server_ns, server_ip, seconds, host_sims):
    server = lab.spawn(server_ns, "iperf3", "-s", "-1", "-B", server_ip,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    before = {name: cpu_seconds(hs.proc.pid) for name, hs in host_sims.items()}
    start = time.monotonic()
    done = lab.run(client_ns, "iperf3", "-c", server_ip, "-t", str(seconds), "-J",
                   timeout=seconds + 60)
    wall = time.monotonic() - start
    cpu = {name: (cpu_seconds(hs.proc.pid) - before[name]) / wall * 100
           for name, hs in host_sims.items()}
    server.wait(10)
    end = json.loads(done.stdout)["end"]
    return {"mbit": end["sum_received"]["bits_per_second"] / 1e6,
            "retransmits": end["sum_sent"].get("retransmits", 0), "cpu": cpu}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--target-dir", type=Path, default=target_dir() / "release",
                        help="where host-sim and libipsec_plugin.so are (default: target/release)")
    args = parser.parse_args()
    host_sim = args.target_dir / "host-sim"
    plugin = args.target_dir / "libipsec_plugin.so"
    for path in (host_sim, plugin):
        if not path.is_file():
            sys.exit(f"{path} not found: cargo build --release -p host-sim -p ipsec-plugin")
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, TUN, raw sockets)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-iperf-"))
    lab = Lab(workdir)
    results = []
    try:
        ns_a, ns_b = lab.netns("a"), lab.netns("b")
        lab.veth(ns_a, "wan0", ns_b, "wan0")
        lab.address(ns_a, "wan0", f"{A}/24")
        lab.address(ns_b, "wan0", f"{B}/24")
        lab.veth(ns_a, "plain0", ns_b, "plain0")
        lab.address(ns_a, "plain0", f"{PLAIN_A}/24")
        lab.address(ns_b, "plain0", f"{PLAIN_B}/24")

        results.append(("plain veth", iperf(lab, ns_a, ns_b, PLAIN_B, args.seconds, {})))
        for case, machines in write_configs(workdir).items():
            sims = {}
            for name, ns in (("a", ns_a), ("b", ns_b)):
                config, keys = machines[name]
                extra = ["--keys", keys] if keys else []
                sims[name] = HostSim(lab, ns, host_sim, plugin, config, "wan0",
                                     f"{case.split()[-1]}-{name}", extra=extra)
            results.append((case, iperf(lab, ns_a, ns_b, B, args.seconds, sims)))
            for hs in sims.values():
                hs.quit()
    except LabError as e:
        sys.exit(f"bench failed: {e}")
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)

    cpu_model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    print(f"{cpu_model}, {os.cpu_count()} CPUs, kernel {platform.release()}, "
          f"iperf3 TCP {args.seconds} s, {args.target_dir}")
    print(f"{'case':<18} {'Mbit/s':>9} {'retr':>6} {'host-sim a CPU':>15} {'host-sim b CPU':>15}")
    for case, r in results:
        cpu = [f"{r['cpu'][n]:.0f} %" if n in r["cpu"] else "-" for n in ("a", "b")]
        print(f"{case:<18} {r['mbit']:>9.1f} {r['retransmits']:>6} {cpu[0]:>15} {cpu[1]:>15}")


if __name__ == "__main__":
    main()
