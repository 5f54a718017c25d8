"""The peer of the plugin under test: SA bundles as ipsec.cfg text and as scapy SAs.

The plugin under test is always "this end", 192.0.2.1; the peer is 192.0.2.2. A Bundle holds
both directions' keys once and renders them three ways: the plugin's ipsec.cfg section
(or a `--keys` section for IKE-keyed bundles), scapy SecurityAssociations that play the peer
(`PeerSender` builds what the plugin receives, `PeerReceiver` opens what it sends), and
tshark's ESP SA table.
"""

import random
import struct
import zlib
from dataclasses import dataclass

from scapy.layers.inet import IP
from scapy.layers.ipsec import AH, ESP, SecurityAssociation
from scapy.packet import Raw

LOCAL = "192.0.2.1"
REMOTE = "192.0.2.2"
LOCAL_SUBNET = "10.1.0.0/24"
REMOTE_SUBNET = "10.2.0.0/24"
# Inner addresses for tunnel mode: a host behind each end.
LOCAL_HOST = "10.1.0.9"
REMOTE_HOST = "10.2.0.7"

IPPROTO_IPIP = 4
IPPROTO_ESP = 50
IPPROTO_AH = 51
IPPROTO_IPCOMP = 108

MANUAL_SPI_RANGE = range(0x100, 0x1000)


@dataclass(frozen=True)
class Cipher:
    key_len: int
    iv_len: int
    scapy: str
    tshark: str


@dataclass(frozen=True)
class Integrity:
    key_len: int
    icv_len: int
    scapy: str
    tshark: str


# cfg name -> algorithm. tshark names are the value strings of Wireshark's ESP SA UAT
# (epan/dissectors/packet-ipsec.c); scapy names are keys of CRYPT_ALGOS / AUTH_ALGOS.
CIPHERS = {
    "null": Cipher(0, 0, "NULL", "NULL"),
    "des": Cipher(8, 8, "DES", "DES-CBC [RFC2405]"),
    "3des": Cipher(24, 8, "3DES", "TripleDES-CBC [RFC2451]"),
    "aes128": Cipher(16, 16, "AES-CBC", "AES-CBC [RFC3602]"),
    "aes192": Cipher(24, 16, "AES-CBC", "AES-CBC [RFC3602]"),
    "aes256": Cipher(32, 16, "AES-CBC", "AES-CBC [RFC3602]"),
}
INTEGRITY = {
    "none": Integrity(0, 0, None, "NULL"),
    "md5": Integrity(16, 12, "HMAC-MD5-96", "HMAC-MD5-96 [RFC2403]"),
    "sha1": Integrity(20, 12, "HMAC-SHA1-96", "HMAC-SHA-1-96 [RFC2404]"),
    "sha256": Integrity(32, 16, "SHA2-256-128", "HMAC-SHA-256-128 [RFC4868]"),
}
# Key lengths include the 4-byte salt (RFC 4106 section 8.1); scapy and tshark both take
# the salt as the last 4 bytes of the key, as the keying material is laid out.
AEADS = {
    "aes128gcm16": Cipher(16 + 4, 8, "AES-GCM", "AES-GCM with 16 octet ICV [RFC4106]"),
    "aes256gcm16": Cipher(32 + 4, 8, "AES-GCM", "AES-GCM with 16 octet ICV [RFC4106]"),
}
AEAD_ICV_LEN = 16

AH_ALGS = ["md5", "sha1", "sha256"]


@dataclass(frozen=True)
class EspSuite:
    """`esp = ...` of ipsec.cfg: a cipher with an integrity algorithm, or an AEAD."""

    name: str

    @property
    def is_aead(self):
        return self.name in AEADS

    @property
    def cipher(self):
        return AEADS[self.name] if self.is_aead else CIPHERS[self.name.split("-")[0]]

    @property
    def integrity(self):
        return INTEGRITY["none"] if self.is_aead else INTEGRITY[self.name.split("-")[1]]

    @property
    def has_icv(self):
        return self.is_aead or self.integrity.key_len > 0

    @property
    def icv_len(self):
        return AEAD_ICV_LEN if self.is_aead else self.integrity.icv_len


