"""A laboratory of network namespaces for `host-sim tun`: namespaces, veth links, bridges,
processes started inside them, host-sim instances driven over stdin, and tcpdump captures.

Everything a Lab creates carries its unique prefix and is recorded, and `Lab.close()`
removes all of it, whatever state the test left it in: the processes it started (by
their pid), then any process still inside one of its namespaces, then the namespaces
(which takes their veths, bridges and TUN interfaces with them).
"""

import os
import queue
import secrets
import shlex
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def target_dir():
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target if target.is_absolute() else REPO / target


class LabError(AssertionError):
    """A step of the set-up or a command failed; the message says which and why."""


class Lab:
    """Namespaces and processes of one test."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Unique per run and per test, short enough for interface-free names.
        self.prefix = f"hs{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces = []
        self.procs = []
        self.host_sims = []

    # --- namespaces and links -------------------------------------------------------
    def netns(self, role):
        """A new namespace `<prefix>-<role>` with loopback up and strict reverse-path
        filtering (as a hardened distribution would have it)."""
        name = f"{self.prefix}-{role}"
        self.sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        for conf in ("all", "default"):
            self.run(name, "sysctl", "-q", "-w", f"net.ipv4.conf.{conf}.rp_filter=1")
        return name

    def veth(self, ns_a, if_a, ns_b, if_b, mtu=None):
        """A veth pair between two namespaces, both ends up."""
        self.run(ns_a, "ip", "link", "add", if_a, "type", "veth", "peer", "name", if_b,
                 "netns", ns_b)
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            if mtu:
                self.run(ns, "ip", "link", "set", ifname, "mtu", str(mtu))
            self.run(ns, "ip", "link", "set", ifname, "up")

    def bridge(self, ns, name):
        self.run(ns, "ip", "link", "add", name, "type", "bridge")
        self.run(ns, "ip", "link", "set", name, "up")

    def enslave(self, ns, ifname, bridge):
        self.run(ns, "ip", "link", "set", ifname, "master", bridge)

    def address(self, ns, ifname, cidr):
        self.run(ns, "ip", "addr", "add", cidr, "dev", ifname)

    def forwarding(self, ns):
        self.run(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")

    # --- commands and processes -----------------------------------------------------
    @staticmethod
    def sh(*cmd, check=True, timeout=30, input=None):
        try:
            done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                                  timeout=timeout, input=input)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"$ {shlex.join(map(str, cmd))}\ntimed out after {timeout} s\n"
                           f"{e.stdout or ''}{e.stderr or ''}") from None
        if check and done.returncode != 0:
            raise LabError(f"$ {shlex.join(map(str, cmd))}\nexit {done.returncode}\n"
                           f"{done.stdout}{done.stderr}")
        return done

    def run(self, ns, *cmd, check=True, timeout=30, input=None):
        """Runs a command inside namespace `ns` and waits for it."""
        return self.sh("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout,
                       input=input)

    def spawn(self, ns, *cmd, stdin=subprocess.DEVNULL, stdout=None, stderr=None, text=True):
        """Starts a command inside `ns`; it is ended (by pid) when the lab closes."""
        argv = ["ip", "netns", "exec", ns] + [str(c) for c in cmd]
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, text=text,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def close(self):
        for hs in self.host_sims:
            hs.close_pipes()
        for proc in reversed(self.procs):
            _end(proc)
        for ns in self.namespaces:
            # Anything a test started that outlived its Popen (a child of a child).
            pids = self.sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            for _ in range(50):
                if self.sh("ip", "netns", "del", ns, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self.namespaces.clear()
        self.procs.clear()

    def leftovers(self):
        """Namespaces of this lab that still exist (close() must leave none)."""
        listed = self.sh("ip", "netns", "list").stdout
        return [line.split()[0] for line in listed.splitlines()
                if line.startswith(self.prefix)]


def _end(proc, grace=5):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(grace)


class HostSim:
    """One `host-sim tun` in a namespace, driven through its stdin commands."""

    def __init__(self, lab, ns, binary, plugin, config, outer_if, name, tun="tun0",
                 extra=(), ready_timeout=30):
        self.lab, self.ns, self.name, self.tun = lab, ns, name, tun
        self.log = lab.workdir / f"{name}.ipsec.log"
        self.stderr_path = lab.workdir / f"{name}.stderr"
        self.argv = [binary, "tun", "--config", config, "--tun", tun, "--outer-if", outer_if,
                     "--log", self.log, "--plugin", plugin, *extra]
        self._stderr = open(self.stderr_path, "w")
        self.proc = lab.spawn(ns, *self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self._stderr)
        lab.host_sims.append(self)
        self._lines = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self._next_line(ready_timeout)
        if not ready.startswith("ready "):
            raise LabError(f"{name}: expected the ready line, got {ready!r}\n{self.describe()}")
        self.state = _fields(ready)

    def _pump(self):
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _next_line(self, timeout):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise LabError(f"{self.name}: no answer within {timeout} s\n{self.describe()}") from None
        if line is None:
            self.proc.wait(5)
            raise LabError(f"{self.name}: host-sim exited ({self.proc.returncode})\n"
                           f"{self.describe()}")
        return line

    def command(self, text, timeout=20):
        """Sends one command; returns the lines before its `ok` line (and the ok line's
        key=value fields in .state); raises on `error`."""
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        lines = []
        while True:
            line = self._next_line(timeout)
            if line.startswith("ok "):
                self.state.update(_fields(line))
                return lines
            if line.startswith("error "):
                raise LabError(f"{self.name}: `{text}` -> {line}\n{self.describe()}")
            lines.append(line)

    def stats(self):
        return {k: int(v) for k, v in (line.split() for line in self.command("stats"))}

    def mtu(self):
        return int(self.state["mtu"])

    def quit(self, timeout=10):
        """Asks it to stop and waits; returns the exit status."""
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        return self.proc.wait(timeout)

    def close_pipes(self):
        for f in (self.proc.stdin, self._stderr):
            try:
                f.close()
            except (BrokenPipeError, OSError):
                pass

    def stderr(self):
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def describe(self):
        log = self.log.read_text(errors="replace") if self.log.exists() else "(none)"
        return (f"$ {shlex.join(map(str, self.argv))} (in {self.ns})\n--- stderr\n"
                f"{self.stderr()}--- ipsec.log (last 40 lines)\n"
                + "\n".join(log.splitlines()[-40:]))


def _fields(line):
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


class Capture:
    """tcpdump on one interface of one namespace, into a pcap file."""

    def __init__(self, lab, ns, ifname, name):
        self.path = lab.workdir / f"{name}.pcap"
        self.ns, self.ifname = ns, ifname
        self._err_path = lab.workdir / f"{name}.tcpdump"
        self._err = open(self._err_path, "w")
        # -U: write each packet as it comes, so stopping loses nothing.
        self.proc = lab.spawn(ns, "tcpdump", "-n", "-U", "-i", ifname, "-w", self.path,
                              stderr=self._err)
        deadline = time.monotonic() + 10
        while "listening on" not in self._err_path.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"tcpdump on {ns}/{ifname} did not start:\n"
                               f"{self._err_path.read_text()}")
            time.sleep(0.05)

    def stop(self):
        """Stops tcpdump and returns the IPv4 packets it saw."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        self._err.close()
        return read_pcap_ipv4(self.path)


def read_pcap_ipv4(path):
    """The IPv4 packets of a classic pcap file of Ethernet (1) or raw IP (101) frames."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        order = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        order = ">"
    else:
        raise LabError(f"{path}: not a classic pcap file")
    link_type = struct.unpack(order + "I", data[20:24])[0]
    packets, at = [], 24
    while at + 16 <= len(data):
        incl = struct.unpack(order + "I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + incl]
        at += 16 + incl
        if link_type == 1:
            if len(frame) < 14:
                continue
            ethertype, offset = frame[12:14], 14
            if ethertype == b"\x81\x00":
                ethertype, offset = frame[16:18], 18
            if ethertype != b"\x08\x00":
                continue
            frame = frame[offset:]
        elif link_type != 101:
            raise LabError(f"{path}: link type {link_type} not handled")
        if len(frame) >= 20 and frame[0] >> 4 == 4:
            packets.append(frame)
    return packets
