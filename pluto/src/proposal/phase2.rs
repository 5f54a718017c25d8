//! Phase 2: numbered proposals of AH, ESP and IPComp payloads (RFC 2407 §4.4-4.5,
//! RFC 4106 §8.4 for AES-GCM), one transform each in what this end offers. Behind a NAT
//! the Encapsulation Mode asks for UDP encapsulation (RFC 3947 §5.1).

use ipsec_plugin::config::{DhGroup, Mode};
use ipsec_plugin::crypto::{AeadAlg, CipherAlg, EspTransform, IntegAlg};

use super::{clamp_lifetime, group_from_number, lifetime_secs};
use crate::event::SpiSet;
use crate::natt::{self, Dialect};
use crate::wire::{
    AhTransformId, Attribute, AuthAlgorithm, EncapsulationMode, EspTransformId, IpcompTransformId,
    IpsecAttr, LifeType, ProposalRepr, ProtocolId, SaRepr, TransformRepr, DOI_IPSEC,
    SIT_IDENTITY_ONLY,
};

/// What one phase 2 proposal protects the traffic with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildSuite {
    pub esp: Option<EspTransform>,
    pub ah: Option<IntegAlg>,
    pub ipcomp: bool,
    pub mode: Mode,
    /// UDP-encapsulated ESP, in the numbers of this NAT-T dialect.
    pub udp: Option<Dialect>,
    /// The Quick Mode PFS group.
    pub pfs: Option<DhGroup>,
    pub lifetime: u64,
}

fn esp_id(t: EspTransform) -> (EspTransformId, Option<u16>) {
    match t {
        EspTransform::Cipher { cipher, .. } => match cipher {
            CipherAlg::Null => (EspTransformId::Null, None),
            CipherAlg::DesCbc => (EspTransformId::Des, None),
            CipherAlg::TripleDesCbc => (EspTransformId::TripleDes, None),
            CipherAlg::AesCbc128 => (EspTransformId::Aes, Some(128)),
            CipherAlg::AesCbc192 => (EspTransformId::Aes, Some(192)),
            CipherAlg::AesCbc256 => (EspTransformId::Aes, Some(256)),
        },
        EspTransform::Aead(AeadAlg::AesGcm16_128) => (EspTransformId::AesGcm16, Some(128)),
        EspTransform::Aead(AeadAlg::AesGcm16_256) => (EspTransformId::AesGcm16, Some(256)),
    }
}

fn auth_algorithm(i: IntegAlg) -> AuthAlgorithm {
    match i {
        IntegAlg::HmacMd5_96 => AuthAlgorithm::HmacMd5,
        IntegAlg::HmacSha1_96 => AuthAlgorithm::HmacSha1,
        IntegAlg::HmacSha256_128 => AuthAlgorithm::HmacSha2_256,
    }
}

fn integ_from(a: AuthAlgorithm) -> Option<IntegAlg> {
    match a {
        AuthAlgorithm::HmacMd5 => Some(IntegAlg::HmacMd5_96),
        AuthAlgorithm::HmacSha1 => Some(IntegAlg::HmacSha1_96),
        AuthAlgorithm::HmacSha2_256 => Some(IntegAlg::HmacSha256_128),
        _ => None,
    }
}

fn ah_id(i: IntegAlg) -> AhTransformId {
    match i {
        IntegAlg::HmacMd5_96 => AhTransformId::Md5,
        IntegAlg::HmacSha1_96 => AhTransformId::Sha,
        IntegAlg::HmacSha256_128 => AhTransformId::Sha2_256,
    }
}

fn encapsulation(mode: Mode, udp: Option<Dialect>) -> EncapsulationMode {
    match (mode, udp) {
        (_, Some(d)) => d.encapsulation(mode),
        (Mode::Tunnel, None) => EncapsulationMode::Tunnel,
        (Mode::Transport, None) => EncapsulationMode::Transport,
    }
}

