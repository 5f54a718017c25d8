"""Classic pcap files of IPv4 packets, read and written without scapy.

host-sim reads RAW (101) or Ethernet (1) captures and writes RAW; keeping this codec
separate from scapy means a scapy quirk can never hide a framing bug on either side.
"""

import struct

PCAP_MAGIC_USEC = 0xA1B2C3D4
PCAP_MAGIC_NSEC = 0xA1B23C4D
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_IPV4 = 228
ETHERTYPE_IPV4 = 0x0800
SNAPLEN = 262144


def write_pcap(path, packets, linktype=LINKTYPE_RAW):
    """Writes `packets` (bytes, or anything bytes() accepts) one record each.

    With LINKTYPE_ETHERNET each IPv4 packet gets a made-up Ethernet header, which is how a
    capture taken on a real interface looks.
    """
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC_USEC, 2, 4, 0, 0, SNAPLEN, linktype))
        for i, pkt in enumerate(packets):
            data = bytes(pkt)
            if linktype == LINKTYPE_ETHERNET:
                data = (b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01"
                        + struct.pack("!H", ETHERTYPE_IPV4) + data)
            f.write(struct.pack("<IIII", 1700000000 + i, 0, len(data), len(data)))
            f.write(data)


def read_pcap(path):
    """Returns (linktype, [record bytes]) of a classic pcap file, either byte order."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 24:
        raise ValueError(f"{path}: {len(blob)} bytes, shorter than a pcap header")
    for endian in "<>":
        (magic,) = struct.unpack(endian + "I", blob[:4])
        if magic in (PCAP_MAGIC_USEC, PCAP_MAGIC_NSEC):
            break
    else:
        raise ValueError(f"{path}: not a classic pcap file (magic {blob[:4].hex()})")
    _, _, _, _, _, linktype = struct.unpack(endian + "HHiIII", blob[4:24])
    records = []
    offset = 24
    while offset < len(blob):
        if offset + 16 > len(blob):
            raise ValueError(f"{path}: record header cut short at offset {offset}")
        _, _, incl_len, _ = struct.unpack(endian + "IIII", blob[offset:offset + 16])
        offset += 16
        if offset + incl_len > len(blob):
            raise ValueError(f"{path}: record data cut short at offset {offset}")
        records.append(blob[offset:offset + incl_len])
        offset += incl_len
    return linktype, records


def read_ipv4_packets(path):
    """The IPv4 packets of a RAW, IPv4 or Ethernet capture, link headers removed."""
    linktype, records = read_pcap(path)
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4):
        return records
    if linktype == LINKTYPE_ETHERNET:
        return [r[14:] for r in records if r[12:14] == struct.pack("!H", ETHERTYPE_IPV4)]
    raise ValueError(f"{path}: link type {linktype} is neither RAW nor Ethernet")
