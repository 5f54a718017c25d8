"""strongSwan's charon (5.9.x) as an IKEv1 PSK peer inside a Lab namespace.

    charon = Charon(lab, ns, name="sw")
    charon.start([Conn("west-east", local="192.0.2.1", remote="192.0.2.2",
                       local_ts="10.1.0.0/24", remote_ts="10.2.0.0/24", psk="secret")])
    charon.initiate("west-east")          # or, as responder: charon.wait_established(...)
    charon.sas()                          # what `swanctl --list-sas` reports, as dicts
    charon.stop()                         # or let lab.close() end it

How it runs (docs/strongswan-peer.md says why):
- Everything of one charon lives in `lab.workdir/<name>/`: strongswan.conf, swanctl.conf,
  charon.log (the file logger: ike/cfg/knl at level 2, net/enc at 1), charon.stderr, and
  run/ (pid file and the vici socket swanctl talks to).
- charon is started as `ip netns exec NS unshare -m --propagation private sh -c 'mount
  --bind <workdir>/run /run; exec charon'`: its pid file (/run/charon.pid, compiled in)
  is then private, so one charon per namespace can run at the same time.
  STRONGSWAN_CONF points it at our strongswan.conf; /etc/strongswan* and /etc/swanctl are
  never read.
- The kernels here have no XFRM ESP, so the `kernel-libipsec` plugin does ESP in userland
  over a TUN device (ipsec0), loaded before `kernel-netlink` (which still does addresses,
  routes and the IKE sockets' view of the network). libipsec always UDP-encapsulates ESP
  (port 4500; charon fakes NAT detection to get there) and supports tunnel mode only.
- For every outbound policy kernel-netlink installs `<remote_ts> dev ipsec0 src <address
  of this host inside local_ts>` in routing table 220 (looked up by a rule at priority
  220, before `main`). The namespace must therefore hold an address inside local_ts, or
  the CHILD_SA fails with "error installing route".
- Connections are IKEv1 main mode with PSK, IDs = the outer addresses, ESP tunnel mode.

Any failure raises CharonError carrying charon's log (tail) and stderr.
"""

import os
import re
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass

from lab import LabError

CHARON = os.environ.get("CHARON", "/usr/lib/ipsec/charon")
SWANCTL = os.environ.get("SWANCTL", "swanctl")

# Plugins, in load order. kernel-libipsec must come before kernel-netlink so that it, not
# XFRM, is the IPsec backend; kernel-netlink then only provides the network part (its
# own IPsec feature fails to load, logged as "feature CUSTOM:kernel-ipsec in plugin
# 'kernel-netlink' failed to load", which is why it must not be marked critical).
# `!` marks a plugin charon must not start without.
CHARON_PLUGINS = ("random nonce openssl pem pkcs1 x509 pubkey gmp aes sha1 sha2 hmac gcm "
                  "kdf kernel-libipsec! kernel-netlink socket-default! vici!")


class CharonError(LabError):
    """charon failed to start, load, negotiate or answer; the message holds its log."""