/// The attributes every phase 2 transform carries.
fn common_attrs(s: &ChildSuite) -> Vec<Attribute> {
    let mut a = vec![
        Attribute::basic(IpsecAttr::SaLifeType, LifeType::Seconds),
        Attribute::number(
            IpsecAttr::SaLifeDuration,
            s.lifetime.min(u64::from(u32::MAX)) as u32,
        ),
    ];
    if let Some(g) = s.pfs {
        a.push(Attribute::basic(IpsecAttr::GroupDescription, g.number()));
    }
    a.push(Attribute::basic(
        IpsecAttr::EncapsulationMode,
        encapsulation(s.mode, s.udp),
    ));
    a
}

fn esp_transform(s: &ChildSuite, t: EspTransform) -> TransformRepr {
    let (id, key_len) = esp_id(t);
    let mut attributes = common_attrs(s);
    if let EspTransform::Cipher { integ: Some(i), .. } = t {
        attributes.push(Attribute::basic(
            IpsecAttr::AuthAlgorithm,
            auth_algorithm(i),
        ));
    }
    if let Some(bits) = key_len {
        attributes.push(Attribute::basic(IpsecAttr::KeyLength, bits));
    }
    TransformRepr {
        number: 1,
        id: id.into(),
        attributes,
    }
}

fn ah_transform(s: &ChildSuite, i: IntegAlg) -> TransformRepr {
    let mut attributes = common_attrs(s);
    attributes.push(Attribute::basic(
        IpsecAttr::AuthAlgorithm,
        auth_algorithm(i),
    ));
    TransformRepr {
        number: 1,
        id: ah_id(i).into(),
        attributes,
    }
}

fn ipcomp_transform(s: &ChildSuite) -> TransformRepr {
    // The group is a property of the Quick Mode, carried once by AH/ESP; Pluto sends
    // IPComp with lifetime and mode only.
    let attributes = common_attrs(&ChildSuite { pfs: None, ..*s });
    TransformRepr {
        number: 1,
        id: IpcompTransformId::Deflate.into(),
        attributes,
    }
}

fn spi_bytes(protocol: ProtocolId, spis: &SpiSet) -> Vec<u8> {
    match protocol {
        ProtocolId::Ipcomp => spis.ipcomp.unwrap_or(0).to_be_bytes().to_vec(),
        ProtocolId::Ah => spis.ah.unwrap_or(0).to_be_bytes().to_vec(),
        _ => spis.esp.unwrap_or(0).to_be_bytes().to_vec(),
    }
}

fn proposal_payloads(number: u8, s: &ChildSuite, spis: &SpiSet) -> Vec<ProposalRepr> {
    let mut out = Vec::new();
    let mut push = |protocol, t: TransformRepr| {
        out.push(ProposalRepr {
            number,
            protocol,
            spi: spi_bytes(protocol, spis),
            transforms: vec![t],
        })
    };
    if let Some(i) = s.ah {
        push(ProtocolId::Ah, ah_transform(s, i));
    }
    if let Some(t) = s.esp {
        push(ProtocolId::Esp, esp_transform(s, t));
    }
    if s.ipcomp {
        push(ProtocolId::Ipcomp, ipcomp_transform(s));
    }
    out
}

/// Quick Mode message 1's SA: one numbered proposal per suite, in order of preference.
pub(crate) fn child_offer(suites: &[ChildSuite], spis: &SpiSet) -> SaRepr {
    let proposals = suites
        .iter()
        .enumerate()
        .flat_map(|(i, s)| proposal_payloads((i + 1) as u8, s, spis))
        .collect();
    SaRepr {
        doi: DOI_IPSEC,
        situation: SIT_IDENTITY_ONLY,
        proposals,
    }
}

/// One phase 2 transform, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protects {
    Esp(EspTransform),
    Ah(IntegAlg),
    Ipcomp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decoded {
    protects: Protects,
    /// None = not given (host-dependent, RFC 2407 §4.5): this end's mode then.
    mode: Option<Mode>,
    udp: Option<Dialect>,
    pfs: Option<DhGroup>,
    lifetime: Option<u64>,
}

