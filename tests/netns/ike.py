"""Our keying daemon in the lab: a `pluto` per IPsec machine, and the cfg-samples/ike
scenarios built with it (host-sim tun linked to the machine's pluto).

Each pluto gets its own link socket and pid file (`--ctlbase <workdir>/<node>/pluto`),
its own copy of the machine's isecrets.cfg (mode 0600, as pluto wants it) and logs to
`<workdir>/<node>.pluto.log`. The namespaces share one file system, so nothing may sit at
a fixed path.
"""

import shutil
import signal
import time
from pathlib import Path

from lab import REPO, LabError
from scenarios import Net, wait_for

IKE_SAMPLES = REPO / "cfg-samples" / "ike"


class Pluto:
    """One `pluto --nofork` in a namespace."""

    def __init__(self, lab, ns, binary, name, secrets, extra=()):
        self.lab, self.ns, self.binary, self.name = lab, ns, binary, name
        self.dir = lab.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.secrets = self.dir / "isecrets.cfg"
        shutil.copyfile(secrets, self.secrets)
        self.secrets.chmod(0o600)
        self.ctlbase = self.dir / "pluto"
        self.socket = self.dir / "pluto.ctl"
        self.log = lab.workdir / f"{name}.pluto.log"
        self.extra = list(extra)
        self.proc = None
        self.start()

    def start(self, timeout=10):
        self.proc = self.lab.spawn(self.ns, self.binary, "--nofork", "--debug",
                                   "--logfile", self.log, "--secretsfile", self.secrets,
                                   "--ctlbase", self.ctlbase, *self.extra)
        if not wait_for(lambda: self.socket.exists() or self.proc.poll() is not None,
                        timeout):
            raise LabError(f"{self.name}: pluto did not open {self.socket}\n{self.describe()}")
        if self.proc.poll() is not None:
            raise LabError(f"{self.name}: pluto exited ({self.proc.returncode})\n"
                           f"{self.describe()}")

    def kill(self):
        """SIGKILL: no goodbye to the peer or the plugin, as a crash would be."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text, timeout=30):
        if not wait_for(lambda: text in self.log_text(), timeout, interval=0.2):
            raise LabError(f"{self.name}: no `{text}` in pluto.log within {timeout} s\n"
                           f"{self.describe()}")

    def describe(self):
        lines = self.log_text().splitlines()
        return f"--- {self.name} pluto.log (last 60 lines)\n" + "\n".join(lines[-60:])


class IkeNet(Net):
    """A cfg-samples/ike scenario: pluto first on every IPsec machine, then host-sim tun
    linked to it with --daemon."""

    def __init__(self, lab, scenario, binaries, extra_args=None, pluto_args=None,
                 config_root=IKE_SAMPLES):
        super().__init__(lab, scenario, binaries, config_root=config_root, start=False)
        self.plutos = {}
        for n in scenario.nodes:
            if not n.hostsim:
                continue
            self.plutos[n.name] = Pluto(lab, self.ns[n.name], binaries["pluto"], n.name,
                                        self.config_root / scenario.name / n.name
                                        / "isecrets.cfg",
                                        extra=(pluto_args or {}).get(n.name, ()))
            extra = ["--daemon", self.plutos[n.name].socket,
                     "--control", lab.workdir / n.name / "control.sock",
                     *(extra_args or {}).get(n.name, ())]
            self.start(n.name, extra)

    def diagnostics(self):
        return super().diagnostics() + "".join(
            f"\n{p.describe()}" for p in self.plutos.values())
