"""The machines of every cfg-samples scenario laid out as network namespaces, each IPsec
machine running `host-sim tun` on its own sample config, plus a plain PC (no host-sim)
on the LAN behind each gateway.

    WAN: namespace <prefix>-wan with bridge br0; a machine with a WAN address has veth
         wan0 there (192.0.2.0/24, cfg-samples/README.md's address plan).
    LAN: a gateway has bridge lan0 (10.x.0.1/24) and forwards; a machine behind it has
         veth eth0 on that bridge and its default route through the gateway.

host-sim's outer interface is wan0, or eth0 for a machine on a LAN (nested's host2). The
routes to what the bundles protect are host-sim's own (into its TUN); nothing else is
routed, so traffic that misses the plugin has nowhere to go but a visible failure.
"""

import ipaddress
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import REPO, Capture, HostSim, LabError

CFG_SAMPLES = REPO / "cfg-samples"
TRANSFER_BYTES = 10 * 1024 * 1024
TCP_HASH = Path(__file__).resolve().parent / "tcp_hash.py"
IKE_PORT = 500
NAT_T_PORT = 4500


@dataclass
class Node:
    name: str
    hostsim: bool = True    # runs host-sim tun on <config root>/<scenario>/<name>
    wan: str = None         # its WAN address, "192.0.2.1/24"
    lan: str = None         # a gateway: its address on its LAN bridge, "10.2.0.1/24"
    behind: str = None      # sits on the LAN of this gateway...
    addr: str = None        # ... with this address, "10.2.0.5/24"
    dialup: bool = False    # the WAN address comes later, followed by `connect`

    @property
    def ip(self):
        return (self.wan or self.addr).split("/")[0]


@dataclass
class Scenario:
    name: str
    nodes: list
    # (from, to) node names: ping both ways' worth (requests and replies) for each; the
    # 10 MB TCP transfer runs on the first.
    flows: list
    # Address pairs (CIDR) whose every packet on the WAN must be ESP/AH/IPComp/UDP-4500:
    # the selectors of the bundles and the endpoints of their SAs.
    protected: list
    # gateway name -> pairs that must not be clear on its LAN either (end-to-end bundles).
    lan_protected: dict = field(default_factory=dict)

    def node(self, name):
        return next(n for n in self.nodes if n.name == name)


SCENARIOS = {s.name: s for s in [
    Scenario(
        "host-to-host",
        [Node("host1", wan="192.0.2.1/24"), Node("host2", wan="192.0.2.2/24")],
        flows=[("host1", "host2")],
        protected=[("192.0.2.1/32", "192.0.2.2/32")],
    ),
    Scenario(
        "gateway-to-gateway",
        [Node("gw-west", wan="192.0.2.11/24", lan="10.1.0.1/24"),
         Node("gw-east", wan="192.0.2.12/24", lan="10.2.0.1/24"),
         Node("west-pc", hostsim=False, behind="gw-west", addr="10.1.0.10/24"),
         Node("east-pc", hostsim=False, behind="gw-east", addr="10.2.0.10/24")],
        flows=[("west-pc", "east-pc")],
        protected=[("10.1.0.0/24", "10.2.0.0/24"), ("192.0.2.11/32", "192.0.2.12/32")],
    ),
    Scenario(
        "host-to-gateway",
        [Node("host", wan="192.0.2.21/24"),
         Node("gw", wan="192.0.2.22/24", lan="10.2.0.1/24"),
         Node("pc", hostsim=False, behind="gw", addr="10.2.0.10/24")],
        flows=[("host", "pc")],
        protected=[("192.0.2.21/32", "10.2.0.0/24"), ("192.0.2.21/32", "192.0.2.22/32")],
    ),
    Scenario(
        "nested",
        [Node("host1", wan="192.0.2.31/24"),
         Node("gw", wan="192.0.2.32/24", lan="10.2.0.1/24"),
         Node("host2", behind="gw", addr="10.2.0.5/24"),
         Node("pc", hostsim=False, behind="gw", addr="10.2.0.10/24")],
        flows=[("host1", "host2"), ("host1", "pc")],
        protected=[("192.0.2.31/32", "10.2.0.0/24"), ("192.0.2.31/32", "192.0.2.32/32")],
        lan_protected={"gw": [("192.0.2.31/32", "10.2.0.5/32")]},
    ),
    Scenario(
        "dynamic-address",
        [Node("dialer", wan="192.0.2.41/24", dialup=True),
         Node("gw", wan="192.0.2.42/24", lan="10.2.0.1/24"),
         Node("pc", hostsim=False, behind="gw", addr="10.2.0.10/24")],
        flows=[("dialer", "pc")],
        protected=[("192.0.2.41/32", "10.2.0.0/24"), ("192.0.2.41/32", "192.0.2.42/32")],
    ),
]}