fn decode_child_transform(protocol: ProtocolId, t: &TransformRepr) -> Result<Decoded, String> {
    let mut mode = None;
    let mut udp = None;
    let mut pfs = None;
    let mut auth = None;
    let mut key_len = None;
    for a in &t.attributes {
        let n = a
            .as_number()
            .ok_or_else(|| format!("attribute {} is too long", a.kind))?;
        match IpsecAttr::from(a.kind) {
            IpsecAttr::SaLifeType | IpsecAttr::SaLifeDuration => {}
            IpsecAttr::GroupDescription => {
                pfs =
                    Some(group_from_number(n).ok_or_else(|| format!("unsupported PFS group {n}"))?)
            }
            IpsecAttr::EncapsulationMode => {
                let e = EncapsulationMode::from(n as u16);
                let (m, u) = natt::decode_encapsulation(e)
                    .ok_or_else(|| format!("encapsulation {e:?} not supported"))?;
                (mode, udp) = (Some(m), u);
            }
            IpsecAttr::AuthAlgorithm => auth = Some(AuthAlgorithm::from(n as u16)),
            IpsecAttr::KeyLength => key_len = Some(n),
            other => return Err(format!("unsupported attribute {other:?}")),
        }
    }
    let lifetime = lifetime_secs(
        &t.attributes,
        IpsecAttr::SaLifeType.into(),
        IpsecAttr::SaLifeDuration.into(),
    )?;
    let integ = match auth {
        None => None,
        Some(a) => Some(integ_from(a).ok_or_else(|| format!("unsupported authentication {a:?}"))?),
    };
    let protects = match protocol {
        ProtocolId::Esp => {
            let cipher = match (EspTransformId::from(t.id), key_len) {
                (EspTransformId::Null, None) => CipherAlg::Null,
                (EspTransformId::Des, None) => CipherAlg::DesCbc,
                (EspTransformId::TripleDes, None) => CipherAlg::TripleDesCbc,
                (EspTransformId::Aes, None | Some(128)) => CipherAlg::AesCbc128,
                (EspTransformId::Aes, Some(192)) => CipherAlg::AesCbc192,
                (EspTransformId::Aes, Some(256)) => CipherAlg::AesCbc256,
                // RFC 4106 §8.4: the key length is required and there is no separate
                // integrity algorithm.
                (EspTransformId::AesGcm16, Some(bits)) if integ.is_none() => {
                    let aead = match bits {
                        128 => AeadAlg::AesGcm16_128,
                        256 => AeadAlg::AesGcm16_256,
                        _ => return Err(format!("AES-GCM-16 with {bits}-bit keys not supported")),
                    };
                    return Ok(Decoded {
                        protects: Protects::Esp(EspTransform::Aead(aead)),
                        mode,
                        udp,
                        pfs,
                        lifetime,
                    });
                }
                (id, k) => {
                    return Err(format!(
                        "unsupported ESP transform {id:?} (key length {k:?}, auth {auth:?})"
                    ))
                }
            };
            if cipher == CipherAlg::Null && integ.is_none() {
                return Err("ESP without encryption and integrity".into());
            }
            Protects::Esp(EspTransform::Cipher { cipher, integ })
        }
        ProtocolId::Ah => {
            let i = match AhTransformId::from(t.id) {
                AhTransformId::Md5 => IntegAlg::HmacMd5_96,
                AhTransformId::Sha => IntegAlg::HmacSha1_96,
                AhTransformId::Sha2_256 => IntegAlg::HmacSha256_128,
                other => return Err(format!("unsupported AH transform {other:?}")),
            };
            if integ.is_some_and(|a| a != i) {
                return Err(format!(
                    "AH transform {:?} with authentication {auth:?}",
                    t.id
                ));
            }
            Protects::Ah(i)
        }
        ProtocolId::Ipcomp => match IpcompTransformId::from(t.id) {
            IpcompTransformId::Deflate => Protects::Ipcomp,
            other => return Err(format!("unsupported IPComp transform {other:?}")),
        },
        other => return Err(format!("protocol {other:?} in a phase 2 proposal")),
    };
    Ok(Decoded {
        protects,
        mode,
        udp,
        pfs,
        lifetime,
    })
}

/// Proposal payloads grouped by proposal number, in order.
fn group_proposals(sa: &SaRepr) -> Vec<Vec<&ProposalRepr>> {
    let mut groups: Vec<Vec<&ProposalRepr>> = Vec::new();
    for p in &sa.proposals {
        match groups.last_mut() {
            Some(g) if g[0].number == p.number => g.push(p),
            _ => groups.push(vec![p]),
        }
    }
    groups
}