ESP_SUITES = (
    [f"{c}-{i}" for c in CIPHERS for i in ("md5", "sha1", "sha256")]
    + [f"{c}-none" for c in CIPHERS if c != "null"]
    + list(AEADS)
)


@dataclass
class EspKeys:
    spi: int
    enc_key: bytes
    auth_key: bytes


@dataclass
class AhKeys:
    spi: int
    key: bytes


@dataclass
class DirectionKeys:
    esp: EspKeys = None
    ah: AhKeys = None
    cpi: int = None


def hexkey(key):
    return "0x" + key.hex()


class Bundle:
    """One `[name]` section as the plugin (192.0.2.1) sees it.

    Keys and SPIs come from a generator seeded with `seed` (default: the name), so a
    failing case is reproduced exactly by running it again.
    """

    def __init__(self, name, *, esp=None, ah=None, ipcomp=False, mode="transport",
                 replay_window=None, seed=None):
        assert esp or ah or ipcomp, "a bundle needs at least one of esp, ah, ipcomp"
        self.name = name
        self.esp = EspSuite(esp) if esp else None
        self.ah = INTEGRITY[ah] if ah else None
        self.ah_name = ah
        self.ipcomp = ipcomp
        self.mode = mode
        self.replay_window = replay_window
        self.local, self.remote = LOCAL, REMOTE
        rng = random.Random(seed if seed is not None else name)
        spis = rng.sample(MANUAL_SPI_RANGE, 6)
        self.keys_in = self._draw_keys(rng, spis[0::2])
        self.keys_out = self._draw_keys(rng, spis[1::2])

    def _draw_keys(self, rng, spis):
        keys = DirectionKeys()
        if self.esp:
            keys.esp = EspKeys(spis[0], rng.randbytes(self.esp.cipher.key_len),
                               rng.randbytes(self.esp.integrity.key_len))
        if self.ah:
            keys.ah = AhKeys(spis[1], rng.randbytes(self.ah.key_len))
        if self.ipcomp:
            keys.cpi = spis[2]
        return keys

    @property
    def tunnel(self):
        return self.mode == "tunnel"

    @property
    def keying(self):
        # RFC 4106 forbids manual keys for GCM (SPEC section 2), so host-sim's --keys is the
        # only way to key such a bundle.
        return "ike" if self.esp and self.esp.is_aead else "manual"

    def spis(self):
        return [s for k in (self.keys_in, self.keys_out)
                for s in (k.esp and k.esp.spi, k.ah and k.ah.spi, k.cpi) if s]

    # ---- ipsec.cfg ---------------------------------------------------------------

    def cfg_section(self):
        lines = [f"[{self.name}]", f"local = {self.local}", f"remote = {self.remote}",
                 f"mode = {self.mode}"]
        if self.tunnel:
            lines += [f"local_subnet = {LOCAL_SUBNET}", f"remote_subnet = {REMOTE_SUBNET}"]
        if self.esp:
            lines.append(f"esp = {self.esp.name}")
        if self.ah:
            lines.append(f"ah = {self.ah_name}")
        if self.ipcomp:
            lines.append("ipcomp = deflate")
        lines.append(f"keying = {self.keying}")
        if self.replay_window is not None:
            lines.append(f"replay_window = {self.replay_window}")
        if self.keying == "manual":
            lines += self.key_lines()
        return "\n".join(lines) + "\n"

    def keys_section(self):
        """A section of host-sim's `--keys` file: the same key lines, for an IKE bundle."""
        return "\n".join([f"[{self.name}]"] + self.key_lines()) + "\n"

    def key_lines(self):
        lines = []
        for direction, keys in (("out", self.keys_out), ("in", self.keys_in)):
            if keys.esp:
                lines.append(f"esp_spi_{direction} = 0x{keys.esp.spi:x}")
                if keys.esp.enc_key:
                    lines.append(f"esp_enc_key_{direction} = {hexkey(keys.esp.enc_key)}")
                if keys.esp.auth_key:
                    lines.append(f"esp_auth_key_{direction} = {hexkey(keys.esp.auth_key)}")
            if keys.ah:
                lines.append(f"ah_spi_{direction} = 0x{keys.ah.spi:x}")
                lines.append(f"ah_key_{direction} = {hexkey(keys.ah.key)}")
            if keys.cpi:
                lines.append(f"ipcomp_cpi_{direction} = 0x{keys.cpi:x}")
        return lines

    # ---- the peer ---------------------------------------------------------------

    def peer_sender(self):
        """Builds the packets the peer sends to us: protected with our `*_in` keys."""
        return PeerSender(self, self.keys_in, src=self.remote, dst=self.local)

    def peer_receiver(self):
        """Opens the packets we send: our `*_out` keys are the peer's inbound SAs."""
        return PeerReceiver(self, self.keys_out, src=self.local, dst=self.remote)

    # ---- tshark -----------------------------------------------------------------

    def tshark_esp_sas(self, direction):
        """Entries for Wireshark's `esp_sa` UAT for the traffic of one direction."""
        if not self.esp:
            return []
        keys, src, dst = ((self.keys_out, self.local, self.remote) if direction == "out"
                          else (self.keys_in, self.remote, self.local))
        return [TsharkEspSa(src, dst, keys.esp.spi, self.esp.cipher.tshark, keys.esp.enc_key,
                            self.esp.integrity.tshark, keys.esp.auth_key)]


