"""Fixtures of the netns tests: the binaries under test, and a fresh Lab per test that is
torn down (processes ended, namespaces deleted) whatever happens in the test.

These tests need root (namespaces, veths, TUN, raw sockets), tcpdump, ping and tracepath.
Nothing is skipped: without them the tests fail and say what is missing.
"""

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import Lab, target_dir  # noqa: E402


def _binary(env, name):
    path = Path(os.environ.get(env) or target_dir() / "debug" / name)
    if not path.is_file():
        pytest.fail(f"{name} not found at {path}: build it with `cargo build --workspace` "
                    f"(tests/run does) or point ${env} at it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def binaries():
    if os.geteuid() != 0:
        pytest.fail("the netns tests need root (network namespaces, TUN, raw sockets)",
                    pytrace=False)
    missing = [tool for tool in ("ip", "tcpdump", "ping", "tracepath")
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (apt-get install iproute2 tcpdump "
                    f"iputils-ping iputils-tracepath)", pytrace=False)
    return {
        "host-sim": _binary("HOST_SIM", "host-sim"),
        "ipsecdump": _binary("IPSECDUMP", "ipsecdump"),
        "plugin": _binary("IPSEC_PLUGIN", "libipsec_plugin.so"),
        "pluto": _binary("PLUTO", "pluto"),
        "pinit": _binary("PINIT", "pinit"),
    }


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def lab(request, tmp_path, binaries):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for hs in lab.host_sims:
                print(f"===== {hs.name}\n{hs.describe()}")
        lab.close()
        left = lab.leftovers()
        assert not left, f"namespaces left behind: {left}"