/// A peer's SPI or CPI, refusing the reserved ranges (RFC 4303 §2.1, RFC 3173 §3.3).
fn peer_spi(p: &ProposalRepr) -> Result<u32, String> {
    let spi = match (p.protocol, p.spi.len()) {
        (ProtocolId::Ipcomp, 2 | 4) => p.spi_number().map(|n| n & 0xFFFF),
        (ProtocolId::Esp | ProtocolId::Ah, 4) => p.spi_number(),
        _ => None,
    };
    match spi {
        Some(s) if s >= 256 => Ok(s),
        _ => Err(format!("bad {:?} SPI {:02x?}", p.protocol, p.spi)),
    }
}

/// The suite and SPIs one proposal (all its payloads, one transform each) stands for.
fn suite_of(
    payloads: &[(&ProposalRepr, &TransformRepr)],
    our_mode: Mode,
) -> Result<(ChildSuite, SpiSet), String> {
    let mut suite = ChildSuite {
        esp: None,
        ah: None,
        ipcomp: false,
        mode: our_mode,
        udp: None,
        pfs: None,
        lifetime: u64::MAX,
    };
    let mut spis = SpiSet::default();
    let mut pfs_seen = None;
    // Whether UDP encapsulation was asked for, by the payloads that name a mode.
    let mut udp_seen: Option<bool> = None;
    for &(p, t) in payloads {
        let d = decode_child_transform(p.protocol, t)?;
        let spi = peer_spi(p)?;
        let twice = || format!("{:?} twice in one proposal", p.protocol);
        match d.protects {
            Protects::Esp(e) if suite.esp.is_none() => (suite.esp, spis.esp) = (Some(e), Some(spi)),
            Protects::Ah(i) if suite.ah.is_none() => (suite.ah, spis.ah) = (Some(i), Some(spi)),
            Protects::Ipcomp if !suite.ipcomp => {
                (suite.ipcomp, spis.ipcomp) = (true, Some(spi as u16))
            }
            _ => return Err(twice()),
        }
        if d.mode.is_some_and(|m| m != our_mode) {
            return Err(format!("{:?} mode, we want {our_mode}", d.mode));
        }
        if d.mode.is_some() {
            if udp_seen.is_some_and(|u| u != d.udp.is_some()) {
                return Err("UDP encapsulation on some protocols only".into());
            }
            udp_seen = Some(d.udp.is_some());
            suite.udp = suite.udp.or(d.udp);
        }
        if let Some(g) = d.pfs {
            if pfs_seen.is_some_and(|s| s != g) {
                return Err("different PFS groups in one proposal".into());
            }
            pfs_seen = Some(g);
        }
        if let Some(l) = d.lifetime {
            suite.lifetime = suite.lifetime.min(l);
        }
    }
    if suite.esp.is_none() && suite.ah.is_none() {
        return Err("IPComp without AH or ESP".into());
    }
    suite.pfs = pfs_seen;
    Ok((suite, spis))
}

/// What a responder's Connection accepts in phase 2.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildPolicy {
    pub esp: Option<EspTransform>,
    pub ah: Option<IntegAlg>,
    pub ipcomp: bool,
    pub mode: Mode,
    /// UDP-encapsulated modes are acceptable: both ends speak NAT-T.
    pub udp_allowed: bool,
    pub require_pfs: bool,
    pub lifetime: u64,
}

/// The responder's choice: the suite, the initiator's SPIs, and the chosen payloads
/// (to send back with our SPIs). The reply repeats the chosen transform verbatim, as
/// RFC 2408 §4.2 asks, so a lifetime shorter than the offer stays local to the responder
/// (its SA simply expires and is rekeyed first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChildChoice {
    pub suite: ChildSuite,
    pub peer_spis: SpiSet,
    chosen: Vec<ProposalRepr>,
}

