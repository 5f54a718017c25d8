"""Running the programs under test (host-sim) and the reference decoder (tshark)."""

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ipsec_sa import write_config
from pcapio import read_ipv4_packets, write_pcap

REPO = Path(__file__).resolve().parents[2]
REPLAY_TIMEOUT_S = 120
SUMMARY = re.compile(r"passed (\d+), transformed (\d+), dropped (\d+)")


def target_dir():
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target if target.is_absolute() else REPO / target


def find_binary(env, name):
    """Path of one of our programs: $ENV, else what `cargo build` leaves in target/debug."""
    path = Path(os.environ.get(env) or target_dir() / "debug" / name)
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None, (f"{name} not found at {path}: build it with `cargo build --workspace` "
                      f"(tests/run does) or point ${env} at the binary")
    return path, None


def find_tool(env, name):
    """Path of a reference tool: $ENV, else `name` on PATH."""
    path = os.environ.get(env) or shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        where = f"${env} = {path}" if os.environ.get(env) else "not on PATH"
        return None, f"{name} not found ({where}): install it with .ci/setup, or point ${env} at it"
    return Path(path), None


@dataclass
class Replay:
    """One `host-sim replay` run and everything it left behind."""

    argv: list
    returncode: int
    stdout: str
    stderr: str
    workdir: Path
    output_pcap: Path
    passed: int = None
    transformed: int = None
    dropped: int = None
    output: list = field(default_factory=list)
    log: str = ""

    def describe(self):
        return (f"$ {' '.join(map(str, self.argv))}\nexit {self.returncode}\n"
                f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}--- ipsec.log\n{self.log}")

    def log_lines(self, prefix):
        return [line for line in self.log.splitlines() if f"][{prefix}][" in line]

    def check_ran(self):
        """The run finished normally and printed its closing line."""
        assert self.returncode == 0, f"host-sim failed\n{self.describe()}"
        assert self.passed is not None, f"no 'passed N, transformed N, dropped N' line\n{self.describe()}"
        count = self.passed + self.transformed
        assert count == len(self.output), (
            f"closing line counts {count} packets passed or transformed, output pcap has "
            f"{len(self.output)}\n{self.describe()}")


def run_replay(host_sim, workdir, bundles, direction, packets, **kwargs):
    """Writes ipsec.cfg for `bundles` into workdir/cfg, then runs replay() on it."""
    workdir = Path(workdir)
    keys_file = write_config(workdir / "cfg", bundles)
    return replay(host_sim, workdir / "cfg", workdir, direction, packets, keys_file=keys_file,
                  **kwargs)


def replay(host_sim, cfg_dir, workdir, direction, packets, *, keys_file=None, local=None,
           linktype=101):
    """Runs `host-sim replay` over `packets` with the config in cfg_dir; files go to workdir."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    in_pcap, out_pcap, log = (workdir / f"{direction}-input.pcap", workdir / f"{direction}-output.pcap",
                              workdir / "ipsec.log")
    write_pcap(in_pcap, packets, linktype=linktype)
    argv = [str(host_sim), "replay", "--config", str(cfg_dir), "--direction", direction,
            "--input", str(in_pcap), "--output", str(out_pcap), "--log", str(log)]
    if keys_file:
        argv += ["--keys", str(keys_file)]
    if local:
        argv += ["--local", local]
    proc = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                          timeout=REPLAY_TIMEOUT_S, stdin=subprocess.DEVNULL)
    run = Replay(argv, proc.returncode, proc.stdout, proc.stderr, workdir, out_pcap)
    summaries = SUMMARY.findall(proc.stdout)
    if summaries:
        run.passed, run.transformed, run.dropped = map(int, summaries[-1])
    if out_pcap.exists():
        run.output = read_ipv4_packets(out_pcap)
    if log.exists():
        run.log = log.read_text(errors="replace")
    return run


# ---- tshark -------------------------------------------------------------------------

TSHARK_FIELDS = [
    "frame.number", "frame.protocols", "esp.spi", "esp.sequence", "esp.icv_good",
    "esp.icv_bad", "ah.spi", "ah.sequence", "ipcomp.cpi", "_ws.malformed",
    "_ws.expert.severity", "_ws.expert.message",
]
# Expert info severities (epan/proto.h: PI_CHAT .. PI_ERROR).
PI_WARN = 0x00600000


def tshark_argv(tshark, pcap, esp_sas):
    """tshark decoding `pcap` with the ESP SAs given: decryption and ICV check on."""
    argv = [str(tshark), "-n", "-r", str(pcap),
            "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE",
            "-o", "esp.do_esp_sequence_analysis:TRUE",
            "-o", "ip.check_checksum:TRUE",
            "-o", "udp.check_checksum:TRUE",
            "-o", "tcp.check_checksum:TRUE"]
    for sa in esp_sas:
        argv += ["-o", f"uat:esp_sa:{sa.uat_record()}"]
    return argv


def tshark_frames(tshark, pcap, esp_sas, scratch):
    """One dict per frame: field name -> list of values (empty when absent)."""
    argv = tshark_argv(tshark, pcap, esp_sas) + ["-T", "fields", "-E", "separator=\t",
                                                  "-E", "occurrence=a", "-E", "aggregator=|"]
    for name in TSHARK_FIELDS:
        argv += ["-e", name]
    # An empty personal configuration, so that nobody's own Wireshark preferences or SA
    # table change the result.
    config = Path(scratch) / "wireshark-config"
    config.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(config))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"tshark failed: {' '.join(argv)}\n{proc.stderr}"
    frames = []
    for line in proc.stdout.splitlines():
        values = line.split("\t")
        frames.append({name: (v.split("|") if v else [])
                       for name, v in zip(TSHARK_FIELDS, values + [""] * len(TSHARK_FIELDS))})
    return frames, argv


def tshark_problems(frames, want_icv):
    """What tshark found wrong: malformed frames, bad ICVs, warnings or errors.

    With `want_icv`, every ESP layer must also have its ICV checked and found good, which
    proves tshark had the right keys and the plugin computed the ICV as RFC 4303 says.
    """
    problems = []
    for frame in frames:
        number = frame["frame.number"][0] if frame["frame.number"] else "?"
        if frame["_ws.malformed"]:
            problems.append(f"frame {number}: malformed")
        if "1" in frame["esp.icv_bad"] or "True" in frame["esp.icv_bad"]:
            problems.append(f"frame {number}: ESP ICV bad")
        if want_icv and frame["esp.spi"]:
            good = [g for g in frame["esp.icv_good"] if g in ("1", "True")]
            if len(good) != len(frame["esp.spi"]):
                problems.append(f"frame {number}: ESP ICV not verified (icv_good={frame['esp.icv_good']})")
        for severity, message in zip(frame["_ws.expert.severity"], frame["_ws.expert.message"]):
            if int(severity, 0) >= PI_WARN:
                problems.append(f"frame {number}: expert info: {message}")
    return problems
