"""Fixtures shared by the interop suites: where the programs under test and tshark are.

Nothing is ever skipped: a missing host-sim, ipsecdump or tshark fails the tests that need
it, with a message that says how to get it.
"""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tools import find_binary, find_tool  # noqa: E402


def _require(found):
    path, problem = found
    if problem:
        pytest.fail(problem, pytrace=False)
    return path


@pytest.fixture(scope="session")
def host_sim():
    return _require(find_binary("HOST_SIM", "host-sim"))


@pytest.fixture(scope="session")
def ipsecdump():
    return _require(find_binary("IPSECDUMP", "ipsecdump"))


@pytest.fixture(scope="session")
def tshark():
    return _require(find_tool("TSHARK", "tshark"))
