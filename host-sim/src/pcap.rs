//! Classic libpcap files (not pcapng): reading both byte orders and both timestamp
//! resolutions, writing little-endian microsecond files of raw IPv4.
//! Format: https://wiki.wireshark.org/Development/LibpcapFileFormat and
//! draft-ietf-opsawg-pcap; link types from https://www.tcpdump.org/linktypes.html.

use std::fmt;
use std::io::{self, Write};

/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// DLT_RAW as written by Linux (and most systems) and by OpenBSD.
pub const LINKTYPE_RAW_DLT12: u32 = 12;
pub const LINKTYPE_RAW_DLT14: u32 = 14;
/// LINKTYPE_RAW: a bare IPv4 or IPv6 packet.
pub const LINKTYPE_RAW: u32 = 101;
/// LINKTYPE_LINUX_SLL: Linux "cooked" capture, 16-byte header.
pub const LINKTYPE_LINUX_SLL: u32 = 113;
/// LINKTYPE_IPV4: a bare IPv4 packet.
pub const LINKTYPE_IPV4: u32 = 228;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const FILE_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 16;
/// No real link carries more; a larger length means a corrupt file.
const MAX_RECORD_LEN: usize = 256 * 1024;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_VLAN: u16 = 0x8100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PcapError {
    BadMagic(u32),
    TruncatedFileHeader {
        len: usize,
    },
    TruncatedRecordHeader {
        record: usize,
        offset: usize,
    },
    TruncatedRecordData {
        record: usize,
        offset: usize,
        want: usize,
        have: usize,
    },
    RecordTooLong {
        record: usize,
        len: usize,
    },
    UnsupportedLinkType(u32),
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PcapError::BadMagic(m) => write!(f, "not a classic pcap file (magic 0x{m:08x}; pcapng is not supported)"),
            PcapError::TruncatedFileHeader { len } => {
                write!(f, "truncated pcap file header ({len} of {FILE_HEADER_LEN} bytes)")
            }
            PcapError::TruncatedRecordHeader { record, offset } => {
                write!(f, "record {record}: truncated record header at byte {offset}")
            }
            PcapError::TruncatedRecordData { record, offset, want, have } => {
                write!(f, "record {record}: truncated at byte {offset} ({have} of {want} bytes)")
            }
            PcapError::RecordTooLong { record, len } => {
                write!(f, "record {record}: captured length {len} is implausible (corrupt file?)")
            }
            PcapError::UnsupportedLinkType(t) => write!(
                f,
                "unsupported link type {t} (supported: RAW 101/12/14, IPV4 228, Ethernet 1, LINUX_SLL 113)"
            ),
        }
    }
}

impl std::error::Error for PcapError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds, or nanoseconds when the file says so.
    pub ts_frac: u32,
    pub orig_len: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub link_type: u32,
    pub nanos: bool,
    pub records: Vec<Record>,
}

impl Capture {
    /// A record's time in milliseconds since the epoch.
    pub fn timestamp_ms(&self, record: &Record) -> u64 {
        let frac_ms = if self.nanos {
            record.ts_frac / 1_000_000
        } else {
            record.ts_frac / 1_000
        };
        u64::from(record.ts_sec) * 1000 + u64::from(frac_ms)
    }

    /// A record's time as (seconds, microseconds).
    pub fn timestamp_us(&self, record: &Record) -> (u32, u32) {
        let micros = if self.nanos {
            record.ts_frac / 1_000
        } else {
            record.ts_frac
        };
        (record.ts_sec, micros)
    }
}

