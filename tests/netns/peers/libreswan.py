"""libreswan 4.10's pluto as an IKEv1 PSK peer inside a namespace of a `Lab`.

    lsw = Libreswan(lab, ns, name="lsw")
    lsw.start([Conn("c", left="192.0.2.1", right="192.0.2.2", pfs=True)])
    lsw.initiate("c")                 # or, as responder: lsw.wait_established("c")
    lsw.installed_sas()               # what pluto negotiated, keys included
    lsw.stop()

pluto comes from the private tree of `.ci/setup-libreswan` ($LIBRESWAN_ROOT, default
/opt/libreswan-4.10), runs in its own mount namespace (inside the Lab namespace) with
its own ipsec.conf, secrets, NSS database and run directory under `lab.workdir/<name>/`,
and with the LD_PRELOAD shim `libreswan_shim.c`: our kernels have no ESP, so the shim
answers pluto's XFRM SA and policy requests itself and records every SA pluto installs
in `sa.jsonl`. The kernel of that namespace therefore never protects anything: pluto
only negotiates. docs/libreswan-peer.md tells the whole story.
"""

import json
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import LabError

ROOT = Path(os.environ.get("LIBRESWAN_ROOT", "/opt/libreswan-4.10"))
SHIM_SRC = Path(__file__).resolve().with_name("libreswan_shim.c")

# `whack --status` state lines: 000 #2: "c":500 STATE_QUICK_I2 (IPsec SA established); ...
_DEBUG = re.compile(r"^\w{3} [ \d]\d [\d:.]+: \| ")   # a plutodebug line
_STATE = re.compile(r'^(?:\d{3} )?#(\d+): "([^"]+)"\S* (STATE_\w+) \(([^)]*)\)', re.M)


@dataclass
class Conn:
    """One IKEv1 PSK connection (an ipsec.conf `conn` section). Both peers may use the
    same Conn: pluto finds which end it is from its own addresses.

    `ike`/`esp` use libreswan's syntax: ike="aes128-sha1;modp2048", esp="aes128-sha1",
    "3des-sha1", "aes_gcm128" (AES-GCM, 16-byte ICV, 128-bit key). This build refuses
    MODP1024. With pfs=True and no group in `esp`, PFS uses the IKE group. `extra` adds
    ipsec.conf keys verbatim (e.g. {"encapsulation": "yes", "keyingtries": "3"})."""

    name: str
    left: str
    right: str
    leftsubnet: str | None = None
    rightsubnet: str | None = None
    type: str = "tunnel"
    ike: str = "aes128-sha1;modp2048"
    esp: str = "aes128-sha1"
    pfs: bool = True
    psk: str = "interop-test-psk"
    auto: str = "add"
    ikelifetime: str | None = None
    salifetime: str | None = None
    encapsulation: str = "auto"
    keyingtries: int = 1
    extra: dict = field(default_factory=dict)

    def section(self):
        keys = {
            "keyexchange": "ike",
            "ikev2": "no",                # 4.10's way of saying IKEv1 (Main Mode)
            "authby": "secret",
            "left": self.left,
            "right": self.right,
            "leftsubnet": self.leftsubnet,
            "rightsubnet": self.rightsubnet,
            "type": self.type,
            "ike": self.ike,
            "esp": self.esp,
            "pfs": "yes" if self.pfs else "no",
            "ikelifetime": self.ikelifetime,
            "salifetime": self.salifetime,
            "encapsulation": self.encapsulation,
            "keyingtries": str(self.keyingtries),
            "auto": self.auto,
            # No routes or firewall rules: the kernel does no ESP here anyway.
            "leftupdown": "%disabled",
            "rightupdown": "%disabled",
            **self.extra,
        }
        lines = [f"conn {self.name}"]
        lines += [f"\t{k}={v}" for k, v in keys.items() if v is not None]
        return "\n".join(lines) + "\n"