@dataclass
class TsharkEspSa:
    src: str
    dst: str
    spi: int
    enc_alg: str
    enc_key: bytes
    auth_alg: str
    auth_key: bytes

    def uat_record(self):
        fields = ["IPv4", self.src, self.dst, f"0x{self.spi:08x}", self.enc_alg,
                  hexkey(self.enc_key) if self.enc_key else "", self.auth_alg,
                  hexkey(self.auth_key) if self.auth_key else ""]
        return ",".join(f'"{f}"' for f in fields)


def _scapy_sas(bundle, keys, src, dst):
    """The scapy SAs of one direction, in the order the sender applies them (ESP, AH).

    Tunnel mode uses scapy's tunnel_header on the first protocol applied; with IPComp the
    outer header must come before compression, so the caller builds it instead.
    """
    outer = IP(src=src, dst=dst) if bundle.tunnel and not bundle.ipcomp else None
    esp_sa = ah_sa = None
    if bundle.esp:
        suite = bundle.esp
        esp_sa = SecurityAssociation(
            ESP, spi=keys.esp.spi, crypt_algo=suite.cipher.scapy,
            crypt_key=keys.esp.enc_key or None,
            crypt_icv_size=AEAD_ICV_LEN if suite.is_aead else None,
            auth_algo=suite.integrity.scapy, auth_key=keys.esp.auth_key or None,
            tunnel_header=outer)
        outer = None
    if bundle.ah:
        ah_sa = SecurityAssociation(AH, spi=keys.ah.spi, auth_algo=bundle.ah.scapy,
                                    auth_key=keys.ah.key, tunnel_header=outer)
    return esp_sa, ah_sa