impl ChildChoice {
    /// Quick Mode message 2's SA: the chosen proposal with our SPIs.
    pub fn reply(&self, ours: &SpiSet) -> SaRepr {
        let proposals = self
            .chosen
            .iter()
            .map(|p| ProposalRepr {
                spi: spi_bytes(p.protocol, ours),
                ..p.clone()
            })
            .collect();
        SaRepr {
            doi: DOI_IPSEC,
            situation: SIT_IDENTITY_ONLY,
            proposals,
        }
    }
}

/// Responder: the first proposal (and within it, the first transform per protocol) that
/// the policy accepts.
pub(crate) fn choose_child(offer: &SaRepr, policy: &ChildPolicy) -> Result<ChildChoice, String> {
    if offer.doi != DOI_IPSEC {
        return Err(format!("DOI {} is not IPsec", offer.doi));
    }
    let mut why = Vec::new();
    'proposal: for group in group_proposals(offer) {
        let mut picked = Vec::new();
        for p in &group {
            let acceptable = p
                .transforms
                .iter()
                .find(|t| match suite_of(&[(p, t)], policy.mode) {
                    Ok((s, _)) => match p.protocol {
                        ProtocolId::Esp => s.esp == policy.esp,
                        ProtocolId::Ah => s.ah == policy.ah,
                        _ => policy.ipcomp,
                    },
                    // A lone IPComp payload is judged with its proposal below.
                    Err(_) if p.protocol == ProtocolId::Ipcomp => {
                        policy.ipcomp && decode_child_transform(p.protocol, t).is_ok()
                    }
                    Err(_) => false,
                });
            match acceptable {
                Some(t) => picked.push((*p, t)),
                None => {
                    why.push(format!(
                        "proposal {}: no acceptable {:?} transform",
                        p.number, p.protocol
                    ));
                    continue 'proposal;
                }
            }
        }
        let (mut suite, peer_spis) = match suite_of(&picked, policy.mode) {
            Ok(s) => s,
            Err(e) => {
                why.push(format!("proposal {}: {e}", group[0].number));
                continue;
            }
        };
        if suite.esp != policy.esp || suite.ah != policy.ah {
            why.push(format!(
                "proposal {}: protocols differ from ours",
                group[0].number
            ));
            continue;
        }
        if policy.require_pfs && suite.pfs.is_none() {
            why.push(format!("proposal {}: we require PFS", group[0].number));
            continue;
        }
        if suite.udp.is_some() && !policy.udp_allowed {
            why.push(format!(
                "proposal {}: UDP encapsulation without NAT-T",
                group[0].number
            ));
            continue;
        }
        suite.lifetime = clamp_lifetime(
            (suite.lifetime != u64::MAX).then_some(suite.lifetime),
            policy.lifetime,
        );
        let chosen = picked
            .iter()
            .map(|(p, t)| ProposalRepr {
                transforms: vec![(*t).clone()],
                ..(*p).clone()
            })
            .collect();
        return Ok(ChildChoice {
            suite,
            peer_spis,
            chosen,
        });
    }
    Err(format!(
        "no acceptable Quick Mode proposal ({})",
        why.join("; ")
    ))
}