/// Parses a whole capture file. Every short or implausible length is an error.
pub fn parse(bytes: &[u8]) -> Result<Capture, PcapError> {
    let header: &[u8; FILE_HEADER_LEN] = bytes
        .get(..FILE_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(PcapError::TruncatedFileHeader { len: bytes.len() })?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (big_endian, nanos) = match (magic_le, magic_le.swap_bytes()) {
        (MAGIC_MICROS, _) => (false, false),
        (MAGIC_NANOS, _) => (false, true),
        (_, MAGIC_MICROS) => (true, false),
        (_, MAGIC_NANOS) => (true, true),
        _ => return Err(PcapError::BadMagic(magic_le)),
    };
    let u32_at = |b: &[u8], at: usize| {
        let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        }
    };
    // The top bits of the link-type word may hold FCS information; the type is the low 16.
    let link_type = u32_at(header, 20) & 0xffff;
    link_header_len(link_type)?;

    let mut records = Vec::new();
    let mut offset = FILE_HEADER_LEN;
    while offset < bytes.len() {
        let record = records.len();
        let rec = bytes
            .get(offset..offset + RECORD_HEADER_LEN)
            .ok_or(PcapError::TruncatedRecordHeader { record, offset })?;
        let incl_len = u32_at(rec, 8) as usize;
        if incl_len > MAX_RECORD_LEN {
            return Err(PcapError::RecordTooLong {
                record,
                len: incl_len,
            });
        }
        let start = offset + RECORD_HEADER_LEN;
        let data = bytes
            .get(start..start + incl_len)
            .ok_or(PcapError::TruncatedRecordData {
                record,
                offset: start,
                want: incl_len,
                have: bytes.len() - start,
            })?;
        records.push(Record {
            ts_sec: u32_at(rec, 0),
            ts_frac: u32_at(rec, 4),
            orig_len: u32_at(rec, 12),
            data: data.to_vec(),
        });
        offset = start + incl_len;
    }
    Ok(Capture {
        link_type,
        nanos,
        records,
    })
}

/// Bytes before the network layer for the link types we read.
fn link_header_len(link_type: u32) -> Result<usize, PcapError> {
    match link_type {
        LINKTYPE_RAW | LINKTYPE_RAW_DLT12 | LINKTYPE_RAW_DLT14 | LINKTYPE_IPV4 => Ok(0),
        LINKTYPE_ETHERNET => Ok(14),
        LINKTYPE_LINUX_SLL => Ok(16),
        other => Err(PcapError::UnsupportedLinkType(other)),
    }
}

/// The IPv4 packet inside a frame, or None for anything else (IPv6, ARP, other
/// ethertypes, runts). Link-layer padding after the IPv4 total length is cut off.
pub fn ipv4_packet(link_type: u32, frame: &[u8]) -> Option<&[u8]> {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let packet = match link_type {
        LINKTYPE_ETHERNET => match be16(12)? {
            ETHERTYPE_IPV4 => frame.get(14..)?,
            ETHERTYPE_VLAN if be16(16)? == ETHERTYPE_IPV4 => frame.get(18..)?,
            _ => return None,
        },
        LINKTYPE_LINUX_SLL if be16(14)? == ETHERTYPE_IPV4 => frame.get(16..)?,
        LINKTYPE_LINUX_SLL => return None,
        _ => frame.get(link_header_len(link_type).ok()?..)?,
    };
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if total_len < 20 || total_len > packet.len() {
        // A lying total length is the plugin's to judge; only padding is ours to trim.
        return Some(packet);
    }
    Some(&packet[..total_len])
}

