"""The algorithm matrix every interop suite runs over."""

from dataclasses import dataclass

from ipsec_sa import AH_ALGS, ESP_SUITES, Bundle

MODES = ("transport", "tunnel")


@dataclass(frozen=True)
class Case:
    mode: str
    esp: str = None
    ah: str = None
    ipcomp: bool = False

    def __str__(self):
        parts = [self.mode]
        if self.ipcomp:
            parts.append("ipcomp")
        if self.esp:
            parts.append(f"esp-{self.esp}")
        if self.ah:
            parts.append(f"ah-{self.ah}")
        return "+".join(parts)

    def bundle(self, name="interop", **kwargs):
        # The case id seeds the keys: each case has its own, the same on every run.
        return Bundle(name, esp=self.esp, ah=self.ah, ipcomp=self.ipcomp, mode=self.mode,
                      seed=str(self), **kwargs)


def matrix():
    """Every ESP suite, every AH algorithm, every ESP+AH pair, and IPComp with ESP and
    with ESP+AH, each in transport and tunnel mode."""
    cases = []
    for mode in MODES:
        cases += [Case(mode, esp=esp) for esp in ESP_SUITES]
        cases += [Case(mode, ah=ah) for ah in AH_ALGS]
        cases += [Case(mode, esp=esp, ah=ah) for esp in ESP_SUITES for ah in AH_ALGS]
        cases += [Case(mode, esp="aes128-sha1", ipcomp=True),
                  Case(mode, esp="aes256gcm16", ipcomp=True),
                  Case(mode, esp="3des-md5", ah="sha256", ipcomp=True)]
    return cases


MATRIX = matrix()
