"""cfg-samples: the files are consistent, and each scenario carries traffic end to end.

Static checks read the files (two ends mirror each other, keys fit their algorithms,
SPIs are in the manual range); the others run the samples through our programs:
`host-sim replay` machine by machine along each path, `host-sim demo` on each scenario,
and `ipsecdump --config` on each machine.
"""

import subprocess

import pytest

from cfgfile import key_bytes, number, read_cfg, subnet
from ipsec_sa import AEADS, CIPHERS, INTEGRITY, IPPROTO_AH, IPPROTO_ESP, MANUAL_SPI_RANGE
from tools import REPO, replay
from traffic import compressible_packets, ip_diff, sample_packets

SAMPLES = REPO / "cfg-samples"

# scenario -> machines, and the bundles whose two ends live on two machines.
SCENARIOS = {
    "host-to-host": (["host1", "host2"], [("host1", "host2", "host1-host2")]),
    "gateway-to-gateway": (["gw-west", "gw-east"], [("gw-west", "gw-east", "west-east")]),
    "host-to-gateway": (["host", "gw"], [("host", "gw", "host-gw")]),
    "nested": (["host1", "gw", "host2"], [("host1", "host2", "inner"), ("host1", "gw", "outer")]),
    "dynamic-address": (["dialer", "gw"], [("dialer", "gw", "dialer-gw")]),
}
# The address a `local = 0.0.0.0` machine connects with (what its peer's file names).
CONNECTS_AS = {("dynamic-address", "dialer"): "192.0.2.41"}

MACHINES = [(s, m) for s, (machines, _) in SCENARIOS.items() for m in machines]
PAIRS = [(s, a, b, name) for s, (_, pairs) in SCENARIOS.items() for a, b, name in pairs]

KEY_FIELDS = ["esp_spi", "esp_enc_key", "esp_auth_key", "ah_spi", "ah_key", "ipcomp_cpi"]


def bundles_of(scenario, machine):
    return dict(read_cfg(SAMPLES / scenario / machine / "ipsec.cfg"))


def with_address(scenario, machine, bundle):
    """The bundle with a dynamic `local` replaced by the address the machine connects as."""
    if bundle["local"] == "0.0.0.0":
        return dict(bundle, local=CONNECTS_AS[(scenario, machine)])
    return bundle


def test_every_scenario_is_here_and_described():
    found = {p.parent.parent.name + "/" + p.parent.name for p in SAMPLES.glob("*/*/ipsec.cfg")}
    assert found == {f"{s}/{m}" for s, m in MACHINES}
    readme = (SAMPLES / "README.md").read_text()
    for scenario, machine in MACHINES:
        assert f"## {scenario}\n" in readme, f"README.md has no section for {scenario}"
        text = (SAMPLES / scenario / machine / "ipsec.cfg").read_text()
        assert text.startswith(f"; {scenario}, machine {machine}"), \
            f"{scenario}/{machine}: the file should open with a comment naming its scenario"


@pytest.mark.parametrize("scenario,a,b,name", PAIRS, ids=lambda v: str(v))
def test_the_two_ends_mirror_each_other(scenario, a, b, name):
    end_a = with_address(scenario, a, bundles_of(scenario, a)[name])
    end_b = with_address(scenario, b, bundles_of(scenario, b)[name])
    for key in ("mode", "esp", "ah", "ipcomp", "keying"):
        assert end_a.get(key) == end_b.get(key), f"{key} differs"
    assert (end_a["local"], end_a["remote"]) == (end_b["remote"], end_b["local"])
    assert subnet(end_a, "local") == subnet(end_b, "remote")
    assert subnet(end_a, "remote") == subnet(end_b, "local")
    for field in KEY_FIELDS:
        assert end_a.get(f"{field}_out") == end_b.get(f"{field}_in"), f"{a}'s {field}_out"
        assert end_a.get(f"{field}_in") == end_b.get(f"{field}_out"), f"{a}'s {field}_in"


@pytest.mark.parametrize("scenario,machine", MACHINES, ids=lambda v: str(v))
def test_keys_fit_and_differ_per_direction(scenario, machine):
    inbound_spis = []
    for name, bundle in bundles_of(scenario, machine).items():
        assert bundle.get("keying", "manual") == "manual", f"[{name}]: samples use manual keys"
        esp = bundle.get("esp")
        if esp:
            if esp in AEADS:
                pytest.fail(f"[{name}]: AES-GCM cannot be keyed manually (RFC 4106)")
            cipher, integrity = CIPHERS[esp.split("-")[0]], INTEGRITY[esp.split("-")[1]]
            for d in ("in", "out"):
                assert len(key_bytes(bundle[f"esp_enc_key_{d}"])) == cipher.key_len, \
                    f"[{name}] esp_enc_key_{d}: {esp} needs {cipher.key_len} bytes"
                assert len(key_bytes(bundle[f"esp_auth_key_{d}"])) == integrity.key_len, \
                    f"[{name}] esp_auth_key_{d}: {esp} needs {integrity.key_len} bytes"
            assert bundle["esp_enc_key_in"] != bundle["esp_enc_key_out"]
            assert bundle["esp_auth_key_in"] != bundle["esp_auth_key_out"]
        if bundle.get("ah"):
            for d in ("in", "out"):
                assert len(key_bytes(bundle[f"ah_key_{d}"])) == INTEGRITY[bundle["ah"]].key_len, \
                    f"[{name}] ah_key_{d}: {bundle['ah']} needs {INTEGRITY[bundle['ah']].key_len} bytes"
            assert bundle["ah_key_in"] != bundle["ah_key_out"]
        for proto in ("esp_spi", "ah_spi", "ipcomp_cpi"):
            if f"{proto}_in" in bundle:
                spi_in, spi_out = number(bundle[f"{proto}_in"]), number(bundle[f"{proto}_out"])
                assert spi_in in MANUAL_SPI_RANGE and spi_out in MANUAL_SPI_RANGE
                assert spi_in != spi_out, f"[{name}] {proto}: one SPI for both directions"
                inbound_spis.append((proto.split("_")[0], spi_in))
    assert len(inbound_spis) == len(set(inbound_spis)), f"inbound SPIs collide: {inbound_spis}"