class Net:
    """A scenario built in a Lab, host-sims running (dial-up machines not yet connected)."""

    def __init__(self, lab, scenario, binaries, config_root=CFG_SAMPLES, extra_args=None,
                 start=True):
        self.lab, self.scenario, self.binaries = lab, scenario, binaries
        self.config_root = Path(config_root)
        self.ns = {}
        self.ports = {}      # node -> its port on the WAN bridge (in the wan namespace)
        self.lan_ports = {}  # node behind a gateway -> its port on that gateway's lan0
        self.host_sims = {}
        self.wan = lab.netns("wan")
        lab.bridge(self.wan, "br0")
        for n in scenario.nodes:
            self.ns[n.name] = lab.netns(n.name)
        for i, n in enumerate(scenario.nodes):
            ns = self.ns[n.name]
            if n.wan:
                port = f"p{i}"
                lab.veth(ns, "wan0", self.wan, port)
                lab.enslave(self.wan, port, "br0")
                self.ports[n.name] = port
                if not n.dialup:
                    lab.address(ns, "wan0", n.wan)
            if n.lan:
                lab.bridge(ns, "lan0")
                lab.address(ns, "lan0", n.lan)
                lab.forwarding(ns)
        for i, n in enumerate(scenario.nodes):
            if n.behind:
                gw = scenario.node(n.behind)
                port = f"l{i}"
                lab.veth(self.ns[n.name], "eth0", self.ns[gw.name], port)
                lab.enslave(self.ns[gw.name], port, "lan0")
                self.lan_ports[n.name] = port
                lab.address(self.ns[n.name], "eth0", n.addr)
                lab.run(self.ns[n.name], "ip", "route", "add", "default", "via",
                        gw.lan.split("/")[0])
        if start:
            for n in scenario.nodes:
                if n.hostsim:
                    self.start(n.name, (extra_args or {}).get(n.name, ()))

    def add_wan_host(self, name, cidr):
        """Another machine on the WAN, without host-sim (an attacker, say); returns its
        namespace."""
        ns = self.lab.netns(name)
        port = f"x{len(self.ports)}"
        self.lab.veth(ns, "wan0", self.wan, port)
        self.lab.enslave(self.wan, port, "br0")
        self.lab.address(ns, "wan0", cidr)
        return ns

    def start(self, name, extra=()):
        n = self.scenario.node(name)
        hs = HostSim(self.lab, self.ns[name], self.binaries["host-sim"],
                     self.binaries["plugin"], self.config_root / self.scenario.name / name,
                     "wan0" if n.wan else "eth0", name, extra=extra)
        self.host_sims[name] = hs
        return hs

    def ip(self, name):
        return self.scenario.node(name).ip

    def connect_dialups(self):
        """What a dialer's link does: the address appears, then the host's connect event."""
        for n in self.scenario.nodes:
            if n.dialup:
                self.lab.address(self.ns[n.name], "wan0", n.wan)
                self.host_sims[n.name].command(f"connect {n.ip}")

    # --- traffic ----------------------------------------------------------------------
    def ping(self, src, dst, count=3, args=(), check=True, timeout=30):
        """ping from node `src` to node (or address) `dst`; returns the finished process."""
        addr = self.ip(dst) if dst in self.ns else dst
        done = self.lab.run(self.ns[src], "ping", "-n", "-c", str(count), "-i", "0.2",
                            "-W", "2", *args, addr, check=False, timeout=timeout)
        if check and (done.returncode != 0 or f"{count} received" not in done.stdout):
            raise LabError(f"ping {src} -> {dst} ({addr}) failed:\n{done.stdout}{done.stderr}"
                           + self.diagnostics())
        return done

    def transfer(self, src, dst, nbytes=TRANSFER_BYTES, seed=1, port=5201, timeout=120):
        """Sends `nbytes` over TCP from `src` to `dst`, whose server checks their SHA-256;
        returns the client's report line."""
        return tcp_transfer(self.lab, self.ns[src], self.ns[dst], self.ip(dst), nbytes,
                            seed=seed, port=port, timeout=timeout,
                            diagnostics=self.diagnostics)

    # --- captures ---------------------------------------------------------------------
    def capture_wan(self):
        """tcpdump on every WAN port (each machine's outer link)."""
        return [Capture(self.lab, self.wan, port, f"wan-{name}")
                for name, port in self.ports.items()]

    def capture_lan(self, gateway):
        return [Capture(self.lab, self.ns[gateway], port, f"lan-{name}")
                for name, port in self.lan_ports.items()
                if self.scenario.node(name).behind == gateway]

    def diagnostics(self):
        return "".join(f"\n===== {name}\n{hs.describe()}" for name, hs in self.host_sims.items())