def ah_encrypt(sa, pkt, seq):
    """AH over `pkt` with scapy's AH header and ICV code (RFC 4302).

    scapy 2.8's SecurityAssociation.encrypt() cannot put AH on top of ESP (or of anything
    it parses as ESP, such as UDP port 4500): its signer sees the ESP layer and appends
    the ICV to the ESP payload, leaving AH's ICV zero. Handing scapy's signer the payload
    as opaque bytes avoids that.
    """
    pkt = bytes(pkt)
    if sa.tunnel_header is not None:
        pkt = encapsulate(pkt, sa.tunnel_header.src, sa.tunnel_header.dst)
    header = IP(pkt)
    payload = bytes(header.payload)
    header.remove_payload()
    ah = AH(nh=header.proto, spi=sa.spi, seq=seq, icv=b"\x00" * sa.auth_algo.icv_size)
    ah.padding = b"\x00" * (-len(ah) % 4)
    ah.payloadlen = len(ah) // 4 - 2
    header.proto = IPPROTO_AH
    header.len = len(header) + len(ah) + len(payload)
    del header.chksum
    signed = sa.auth_algo.sign(header / ah / Raw(payload), sa.auth_key)
    return IP(bytes(signed))


def ipcomp_compress(ip_bytes, cpi):
    """RFC 3173 section 3 / RFC 2394: the IP payload deflated (raw, no zlib header)."""
    ihl = (ip_bytes[0] & 0x0F) * 4
    header, payload = bytearray(ip_bytes[:ihl]), ip_bytes[ihl:]
    body = struct.pack("!BBH", header[9], 0, cpi) + raw_deflate(payload)
    header[9] = IPPROTO_IPCOMP
    return fix_ip_header(bytes(header) + body)


def raw_deflate(data):
    """RFC 1951 deflate without the zlib wrapper, as RFC 2394 section 2 carries it."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def ipcomp_decompress(ip_bytes):
    """Returns (the packet with IPComp removed, CPI)."""
    ihl = (ip_bytes[0] & 0x0F) * 4
    header = bytearray(ip_bytes[:ihl])
    next_header, _flags, cpi = struct.unpack("!BBH", ip_bytes[ihl:ihl + 4])
    payload = zlib.decompress(ip_bytes[ihl + 4:], -15)
    header[9] = next_header
    return fix_ip_header(bytes(header) + payload), cpi


def fix_ip_header(ip_bytes):
    """Sets total length and header checksum after the payload changed."""
    ihl = (ip_bytes[0] & 0x0F) * 4
    header = bytearray(ip_bytes[:ihl])
    header[2:4] = struct.pack("!H", len(ip_bytes))
    header[10:12] = b"\x00\x00"
    header[10:12] = struct.pack("!H", ip_checksum(header))
    return bytes(header) + ip_bytes[ihl:]


def ip_checksum(data):
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encapsulate(inner, src, dst):
    """An outer IPv4 header src -> dst in front of `inner` (RFC 2003)."""
    return bytes(IP(src=src, dst=dst, proto=IPPROTO_IPIP) / Raw(bytes(inner)))


class PeerSender:
    """The peer's outbound processing for one bundle: tunnel, IPComp, ESP, AH."""

    def __init__(self, bundle, keys, src, dst):
        self.bundle, self.keys, self.src, self.dst = bundle, keys, src, dst
        self.esp_sa, self.ah_sa = _scapy_sas(bundle, keys, src, dst)
        self.seq = 1
        # One entry per protect(): whether IPComp compressed that packet.
        self.compressed = []

    def protect(self, plain, *, compress=None, seq=None):
        """Returns the wire bytes for plaintext IPv4 packet `plain`.

        For a bundle with IPComp, `compress=None` follows RFC 3173 section 2.2 (send the
        payload uncompressed when deflate does not make it smaller); True or False force
        it. `seq` overrides the sequence number; the counter advances only without it.
        """
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        pkt = bytes(plain)
        if self.bundle.tunnel and self.bundle.ipcomp:
            pkt = encapsulate(pkt, self.src, self.dst)
        if self.bundle.ipcomp:
            compressed = ipcomp_compress(pkt, self.keys.cpi)
            use = compress or (compress is None and len(compressed) < len(pkt))
            self.compressed.append(bool(use))
            pkt = compressed if use else pkt
        if self.esp_sa:
            pkt = bytes(self.esp_sa.encrypt(IP(pkt), seq_num=seq))
        if self.ah_sa:
            pkt = bytes(ah_encrypt(self.ah_sa, IP(pkt), seq))
        return pkt