# Paths through a scenario: plaintext src -> dst enters at the first machine, each
# machine's hook runs in turn, and the last machine must deliver the original packets.
# The first machine must put them on the wire between the two addresses given last.
CHAINS = [
    ("host-to-host", [("host1", "out"), ("host2", "in")],
     ("192.0.2.1", "192.0.2.2"), ("192.0.2.1", "192.0.2.2")),
    ("host-to-host", [("host2", "out"), ("host1", "in")],
     ("192.0.2.2", "192.0.2.1"), ("192.0.2.2", "192.0.2.1")),
    ("gateway-to-gateway", [("gw-west", "out"), ("gw-east", "in")],
     ("10.1.0.9", "10.2.0.7"), ("192.0.2.11", "192.0.2.12")),
    ("gateway-to-gateway", [("gw-east", "out"), ("gw-west", "in")],
     ("10.2.0.7", "10.1.0.9"), ("192.0.2.12", "192.0.2.11")),
    ("host-to-gateway", [("host", "out"), ("gw", "in")],
     ("192.0.2.21", "10.2.0.7"), ("192.0.2.21", "192.0.2.22")),
    ("host-to-gateway", [("gw", "out"), ("host", "in")],
     ("10.2.0.7", "192.0.2.21"), ("192.0.2.22", "192.0.2.21")),
    # host1's packets get [inner] ESP, then [outer]'s tunnel; gw removes the tunnel and
    # forwards the inner ESP, which only host2 can open.
    ("nested", [("host1", "out"), ("gw", "in"), ("host2", "in")],
     ("192.0.2.31", "10.2.0.5"), ("192.0.2.31", "192.0.2.32")),
    ("nested", [("host2", "out"), ("gw", "out"), ("host1", "in")],
     ("10.2.0.5", "192.0.2.31"), ("10.2.0.5", "192.0.2.31")),
    ("dynamic-address", [("dialer", "out"), ("gw", "in")],
     ("192.0.2.41", "10.2.0.7"), ("192.0.2.41", "192.0.2.42")),
    ("dynamic-address", [("gw", "out"), ("dialer", "in")],
     ("10.2.0.7", "192.0.2.41"), ("192.0.2.42", "192.0.2.41")),
]


def chain_id(chain):
    scenario, hops, _, _ = chain
    return scenario + ":" + ">".join(f"{m}-{d}" for m, d in hops)


@pytest.mark.parametrize("chain", CHAINS, ids=chain_id)
def test_replay_along_the_scenario(chain, host_sim, tmp_path):
    scenario, hops, (src, dst), wire_addresses = chain
    plain = sample_packets(src, dst)
    if scenario == "gateway-to-gateway":
        plain += compressible_packets(src, dst)
    packets = plain
    for i, (machine, direction) in enumerate(hops):
        run = replay(host_sim, SAMPLES / scenario / machine, tmp_path / f"{i}-{machine}", direction,
                     packets, local=CONNECTS_AS.get((scenario, machine)))
        run.check_ran()
        assert (run.passed, run.transformed, run.dropped) == (0, len(plain), 0), \
            f"{machine} {direction}\n{run.describe()}"
        assert not run.log_lines("SEC"), run.describe()
        if i == 0:
            for wire in run.output:
                got = (".".join(map(str, wire[12:16])), ".".join(map(str, wire[16:20])))
                assert got == wire_addresses and wire[9] in (IPPROTO_ESP, IPPROTO_AH), \
                    f"{machine} sent {got} protocol {wire[9]}, want {wire_addresses} ESP or AH"
        packets = run.output
    problems = [f"packet {i + 1}: {ip_diff(got, want)}"
                for i, (got, want) in enumerate(zip(packets, plain)) if got != want]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_host_sim_demo_delivers_everything(scenario, host_sim, tmp_path):
    # --log-dir keeps the machines' ipsec.log files out of the source tree.
    proc = subprocess.run([str(host_sim), "demo", str(SAMPLES / scenario), "--log-dir", str(tmp_path)],
                          capture_output=True,
                          text=True, errors="replace", timeout=300, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"host-sim demo {scenario}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("scenario,machine", MACHINES, ids=lambda v: str(v))
def test_ipsecdump_shows_the_configured_table(scenario, machine, ipsecdump):
    proc = subprocess.run([str(ipsecdump), "--config", str(SAMPLES / scenario / machine)],
                          capture_output=True, text=True, errors="replace", timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    for name in bundles_of(scenario, machine):
        assert name in proc.stdout, f"bundle [{name}] missing from the dump\n{proc.stdout}"