/// Initiator: the reply must be one proposal, one transform per protocol, matching one
/// suite we offered. Returns the suite (lifetime clamped to ours) and the peer's SPIs.
pub(crate) fn check_child_reply(
    reply: &SaRepr,
    offered: &[ChildSuite],
    mode: Mode,
) -> Result<(ChildSuite, SpiSet), String> {
    let groups = group_proposals(reply);
    let [group] = &groups[..] else {
        return Err(format!(
            "responder returned {} proposals instead of one",
            groups.len()
        ));
    };
    let mut picked = Vec::new();
    for p in group {
        let [t] = &p.transforms[..] else {
            return Err(format!(
                "responder returned {} {:?} transforms instead of one",
                p.transforms.len(),
                p.protocol
            ));
        };
        picked.push((*p, t));
    }
    let (mut suite, spis) = suite_of(&picked, mode)?;
    let ours = offered
        .iter()
        .find(|o| {
            (o.esp, o.ah, o.ipcomp, o.pfs, o.udp.is_some())
                == (
                    suite.esp,
                    suite.ah,
                    suite.ipcomp,
                    suite.pfs,
                    suite.udp.is_some(),
                )
        })
        .ok_or("responder chose a proposal we did not offer")?;
    suite.lifetime = clamp_lifetime(
        (suite.lifetime != u64::MAX).then_some(suite.lifetime),
        ours.lifetime,
    );
    Ok((suite, spis))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp(name: &str) -> Option<EspTransform> {
        EspTransform::from_name(name)
    }

    fn all_esp() -> Vec<EspTransform> {
        let mut v: Vec<EspTransform> = ipsec_plugin::crypto::AeadAlg::ALL
            .map(EspTransform::Aead)
            .to_vec();
        for cipher in CipherAlg::ALL {
            for integ in [
                None,
                Some(IntegAlg::HmacMd5_96),
                Some(IntegAlg::HmacSha1_96),
                Some(IntegAlg::HmacSha256_128),
            ] {
                if cipher != CipherAlg::Null || integ.is_some() {
                    v.push(EspTransform::Cipher { cipher, integ });
                }
            }
        }
        v
    }

    #[test]
    fn every_child_suite_is_chosen_and_checked() {
        let spis = SpiSet {
            esp: Some(0x1000),
            ah: Some(0x1001),
            ipcomp: Some(0x1002),
        };
        let theirs = SpiSet {
            esp: Some(0x2000),
            ah: Some(0x2001),
            ipcomp: Some(0x2002),
        };
        for e in all_esp().into_iter().map(Some).chain([None]) {
            for ah in [
                None,
                Some(IntegAlg::HmacMd5_96),
                Some(IntegAlg::HmacSha256_128),
            ] {
                if e.is_none() && ah.is_none() {
                    continue;
                }
                for (ipcomp, pfs, mode, udp) in [
                    (false, None, Mode::Tunnel, None),
                    (true, Some(DhGroup::Modp1536), Mode::Transport, None),
                    (false, None, Mode::Tunnel, Some(Dialect::Rfc3947)),
                    (true, None, Mode::Transport, Some(Dialect::Draft)),
                ] {
                    let suite = ChildSuite {
                        esp: e,
                        ah,
                        ipcomp,
                        mode,
                        udp,
                        pfs,
                        lifetime: 28_800,
                    };
                    let offer = SaRepr::parse(&child_offer(&[suite], &spis).to_bytes()).unwrap();
                    let policy = ChildPolicy {
                        esp: e,
                        ah,
                        ipcomp,
                        mode,
                        udp_allowed: true,
                        require_pfs: pfs.is_some(),
                        lifetime: 3600,
                    };
                    let choice = choose_child(&offer, &policy).unwrap();
                    assert_eq!(
                        choice.suite,
                        ChildSuite {
                            lifetime: 3600,
                            ..suite
                        }
                    );
                    assert_eq!(choice.peer_spis.esp, e.and(spis.esp));
                    let reply = SaRepr::parse(&choice.reply(&theirs).to_bytes()).unwrap();
                    let (checked, got) = check_child_reply(&reply, &[suite], mode).unwrap();
                    // The reply echoes the offered lifetime; the responder's shorter one
                    // stays local to it.
                    assert_eq!(checked, suite);
                    assert_eq!(got.ah, ah.and(theirs.ah));
                    assert_eq!(got.ipcomp, ipcomp.then_some(0x2002));
                }
            }
        }
    }

    #[test]
    fn child_choice_walks_proposals_in_order() {
        let spis = SpiSet {
            esp: Some(0x1000),
            ah: None,
            ipcomp: Some(0x1001),
        };
        let base = ChildSuite {
            esp: esp("aes128-sha1"),
            ah: None,
            ipcomp: true,
            mode: Mode::Tunnel,
            udp: None,
            pfs: None,
            lifetime: 100,
        };
        let offer = child_offer(
            &[
                base,
                ChildSuite {
                    ipcomp: false,
                    ..base
                },
            ],
            &spis,
        );
        let mut policy = ChildPolicy {
            esp: base.esp,
            ah: None,
            ipcomp: false,
            mode: Mode::Tunnel,
            udp_allowed: false,
            require_pfs: false,
            lifetime: 200,
        };
        // Without IPComp configured, the second proposal is taken.
        let c = choose_child(&offer, &policy).unwrap();
        assert!(!c.suite.ipcomp);
        assert_eq!(c.reply(&spis).proposals[0].number, 2);
        policy.ipcomp = true;
        assert!(choose_child(&offer, &policy).unwrap().suite.ipcomp);
        policy.require_pfs = true;
        assert!(choose_child(&offer, &policy)
            .unwrap_err()
            .contains("we require PFS"));
        policy = ChildPolicy {
            esp: esp("3des-md5"),
            ..policy
        };
        assert!(choose_child(&offer, &policy).is_err());
        policy = ChildPolicy {
            esp: base.esp,
            mode: Mode::Transport,
            require_pfs: false,
            ..policy
        };
        assert!(choose_child(&offer, &policy).is_err());
    }

    #[test]
    fn reserved_spis_and_bad_replies_are_refused() {
        let suite = ChildSuite {
            esp: esp("aes256-sha256"),
            ah: None,
            ipcomp: false,
            mode: Mode::Tunnel,
            udp: None,
            pfs: None,
            lifetime: 100,
        };
        let low = child_offer(
            &[suite],
            &SpiSet {
                esp: Some(255),
                ..SpiSet::default()
            },
        );
        let policy = ChildPolicy {
            esp: suite.esp,
            ah: None,
            ipcomp: false,
            mode: Mode::Tunnel,
            udp_allowed: false,
            require_pfs: false,
            lifetime: 100,
        };
        assert!(choose_child(&low, &policy).is_err());
        // A reply with two proposals, or with a suite we did not offer.
        let spis = SpiSet {
            esp: Some(0x1000),
            ..SpiSet::default()
        };
        let two = child_offer(&[suite, suite], &spis);
        assert!(check_child_reply(&two, &[suite], Mode::Tunnel).is_err());
        let other = child_offer(
            &[ChildSuite {
                esp: esp("3des-sha1"),
                ..suite
            }],
            &spis,
        );
        assert!(check_child_reply(&other, &[suite], Mode::Tunnel).is_err());
    }

    /// UDP encapsulation (RFC 3947 §5.1) is taken only from a NAT-T peer, in either
    /// dialect's numbers, and an initiator holds the responder to what it offered.
    #[test]
    fn udp_encapsulation_needs_nat_t_and_must_match_the_offer() {
        let spis = SpiSet {
            esp: Some(0x1000),
            ..SpiSet::default()
        };
        let plain = ChildSuite {
            esp: esp("aes128-sha1"),
            ah: None,
            ipcomp: false,
            mode: Mode::Transport,
            udp: None,
            pfs: None,
            lifetime: 100,
        };
        let mut policy = ChildPolicy {
            esp: plain.esp,
            ah: None,
            ipcomp: false,
            mode: Mode::Transport,
            udp_allowed: false,
            require_pfs: false,
            lifetime: 100,
        };
        for d in [Dialect::Rfc3947, Dialect::Draft] {
            let udp = ChildSuite {
                udp: Some(d),
                ..plain
            };
            let offer = child_offer(&[udp], &spis);
            let mode_attr = offer.proposals[0].transforms[0]
                .attributes
                .iter()
                .find(|a| a.kind == u16::from(IpsecAttr::EncapsulationMode))
                .and_then(|a| a.as_number());
            assert_eq!(
                mode_attr,
                Some(u64::from(u16::from(d.encapsulation(Mode::Transport))))
            );
            policy.udp_allowed = false;
            assert!(choose_child(&offer, &policy)
                .unwrap_err()
                .contains("UDP encapsulation without NAT-T"));
            policy.udp_allowed = true;
            let choice = choose_child(&offer, &policy).unwrap();
            assert_eq!(choice.suite.udp, Some(d));
            let reply = choice.reply(&spis);
            assert!(check_child_reply(&reply, &[udp], Mode::Transport).is_ok());
            assert!(check_child_reply(&reply, &[plain], Mode::Transport).is_err());
        }
        // A plain offer is still fine with a NAT-T peer.
        let choice = choose_child(&child_offer(&[plain], &spis), &policy).unwrap();
        assert_eq!(choice.suite.udp, None);
    }
}