@dataclass
class Opened:
    """What the peer learned from one of our packets."""

    plain: bytes
    outer: bytes
    esp_spi: int = None
    esp_seq: int = None
    esp_iv: bytes = None
    ah_spi: int = None
    ah_seq: int = None
    compressed: bool = False
    # With IPComp: the IP payload's length as sent (header + deflate) and once inflated.
    ipcomp_len: int = None
    inflated_len: int = None


class ProtocolMismatch(Exception):
    pass


class PeerReceiver:
    """The peer's inbound processing for one bundle: AH, ESP, IPComp, tunnel, verified."""

    def __init__(self, bundle, keys, src, dst):
        self.bundle, self.keys, self.src, self.dst = bundle, keys, src, dst
        self.esp_sa, self.ah_sa = _scapy_sas(bundle, keys, src, dst)

    def open(self, wire):
        """Verifies and removes every layer; raises on any mismatch or bad ICV."""
        pkt = IP(bytes(wire))
        opened = Opened(plain=b"", outer=bytes(wire))
        if self.ah_sa:
            expect(pkt.proto == IPPROTO_AH, f"outermost protocol {pkt.proto}, want AH")
            opened.ah_spi, opened.ah_seq = pkt[AH].spi, pkt[AH].seq
            pkt = IP(bytes(self.ah_sa.decrypt(pkt)))
        if self.esp_sa:
            expect(pkt.proto == IPPROTO_ESP, f"protocol {pkt.proto}, want ESP")
            esp = pkt[ESP]
            opened.esp_spi, opened.esp_seq = esp.spi, esp.seq
            opened.esp_iv = bytes(esp.data[:self.bundle.esp.cipher.iv_len])
            pkt = IP(bytes(self.esp_sa.decrypt(pkt)))
        pkt = bytes(pkt)
        if self.bundle.ipcomp and pkt[9] == IPPROTO_IPCOMP:
            opened.ipcomp_len = len(pkt) - (pkt[0] & 0x0F) * 4
            pkt, cpi = ipcomp_decompress(pkt)
            opened.inflated_len = len(pkt) - (pkt[0] & 0x0F) * 4
            expect(cpi == self.keys.cpi, f"CPI 0x{cpi:x}, want 0x{self.keys.cpi:x}")
            opened.compressed = True
        if self.bundle.tunnel and self.bundle.ipcomp:
            expect(pkt[9] == IPPROTO_IPIP, f"tunnel payload protocol {pkt[9]}, want IP-in-IP")
            pkt = pkt[(pkt[0] & 0x0F) * 4:]
        opened.plain = pkt
        return opened


def expect(condition, message):
    if not condition:
        raise ProtocolMismatch(message)


def write_config(directory, bundles):
    """Writes ipsec.cfg (and the --keys file when a bundle is IKE-keyed).

    Returns the path of the keys file, or None.
    """
    spis = [s for b in bundles for s in b.spis()]
    assert len(spis) == len(set(spis)), f"SPI collision between bundles: {spis}"
    directory.mkdir(parents=True, exist_ok=True)
    header = "; generated by tests/interop: the plugin is 192.0.2.1, the peer 192.0.2.2\n\n"
    (directory / "ipsec.cfg").write_text(header + "\n".join(b.cfg_section() for b in bundles))
    ike = [b for b in bundles if b.keying == "ike"]
    if not ike:
        return None
    keys_file = directory / "keys.cfg"
    keys_file.write_text("\n".join(b.keys_section() for b in ike))
    return keys_file


def ip_protocol_name(number):
    names = {1: "icmp", 6: "tcp", 17: "udp", IPPROTO_IPIP: "ipip", IPPROTO_ESP: "esp",
             IPPROTO_AH: "ah", IPPROTO_IPCOMP: "ipcomp"}
    return names.get(number, str(number))