class Libreswan:
    """One pluto in namespace `ns`; its files live in `lab.workdir/<name>/`."""

    def __init__(self, lab, ns, name="lsw", root=ROOT, debug=False):
        self.lab, self.ns, self.name, self.root = lab, ns, name, Path(root)
        self.debug = debug
        self.dir = lab.workdir / name
        self.conf = self.dir / "ipsec.conf"
        self.secrets = self.dir / "ipsec.secrets"
        self.ipsecdir = self.dir / "ipsec.d"
        self.nssdir = self.dir / "nss"
        self.rundir = self.dir / "run"
        self.logfile = self.dir / "pluto.log"
        self.outfile = self.dir / "pluto.out"      # stdout/stderr until pluto detaches them
        self.sa_log = self.dir / "sa.jsonl"
        self.shim_log = self.dir / "shim.log"      # the XFRM requests the shim answered
        self.proc = None
        self.conns = []

    # --- life cycle -------------------------------------------------------------------
    def start(self, conns, timeout=30):
        """Writes the configuration, starts pluto and waits until it has loaded every
        connection (auto=start ones are then initiated by pluto itself)."""
        if self.proc is not None:
            raise LabError(f"{self.name}: already started")
        pluto = self.root / "usr/libexec/ipsec/pluto"
        if not pluto.exists():
            raise LabError(f"{pluto} not found: run .ci/setup-libreswan")
        self.conns = list(conns)
        for d in (self.ipsecdir, self.nssdir, self.rundir):
            d.mkdir(parents=True, exist_ok=True)
        for f in (self.logfile, self.sa_log, self.shim_log):
            f.unlink(missing_ok=True)
        self.conf.write_text(self._config())
        check = self.lab.sh(self.root / "usr/libexec/ipsec/addconn", "--checkconfig",
                            "--config", self.conf, check=False)
        if check.returncode != 0:
            raise LabError(f"{self.name}: bad ipsec.conf: {check.stdout}{check.stderr}\n"
                           f"{self.conf.read_text()}")
        self.secrets.write_text("".join(
            f'{c.left} {c.right} : PSK "{c.psk}"\n' for c in self.conns))
        self.secrets.chmod(0o600)
        if not (self.nssdir / "cert9.db").exists():
            self.lab.sh("certutil", "-N", "-d", f"sql:{self.nssdir}", "--empty-password")
        # Belt and braces: should anything reach the kernel's SA code after all, its
        # larval SAs (and their EXPIREs to pluto) come much later than the default 30 s.
        self.lab.run(self.ns, "sysctl", "-q", "-w", "net.core.xfrm_acq_expires=3600")

        argv = [pluto, "--nofork", "--config", self.conf, "--secretsfile", self.secrets,
                "--ipsecdir", self.ipsecdir, "--nssdir", self.nssdir,
                "--rundir", self.rundir, "--logfile", self.logfile]
        env = {"LD_PRELOAD": self._shim(), "LIBRESWAN_SA_LOG": self.sa_log,
               "LIBRESWAN_SHIM_LOG": self.shim_log}
        # pluto fork+execs the compiled-in /usr/libexec/ipsec/addconn to load the conns:
        # in a mount namespace of its own, the private tree's libexec is mounted there.
        mount = ["mount", "--bind", self.root / "usr/libexec", "/usr/libexec"]
        run = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
        script = f"{shlex.join(map(str, mount))} && exec {shlex.join(map(str, run))}"
        self._out = open(self.outfile, "w")
        self.proc = self.lab.spawn(self.ns, "unshare", "-m", "--propagation", "private",
                                   "sh", "-c", script, stdout=self._out,
                                   stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LabError(f"{self.name}: pluto exited ({self.proc.returncode})\n"
                               f"{self.describe()}")
            # Syntax is checked above; pluto itself refuses e.g. unknown algorithms.
            refused = [line for line in self.log_text().splitlines()
                       if "failed to add connection" in line]
            if refused:
                raise LabError(f"{self.name}: pluto refused a connection:\n"
                               + "\n".join(refused))
            if (self.rundir / "pluto.ctl").exists():
                status = self.whack("--status", check=False).stdout
                if all(f'"{c.name}":' in status for c in self.conns):
                    return
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: pluto did not load its connections within "
                               f"{timeout} s\n{self.describe()}")
            time.sleep(0.2)

    def stop(self, timeout=10):
        """Shuts pluto down (deleting its SAs, which sends IKEv1 Delete notifications to
        peers) and waits for it; returns its exit status (0 for a clean shutdown, None
        when it was not running), killing it if it does not exit in time."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            self.whack("--shutdown", check=False, timeout=timeout)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._out.close()
        return proc.returncode

    # --- driving it -------------------------------------------------------------------
    def whack(self, *args, check=True, timeout=30):
        """Runs whack against this pluto; returns the CompletedProcess."""
        return self.lab.run(self.ns, self.root / "usr/libexec/ipsec/whack",
                            "--rundir", self.rundir, *args, check=check, timeout=timeout)

    def initiate(self, conn, timeout=60):
        """Initiates `conn` (Main Mode, then Quick Mode) and waits until both the ISAKMP
        SA and the IPsec SA are up; raises with pluto's log otherwise. Returns whack's
        output."""
        try:
            out = self.whack("--initiate", "--name", conn, check=False, timeout=timeout)
        except LabError as e:
            raise LabError(f"{self.name}: initiate {conn}: {e}\n{self.describe()}") from None
        try:
            self.wait_established(conn, timeout=5)
        except LabError:
            raise LabError(f"{self.name}: initiate {conn} failed (whack exit "
                           f"{out.returncode}):\n{out.stdout}{out.stderr}\n"
                           f"{self.describe()}") from None
        return out.stdout

    def wait_established(self, conn, timeout=60):
        """Waits until `conn` has an established ISAKMP SA and IPsec SA (either role);
        returns {"isakmp": serial, "ipsec": serial}."""
        deadline = time.monotonic() + timeout
        while True:
            up = self.established(conn)
            if "isakmp" in up and "ipsec" in up:
                return up
            if self.proc is None or self.proc.poll() is not None:
                raise LabError(f"{self.name}: pluto is not running\n{self.describe()}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: {conn} not established within {timeout} s\n"
                               f"{self.describe()}")
            time.sleep(0.2)

    def states(self):
        """pluto's states: [(serial, conn, STATE_NAME, description)]."""
        status = self.whack("--status", check=False).stdout
        return [(int(s), c, n, d) for s, c, n, d in _STATE.findall(status)]

    def established(self, conn):
        """The newest established ISAKMP and IPsec SA serials of `conn` (keys present
        only for what is up)."""
        up = {}
        for serial, name, _state, desc in self.states():
            if name != conn:
                continue
            if desc in ("IKE SA established", "ISAKMP SA established"):  # 4.10: "IKE"
                up["isakmp"] = max(serial, up.get("isakmp", 0))
            elif desc == "IPsec SA established":
                up["ipsec"] = max(serial, up.get("ipsec", 0))
        return up

    def terminate(self, conn):
        self.whack("--terminate", "--name", conn, check=False)

    # --- what it did --------------------------------------------------------------------
    def installed_sas(self):
        """Every SA pluto installed (or updated), in order, as the shim recorded it:
        {"op": "new"|"update", "src", "dst", "spi": "0x%08x", "proto": "esp"|"ah"|"comp",
        "mode": "transport"|"tunnel", "reqid", "replay_window",
        "enc": {"name", "key"} | None, "auth": {"name", "key", "trunc_bits"} | None,
        "aead": {"name", "key", "icv_bits"} | None, "comp": {"name"} | None,
        "encap": {"type", "sport", "dport"} | None, "esn": bool}. Names are those pluto
        gives the kernel ("aes", "des3_ede", "sha1", "hmac(sha256)", "md5",
        "rfc4106(gcm(aes))", whose key ends with the 4-byte salt); keys are hex without
        0x. On the libreswan host, the record whose dst is its address is the SA the
        peer sends with."""
        if not self.sa_log.exists():
            return []
        return [json.loads(line) for line in self.sa_log.read_text().splitlines() if line]

    def log_text(self):
        """pluto's log, then what it wrote to stdout/stderr."""
        log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
        out = self.outfile.read_text(errors="replace") if self.outfile.exists() else ""
        return log + ("--- stdout/stderr\n" + out if out else "")

    def describe(self, lines=60):
        """The last `lines` lines of pluto's log, less plutodebug's `| ` lines."""
        log = [line for line in self.log_text().splitlines() if not _DEBUG.match(line)]
        tail = "\n".join(log[-lines:])
        return f"--- {self.name} ({self.ns}, {self.dir}): pluto log, last {lines} lines\n{tail}"

    # --- helpers ----------------------------------------------------------------------
    def _config(self):
        setup = ["config setup",
                 "\tikev1-policy=accept",   # 4.10 drops IKEv1 unless told otherwise
                 "\tdnssec-enable=no",
                 f"\tdumpdir={self.dir}",
                 "\tnhelpers=1",            # shared 2-core machines
                 f"\tplutodebug={'all' if self.debug else 'none'}"]
        return "\n".join(setup) + "\n\n" + "\n".join(c.section() for c in self.conns)

    def _shim(self):
        """The shim built by .ci/setup-libreswan, or one built here from the current
        source when that one is missing or older."""
        built = self.root / "lib/libreswan_shim.so"
        if built.exists() and built.stat().st_mtime >= SHIM_SRC.stat().st_mtime:
            return built
        local = self.lab.workdir / "libreswan_shim.so"
        if not local.exists():
            self.lab.sh("gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                        "-o", local, SHIM_SRC, "-ldl")
        return local