/// Writes a little-endian, microsecond pcap file.
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W, link_type: u32) -> io::Result<PcapWriter<W>> {
        let mut header = [0u8; FILE_HEADER_LEN];
        header[0..4].copy_from_slice(&MAGIC_MICROS.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0.
        header[16..20].copy_from_slice(&(MAX_RECORD_LEN as u32).to_le_bytes());
        header[20..24].copy_from_slice(&link_type.to_le_bytes());
        out.write_all(&header)?;
        Ok(PcapWriter { out })
    }

    pub fn write(&mut self, ts_sec: u32, ts_usec: u32, packet: &[u8]) -> io::Result<()> {
        let len = u32::try_from(packet.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too long for pcap"))?;
        let mut rec = [0u8; RECORD_HEADER_LEN];
        rec[0..4].copy_from_slice(&ts_sec.to_le_bytes());
        rec[4..8].copy_from_slice(&ts_usec.to_le_bytes());
        rec[8..12].copy_from_slice(&len.to_le_bytes());
        rec[12..16].copy_from_slice(&len.to_le_bytes());
        self.out.write_all(&rec)?;
        self.out.write_all(packet)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 28-byte IPv4/ICMP echo request 192.0.2.1 > 192.0.2.2, id 1 seq 0, valid checksums.
    const IPV4: [u8; 28] = [
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0xf6, 0xdc, 192, 0, 2, 1, 192, 0, 2, 2, //
        8, 0, 0xf7, 0xfe, 0, 1, 0, 0,
    ];

    /// A capture file built by hand in either byte order, with either magic.
    fn file(
        big_endian: bool,
        nanos: bool,
        link_type: u32,
        frames: &[(u32, u32, &[u8])],
    ) -> Vec<u8> {
        let w32 = |v: u32| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let w16 = |v: u16| {
            if big_endian {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let mut out = Vec::new();
        out.extend(w32(if nanos { MAGIC_NANOS } else { MAGIC_MICROS }));
        out.extend(w16(2));
        out.extend(w16(4));
        out.extend(w32(0));
        out.extend(w32(0));
        out.extend(w32(65535));
        out.extend(w32(link_type));
        for (sec, frac, data) in frames {
            out.extend(w32(*sec));
            out.extend(w32(*frac));
            out.extend(w32(data.len() as u32));
            out.extend(w32(data.len() as u32));
            out.extend_from_slice(data);
        }
        out
    }

    fn ethernet(ethertype: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(ethertype);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn reads_both_byte_orders_and_both_resolutions() {
        for big_endian in [false, true] {
            for nanos in [false, true] {
                let frac = if nanos { 250_000_000 } else { 250_000 };
                let bytes = file(
                    big_endian,
                    nanos,
                    LINKTYPE_RAW,
                    &[(1_700_000_000, frac, &IPV4)],
                );
                let capture = parse(&bytes).unwrap();
                assert_eq!(capture.link_type, LINKTYPE_RAW);
                assert_eq!(capture.nanos, nanos);
                assert_eq!(capture.records.len(), 1);
                let record = &capture.records[0];
                assert_eq!(record.data, IPV4);
                assert_eq!(record.orig_len, 28);
                assert_eq!(
                    capture.timestamp_ms(record),
                    1_700_000_000_250,
                    "be={big_endian} ns={nanos}"
                );
                assert_eq!(capture.timestamp_us(record), (1_700_000_000, 250_000));
            }
        }
    }

    #[test]
    fn extracts_ipv4_from_every_link_type() {
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        sll.extend_from_slice(&[0x08, 0x00]);
        sll.extend_from_slice(&IPV4);
        let mut vlan = vec![0x81, 0x00, 0x00, 0x05, 0x08, 0x00];
        vlan.extend_from_slice(&IPV4);
        let mut padded = IPV4.to_vec();
        padded.extend_from_slice(&[0; 18]); // Ethernet minimum-frame padding
        let cases: Vec<(u32, Vec<u8>)> = vec![
            (LINKTYPE_RAW, IPV4.to_vec()),
            (LINKTYPE_RAW_DLT12, IPV4.to_vec()),
            (LINKTYPE_RAW_DLT14, IPV4.to_vec()),
            (LINKTYPE_IPV4, IPV4.to_vec()),
            (LINKTYPE_ETHERNET, ethernet(&[0x08, 0x00], &padded)),
            (LINKTYPE_ETHERNET, ethernet(&vlan[..2], &vlan[2..])),
            (LINKTYPE_LINUX_SLL, sll),
        ];
        for (link_type, frame) in cases {
            let bytes = file(false, false, link_type, &[(1, 0, &frame)]);
            let capture = parse(&bytes).unwrap();
            let packet = ipv4_packet(capture.link_type, &capture.records[0].data);
            assert_eq!(packet, Some(&IPV4[..]), "link type {link_type}");
        }
    }

    #[test]
    fn skips_what_is_not_ipv4() {
        let arp = ethernet(&[0x08, 0x06], &[0; 28]);
        assert_eq!(ipv4_packet(LINKTYPE_ETHERNET, &arp), None);
        let vlan_ipv6 = ethernet(&[0x81, 0x00], &[0, 5, 0x86, 0xdd, 0x60, 0, 0, 0]);
        assert_eq!(ipv4_packet(LINKTYPE_ETHERNET, &vlan_ipv6), None);
        let mut ipv6 = vec![0x60];
        ipv6.extend_from_slice(&[0; 39]);
        assert_eq!(ipv4_packet(LINKTYPE_RAW, &ipv6), None);
        assert_eq!(ipv4_packet(LINKTYPE_RAW, &IPV4[..19]), None);
        assert_eq!(ipv4_packet(LINKTYPE_ETHERNET, &[0; 13]), None);
        let mut sll_arp = vec![0; 14];
        sll_arp.extend_from_slice(&[0x08, 0x06]);
        assert_eq!(ipv4_packet(LINKTYPE_LINUX_SLL, &sll_arp), None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for big_endian in [false, true] {
            let bytes = file(
                big_endian,
                false,
                LINKTYPE_RAW,
                &[(1, 2, &IPV4), (3, 4, &IPV4)],
            );
            let record_end = FILE_HEADER_LEN + RECORD_HEADER_LEN + IPV4.len();
            for len in 0..bytes.len() {
                let result = parse(&bytes[..len]);
                // A cut exactly between records is a shorter, valid file.
                if len == FILE_HEADER_LEN || len == record_end {
                    assert!(result.is_ok(), "cut at {len}");
                } else {
                    assert!(
                        result.is_err(),
                        "cut at {len} of {} must be an error",
                        bytes.len()
                    );
                }
            }
            assert_eq!(parse(&bytes).unwrap().records.len(), 2);
        }
    }

    #[test]
    fn corrupt_headers_are_errors() {
        let mut bad_magic = file(false, false, LINKTYPE_RAW, &[]);
        bad_magic[0] = 0x0a; // the pcapng section header starts 0x0a0d0d0a
        assert!(matches!(parse(&bad_magic), Err(PcapError::BadMagic(_))));

        let token_ring = file(false, false, 6, &[]);
        assert_eq!(parse(&token_ring), Err(PcapError::UnsupportedLinkType(6)));

        let mut huge = file(false, false, LINKTYPE_RAW, &[(1, 0, &IPV4)]);
        huge[FILE_HEADER_LEN + 8..FILE_HEADER_LEN + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse(&huge),
            Err(PcapError::RecordTooLong { record: 0, .. })
        ));
    }

    #[test]
    fn written_files_read_back() {
        let mut writer = PcapWriter::new(Vec::new(), LINKTYPE_RAW).unwrap();
        writer.write(1_700_000_000, 999_999, &IPV4).unwrap();
        writer.write(1_700_000_001, 0, &IPV4[..20]).unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(&bytes[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        let capture = parse(&bytes).unwrap();
        assert_eq!(capture.link_type, LINKTYPE_RAW);
        assert!(!capture.nanos);
        let times: Vec<_> = capture
            .records
            .iter()
            .map(|r| capture.timestamp_us(r))
            .collect();
        assert_eq!(times, [(1_700_000_000, 999_999), (1_700_000_001, 0)]);
        assert_eq!(capture.records[0].data, IPV4);
        assert_eq!(capture.records[1].data, IPV4[..20]);
    }
}
