"""A reader of ipsec.cfg just good enough to check the samples (SPEC section 2).

It is not the plugin's parser and checks nothing the plugin checks: it only lets the
tests compare two ends of a bundle.
"""

import ipaddress


def read_cfg(path):
    """[(section name, {key: value})] in file order; keys lower-cased, `;` comments gone."""
    sections = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            sections.append((line[1:-1].strip(), {}))
            continue
        key, sep, value = line.partition("=")
        if not sep or not sections:
            raise ValueError(f"{path}:{number}: not `key = value` inside a section: {line!r}")
        sections[-1][1][key.strip().lower()] = value.strip()
    return sections


def number(text):
    return int(text, 0)


def key_bytes(text):
    assert text.lower().startswith("0x"), f"key {text!r} is not 0x hex"
    return bytes.fromhex(text[2:].replace("_", ""))


def subnet(bundle, which):
    """The traffic selector of one side, with SPEC's default (the endpoint /32)."""
    if f"{which}_subnet" in bundle:
        return ipaddress.ip_network(bundle[f"{which}_subnet"])
    return ipaddress.ip_network(f"{bundle[which]}/32")