@dataclass
class Conn:
    """One IKEv1 connection with one CHILD_SA of the same name, ESP tunnel mode.

    Lifetimes follow Pluto's words: `ike_lifetime`/`lifetime` are the hard lifetimes
    (seconds), sent to the peer in the SA payloads when charon initiates; rekeying
    (re-authentication for the ISAKMP SA) starts `rekey_margin` seconds before, minus a
    random part of up to `rekey_fuzz` percent of the margin. As a responder charon 5.9.8
    logs "received 1200s lifetime, configured 3600s" and keeps its own: configure both
    ends alike when lifetimes matter.

    The IKE identities are the outer addresses (ID_IPV4_ADDR) unless `local_id` /
    `remote_id` say otherwise; the PSK is bound to that pair of identities.
    """
    name: str
    local: str                      # outer (IKE and ESP-in-UDP) addresses
    remote: str
    local_ts: str                   # "10.1.0.0/24"
    remote_ts: str
    psk: str
    ike: str = "aes128-sha1-modp2048"   # strongSwan proposal(s), comma separated
    esp: str = "aes128-sha1"            # "aes128-sha1", "3des-sha1", "aes128gcm16", ...
    pfs_group: str = "modp2048"         # appended to every ESP proposal; None = no PFS
    ike_lifetime: int = 3600
    lifetime: int = 28800
    rekey_margin: int = 540
    rekey_fuzz: int = 100               # percent of rekey_margin
    keyingtries: int = 3                # 0 = forever
    auto: str = "none"                  # none | start (no "trap": see swanctl_conf)
    dpd_delay: int = 0                  # seconds, 0 = no DPD
    local_id: str = None
    remote_id: str = None

    @property
    def ids(self):
        return self.local_id or self.local, self.remote_id or self.remote

    def esp_proposals(self):
        proposals = [p.strip() for p in self.esp.split(",")]
        if self.pfs_group:
            proposals = [f"{p}-{self.pfs_group}" for p in proposals]
        return ",".join(proposals)

    def swanctl_conf(self):
        # start_action=trap installs the policy and route, but libipsec never raises an
        # acquire: packets are dropped ("could not find an outbound IPsec SA for reqid")
        # and nothing is negotiated. Refuse it rather than let a test hang on it.
        if self.auto not in ("none", "start"):
            raise ValueError(f"{self.name}: auto must be none or start, not {self.auto!r} "
                             f"(kernel-libipsec cannot trap: it has no acquires)")
        ike_margin = min(self.rekey_margin, self.ike_lifetime // 2)
        child_margin = min(self.rekey_margin, self.lifetime // 2)
        child_rand = max(1, min(child_margin * self.rekey_fuzz // 100,
                                self.lifetime - child_margin - 1))
        ike_rand = max(1, min(ike_margin * self.rekey_fuzz // 100,
                              self.ike_lifetime - ike_margin - 1))
        return f"""\
    {self.name} {{
        version = 1
        aggressive = no
        local_addrs = {self.local}
        remote_addrs = {self.remote}
        proposals = {self.ike}
        # IKEv1 cannot rekey an ISAKMP SA: it re-authenticates. The lifetime proposed
        # in main mode is reauth_time + over_time.
        reauth_time = {self.ike_lifetime - ike_margin}s
        rekey_time = 0s
        over_time = {ike_margin}s
        rand_time = {ike_rand}s
        keyingtries = {self.keyingtries}
        dpd_delay = {self.dpd_delay}s
        encap = yes
        send_certreq = no
        local {{
            auth = psk
            id = {self.ids[0]}
        }}
        remote {{
            auth = psk
            id = {self.ids[1]}
        }}
        children {{
            {self.name} {{
                mode = tunnel
                local_ts = {self.local_ts}
                remote_ts = {self.remote_ts}
                esp_proposals = {self.esp_proposals()}
                life_time = {self.lifetime}s
                rekey_time = {self.lifetime - child_margin}s
                rand_time = {child_rand}s
                start_action = {self.auto}
                dpd_action = clear
            }}
        }}
    }}
"""

    def secret_conf(self):
        # Hex form: no quoting or escaping problems whatever the secret holds.
        return f"""\
    ike-{self.name} {{
        id-1 = {self.ids[0]}
        id-2 = {self.ids[1]}
        secret = 0x{self.psk.encode().hex()}
    }}
"""


class Charon:
    """One charon in namespace `ns`, configured through swanctl over its vici socket.

    start(conns, timeout=20)            writes the config, starts charon, loads conns
    initiate(conn, child=None, timeout=30) -> IKE SA dict; raises CharonError on failure
    wait_established(conn, child=None, timeout=30) -> IKE SA dict (as responder)
    terminate(conn, timeout=15)         deletes the IKE SA, telling the peer
    sas() -> [IKE SA dict, each with "children"]
    swanctl(*args, check=True, timeout=60) -> CompletedProcess
    log_text(), stderr(), describe(lines=80)   logs; describe() is what errors carry
    stop(timeout=10)                    SIGTERM, then SIGKILL; lab.close() also ends it
    """

    def __init__(self, lab, ns, name="sw", log_levels=None):
        self.lab, self.ns, self.name = lab, ns, name
        self.dir = lab.workdir / name
        self.run_dir = self.dir / "run"
        self.conf = self.dir / "strongswan.conf"
        self.swanctl_conf = self.dir / "swanctl.conf"
        self.log = self.dir / "charon.log"
        self.stderr_path = self.dir / "charon.stderr"
        self.socket = self.run_dir / "charon.vici"
        self.uri = f"unix://{self.socket}"
        self.log_levels = {"default": 1, "ike": 2, "cfg": 2, "knl": 2, "net": 1, "enc": 1,
                           "esp": 1, "lib": 1, **(log_levels or {})}
        self.proc = None
        self.conns = []
        if len(str(self.socket)) >= 108:
            raise CharonError(f"{self.socket}: too long for a unix socket path; use a "
                              f"shorter lab.workdir")

    # --- life cycle -----------------------------------------------------------------
    def start(self, conns, timeout=20):
        """Writes the configuration, starts charon, loads `conns` and returns once charon
        answers on vici with them loaded (auto=start ones are then being initiated)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(exist_ok=True)
        for stale in (self.socket, self.run_dir / "charon.pid"):
            stale.unlink(missing_ok=True)
        self.conns = list(conns)
        self.conf.write_text(self._strongswan_conf())
        self.swanctl_conf.write_text(self._swanctl_conf())
        self.swanctl_conf.chmod(0o600)
        script = (f"mount --bind {shlex.quote(str(self.run_dir))} /run && "
                  f"exec env STRONGSWAN_CONF={shlex.quote(str(self.conf))} "
                  f"{shlex.quote(CHARON)}")
        self._stderr = open(self.stderr_path, "w")
        self.proc = self.lab.spawn(self.ns, "unshare", "--mount", "--propagation", "private",
                                   "sh", "-c", script, stdout=self._stderr,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CharonError(f"{self.name}: charon exited ({self.proc.returncode}) "
                                  f"while starting\n{self.describe()}")
            if self.socket.exists() and self.swanctl("--stats", check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise CharonError(f"{self.name}: no vici socket after {timeout} s\n"
                                  f"{self.describe()}")
            time.sleep(0.1)
        self.swanctl("--load-all", "--noprompt", "--file", self.swanctl_conf)
        return self

    def stop(self, timeout=10):
        """SIGTERM, as an administrator would stop it (charon deletes its SAs, sending
        delete notifications, and removes its TUN and routes); SIGKILL after `timeout`."""
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        finally:
            self._stderr.close()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # --- control --------------------------------------------------------------------
    def swanctl(self, *args, check=True, timeout=60):
        """Runs `swanctl ARGS --uri <our socket>`; raises CharonError (with the log) when
        it fails and `check`."""
        cmd = ["env", f"STRONGSWAN_CONF={self.conf}", SWANCTL, *map(str, args),
               "--uri", self.uri]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise CharonError(f"{self.name}: $ {shlex.join(cmd)}\ntimed out after {timeout} s"
                              f"\n{e.stdout or ''}{e.stderr or ''}\n{self.describe()}") from None
        if check and done.returncode != 0:
            raise CharonError(f"{self.name}: $ {shlex.join(cmd)}\nexit {done.returncode}\n"
                              f"{done.stdout}{done.stderr}\n{self.describe()}")
        return done

    def initiate(self, conn, child=None, timeout=30):
        """Initiates the IKE SA `conn` and its CHILD_SA `child` (default: same name) and
        waits until both are up; raises with charon's log when that fails."""
        child = child or conn
        self.swanctl("--initiate", "--ike", conn, "--child", child, "--timeout", timeout,
                     timeout=timeout + 10)
        return self.wait_established(conn, child, timeout=5)

    def terminate(self, conn, timeout=15):
        """Deletes the IKE SA `conn` (and its CHILD_SAs), telling the peer."""
        self.swanctl("--terminate", "--ike", conn, "--timeout", timeout, timeout=timeout + 10)

    def wait_established(self, conn, child=None, timeout=30):
        """Waits until `conn` is ESTABLISHED with CHILD_SA `child` (default: same name)
        INSTALLED, as a responder would; returns that IKE SA (see `sas()`)."""
        child = child or conn
        deadline = time.monotonic() + timeout
        while True:
            for sa in self.sas():
                if sa["name"] == conn and sa.get("state") == "ESTABLISHED":
                    if any(c.get("name") == child and c.get("state") == "INSTALLED"
                           for c in sa["children"]):
                        return sa
            if not self.running():
                raise CharonError(f"{self.name}: charon exited ({self.proc.returncode})\n"
                                  f"{self.describe()}")
            if time.monotonic() > deadline:
                raise CharonError(f"{self.name}: {conn}/{child} not established after "
                                  f"{timeout} s\n--- swanctl --list-sas\n"
                                  f"{self.swanctl('--list-sas', check=False).stdout}"
                                  f"{self.describe()}")
            time.sleep(0.2)

    def sas(self):
        """The IKE SAs charon has, from `swanctl --list-sas --raw`: a list of dicts with
        `name` and vici's keys (state, version, local-host, local-port, remote-host,
        remote-port, nat-local, nat-remote, nat-fake, encr-alg, encr-keysize, integ-alg,
        prf-alg, dh-group, initiator-spi, responder-spi, ...) and `children`, a list of
        dicts (name, state, mode, protocol, encap, spi-in, spi-out, encr-alg,
        encr-keysize, integ-alg, dh-group, bytes-in, packets-in, bytes-out, packets-out,
        local-ts, remote-ts, ...). Values are strings, lists of strings or dicts."""
        out = self.swanctl("--list-sas", "--raw").stdout
        sas = []
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("list-sa event"):
                continue
            event = parse_vici_raw(line[len("list-sa event"):])
            for name, sa in event.items():
                children = [dict(c, name=c.get("name", key))
                            for key, c in (sa.pop("child-sas", None) or {}).items()]
                sas.append(dict(sa, name=name, children=children))
        return sas

    # --- logs -----------------------------------------------------------------------
    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stderr(self):
        if self.stderr_path.exists():
            return self.stderr_path.read_text(errors="replace")
        return ""

    def describe(self, lines=80):
        """What to print when something failed: where the files are, stderr, log tail."""
        log = self.log_text().splitlines()
        return (f"--- charon {self.name} in {self.ns}, files in {self.dir}\n"
                f"--- charon.stderr\n{self.stderr()}"
                f"--- charon.log (last {lines} of {len(log)} lines)\n"
                + "\n".join(log[-lines:]) + "\n")

    # --- configuration ----------------------------------------------------------------
    def _strongswan_conf(self):
        levels = "\n".join(f"                {k} = {v}" for k, v in self.log_levels.items())
        return f"""\
# Written by tests/netns/peers/strongswan.py for charon {self.name} in {self.ns}.
charon {{
    load_modular = no
    load = {CHARON_PLUGINS}
    # IKE retransmissions, shorter than the defaults (4 s x 1.8^n, 5 tries) so a test
    # fails within a minute: 2, 3.6, 6.5, 11.7 s.
    retransmit_timeout = 2.0
    retransmit_base = 1.8
    retransmit_tries = 3
    # Routes to the remote traffic selectors, into the TUN device of kernel-libipsec.
    install_routes = yes
    routing_table = 220
    routing_table_prio = 220
    install_virtual_ip = no
    port = 500
    port_nat_t = 4500
    plugins {{
        vici {{
            socket = {self.uri}
        }}
    }}
    filelog {{
        charon {{
            path = {self.log}
            append = no
            flush_line = yes
            time_format = %H:%M:%S
            time_add_ms = yes
            ike_name = yes
{levels}
        }}
    }}
    # No syslog: everything goes to the file above.
    syslog {{
        daemon {{
            default = -1
        }}
    }}
}}
swanctl {{
    load = pem pkcs1 x509 pubkey openssl random
}}
"""

    def _swanctl_conf(self):
        return ("connections {\n" + "".join(c.swanctl_conf() for c in self.conns) + "}\n"
                "secrets {\n" + "".join(c.secret_conf() for c in self.conns) + "}\n")


# --- swanctl --raw output ---------------------------------------------------------
_TOKEN = re.compile(r"\s*(?:([^\s{}\[\]=]+)\s*(=\[|=|\{)|(\})|(\])|([^\s{}\[\]]+))")


def parse_vici_raw(text):
    """Parses the body of a vici message as `swanctl --raw` prints it:
    `{key=value sect {k=v} list=[a b]}` -> nested dicts and lists of strings."""
    pos = 0

    def token():
        nonlocal pos
        m = _TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"vici raw: cannot parse at {pos}: {text[pos:pos + 40]!r}")
        pos = m.end()
        return m

    def value():
        nonlocal pos
        # Values run to the next space or closing bracket.
        m = re.compile(r"([^\s{}\[\]]*)").match(text, pos)
        pos = m.end()
        return m.group(1)

    def section():
        result = {}
        while True:
            m = token()
            if m.group(3):
                return result
            key, kind = m.group(1), m.group(2)
            if kind == "{":
                result[key] = section()
            elif kind == "=[":
                result[key] = items()
            elif kind == "=":
                result[key] = value()
            else:
                raise ValueError(f"vici raw: unexpected {m.group(0)!r}")

    def items():
        result = []
        while True:
            m = token()
            if m.group(4):
                return result
            if m.group(5) is None:
                raise ValueError(f"vici raw: unexpected {m.group(0)!r} in a list")
            result.append(m.group(5))

    start = text.index("{")
    pos = start + 1
    return section()
