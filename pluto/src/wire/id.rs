//! The Identification payload in the IPsec DOI (RFC 2407 §4.6.2).
//!
//! ```text
//! ID body: ID Type (1) | Protocol ID (1) | Port (2) | Identification Data...
//! ```
//!
//! Phase 1 uses it to name the peer (ID_IPV4_ADDR here: pre-shared keys are looked up by
//! address); Quick Mode uses it for the traffic selectors IDci/IDcr, where Protocol ID and
//! Port narrow the selector (0 = any).

use std::net::Ipv4Addr;

use ipsec_plugin::config::Cidr;

use super::{be16, need, IdType, WireError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRepr {
    pub id_type: IdType,
    /// IP protocol number, 0 = any.
    pub protocol: u8,
    /// 0 = any.
    pub port: u16,
    pub data: Vec<u8>,
}

/// What an identification names, for the types this daemon understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdValue {
    Ipv4(Ipv4Addr),
    Ipv4Subnet(Cidr),
    /// Inclusive range.
    Ipv4Range {
        start: Ipv4Addr,
        end: Ipv4Addr,
    },
}

impl IdValue {
    /// The prefix this identification covers, when it is one: a range is accepted only
    /// when it is exactly a prefix (the selectors of this suite are prefixes).
    pub fn as_cidr(self) -> Option<Cidr> {
        match self {
            IdValue::Ipv4(a) => Some(Cidr::host(a)),
            IdValue::Ipv4Subnet(c) => Some(c),
            IdValue::Ipv4Range { start, end } => {
                let size = u64::from(u32::from(end)) - u64::from(u32::from(start)) + 1;
                let prefix = 32 - size.trailing_zeros();
                let cidr = Cidr::new(start, prefix as u8)?;
                (size.is_power_of_two() && cidr.addr == start).then_some(cidr)
            }
        }
    }
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl IdRepr {
    pub fn parse(body: &[u8]) -> Result<IdRepr, WireError> {
        need("identification payload", body, 4)?;
        Ok(IdRepr {
            id_type: body[0].into(),
            protocol: body[1],
            port: be16(&body[2..4]),
            data: body[4..].to_vec(),
        })
    }

    /// ID_IPV4_ADDR for a host, ID_IPV4_ADDR_SUBNET otherwise (what Pluto sends).
    pub fn from_cidr(cidr: Cidr, protocol: u8, port: u16) -> IdRepr {
        let mut data = cidr.addr.octets().to_vec();
        let id_type = if cidr.prefix == 32 {
            IdType::Ipv4Addr
        } else {
            let mask = if cidr.prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(cidr.prefix))
            };
            data.extend_from_slice(&mask.to_be_bytes());
            IdType::Ipv4AddrSubnet
        };
        IdRepr {
            id_type,
            protocol,
            port,
            data,
        }
    }

    pub fn value(&self) -> Result<IdValue, WireError> {
        let exact = |len: usize| {
            if self.data.len() == len {
                Ok(())
            } else {
                Err(WireError::BadLength {
                    what: "IPv4 identification data",
                    length: self.data.len(),
                })
            }
        };
        match self.id_type {
            IdType::Ipv4Addr => {
                exact(4)?;
                Ok(IdValue::Ipv4(ipv4(&self.data)))
            }
            IdType::Ipv4AddrSubnet => {
                exact(8)?;
                let mask = u32::from(ipv4(&self.data[4..]));
                // A mask must be contiguous ones: its complement plus one is a power of two.
                if (!mask).wrapping_add(1) & !mask != 0 {
                    return Err(WireError::BadValue {
                        what: "subnet mask",
                        value: mask,
                    });
                }
                let cidr = Cidr::new(ipv4(&self.data), mask.count_ones() as u8).ok_or(
                    WireError::BadValue {
                        what: "subnet mask",
                        value: mask,
                    },
                )?;
                Ok(IdValue::Ipv4Subnet(cidr))
            }
            IdType::Ipv4AddrRange => {
                exact(8)?;
                let (start, end) = (ipv4(&self.data), ipv4(&self.data[4..]));
                if start > end {
                    return Err(WireError::BadValue {
                        what: "address range end",
                        value: u32::from(end),
                    });
                }
                Ok(IdValue::Ipv4Range { start, end })
            }
            other => Err(WireError::BadValue {
                what: "identification type",
                value: u8::from(other).into(),
            }),
        }
    }

    pub fn buffer_len(&self) -> usize {
        4 + self.data.len()
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.id_type.into());
        out.push(self.protocol);
        out.extend_from_slice(&self.port.to_be_bytes());
        out.extend_from_slice(&self.data);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len());
        self.emit(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn host_and_subnet_round_trip() {
        let host = IdRepr::from_cidr(cidr("10.0.3.10/32"), 0, 0);
        // The responder ID body of the RUB-NDS recorded handshake (see crypto::phase1 tests).
        assert_eq!(host.to_bytes(), [1, 0, 0, 0, 10, 0, 3, 10]);
        assert_eq!(
            IdRepr::parse(&host.to_bytes()).unwrap().value(),
            Ok(IdValue::Ipv4("10.0.3.10".parse().unwrap()))
        );

        let net = IdRepr::from_cidr(cidr("192.168.0.0/16"), 6, 80);
        let bytes = net.to_bytes();
        assert_eq!(bytes, [4, 6, 0, 80, 192, 168, 0, 0, 255, 255, 0, 0]);
        let parsed = IdRepr::parse(&bytes).unwrap();
        assert_eq!((parsed.protocol, parsed.port), (6, 80));
        assert_eq!(
            parsed.value().unwrap().as_cidr(),
            Some(cidr("192.168.0.0/16"))
        );

        let any = IdRepr::from_cidr(cidr("0.0.0.0/0"), 0, 0);
        assert_eq!(
            IdRepr::parse(&any.to_bytes())
                .unwrap()
                .value()
                .unwrap()
                .as_cidr(),
            Some(cidr("0.0.0.0/0"))
        );
    }

    #[test]
    fn ranges_become_prefixes_only_when_exact() {
        let range = |a: &str, b: &str| {
            let mut data = a.parse::<Ipv4Addr>().unwrap().octets().to_vec();
            data.extend_from_slice(&b.parse::<Ipv4Addr>().unwrap().octets());
            IdRepr {
                id_type: IdType::Ipv4AddrRange,
                protocol: 0,
                port: 0,
                data,
            }
            .value()
        };
        assert_eq!(
            range("10.1.0.0", "10.1.0.255").unwrap().as_cidr(),
            Some(cidr("10.1.0.0/24"))
        );
        assert_eq!(
            range("0.0.0.0", "255.255.255.255").unwrap().as_cidr(),
            Some(cidr("0.0.0.0/0"))
        );
        assert_eq!(range("10.1.0.1", "10.1.0.2").unwrap().as_cidr(), None);
        assert_eq!(range("10.1.0.0", "10.1.0.2").unwrap().as_cidr(), None);
        assert!(range("10.1.0.9", "10.1.0.2").is_err());
    }

    #[test]
    fn bad_data_is_refused() {
        assert!(IdRepr::parse(&[1, 0, 0]).is_err());
        let short = IdRepr::parse(&[1, 0, 0, 0, 10, 0, 3]).unwrap();
        assert!(short.value().is_err());
        let holes = IdRepr::parse(&[4, 0, 0, 0, 10, 0, 0, 0, 255, 0, 255, 0]).unwrap();
        assert!(holes.value().is_err());
        let fqdn = IdRepr::parse(b"\x02\x00\x00\x00example.org").unwrap();
        assert!(fqdn.value().is_err());
    }
}