def tcp_transfer(lab, src_ns, dst_ns, dst_ip, nbytes, seed=1, port=5201, timeout=120,
                 diagnostics=lambda: ""):
    """Sends `nbytes` over TCP from namespace `src_ns` to a server in `dst_ns` listening
    on `dst_ip`, which checks their SHA-256; returns the client's report line."""
    server = lab.spawn(dst_ns, "python3", TCP_HASH, "serve", str(port), str(timeout),
                       stdout=subprocess.PIPE)
    line = server.stdout.readline()
    if not line.startswith("listening"):
        raise LabError(f"tcp_hash server in {dst_ns} did not start: {line!r}")
    done = lab.run(src_ns, "python3", TCP_HASH, "send", dst_ip, str(port), str(nbytes),
                   str(seed), check=False, timeout=timeout)
    server.wait(timeout)
    if done.returncode != 0:
        raise LabError(f"TCP transfer to {dst_ip} failed:\n{done.stdout}{done.stderr}"
                       + diagnostics())
    return done.stdout.strip()


def _ipv4_fields(packet):
    header_len = (packet[0] & 0x0F) * 4
    src = ipaddress.IPv4Address(packet[12:16])
    dst = ipaddress.IPv4Address(packet[16:20])
    proto = packet[9]
    ports = None
    if proto in (6, 17) and len(packet) >= header_len + 4:
        ports = (int.from_bytes(packet[header_len:header_len + 2], "big"),
                 int.from_bytes(packet[header_len + 2:header_len + 4], "big"))
    return src, dst, proto, ports


def is_ipsec(packet):
    """ESP, AH, IPComp, ESP in UDP (4500), or IKE (500)."""
    _, _, proto, ports = _ipv4_fields(packet)
    if proto in (50, 51, 108):
        return True
    return proto == 17 and ports is not None and bool(
        {IKE_PORT, NAT_T_PORT} & set(ports))


def _between(src, dst, pair):
    a, b = (ipaddress.IPv4Network(p) for p in pair)
    return (src in a and dst in b) or (src in b and dst in a)


def cleartext_leaks(packets, pairs):
    """Packets between a protected pair that are not IPsec, as readable lines."""
    leaks = []
    for p in packets:
        src, dst, proto, ports = _ipv4_fields(p)
        if any(_between(src, dst, pair) for pair in pairs) and not is_ipsec(p):
            leaks.append(f"{src} > {dst} proto {proto} ports {ports} len {len(p)}")
    return leaks


def ipsec_bytes(packets, pairs):
    """Bytes of IPsec packets between the protected pairs."""
    return sum(len(p) for p in packets
               if is_ipsec(p) and any(_between(*_ipv4_fields(p)[:2], pair) for pair in pairs))


def payload_samples(seed=1, count=8, size=16):
    """Byte strings the TCP transfer with `seed` sends (tcp_hash.py makes the same
    stream): none may be visible on a protected link."""
    data = random.Random(seed).randbytes(65536)
    return [data[i * 4099:i * 4099 + size] for i in range(count)]


def wait_for(predicate, timeout=10, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
