//! Phase 1: one ISAKMP proposal whose transforms are the configured suites
//! (RFC 2409 Appendix A attributes).

use ipsec_plugin::config::{IkeCipher, IkeHash, IkeProposal};

use super::{clamp_lifetime, group_from_number, lifetime_secs};
use crate::wire::{
    Attribute, AuthMethod, IkeTransformId, LifeType, OakleyAttr, OakleyEncryption, OakleyHash,
    ProposalRepr, ProtocolId, SaRepr, TransformRepr, DOI_IPSEC, SIT_IDENTITY_ONLY,
};

fn oakley_encryption(c: IkeCipher) -> (OakleyEncryption, Option<u16>) {
    match c {
        IkeCipher::TripleDes => (OakleyEncryption::TripleDesCbc, None),
        IkeCipher::Aes128 => (OakleyEncryption::AesCbc, Some(128)),
        IkeCipher::Aes256 => (OakleyEncryption::AesCbc, Some(256)),
    }
}

fn oakley_hash(h: IkeHash) -> OakleyHash {
    match h {
        IkeHash::Md5 => OakleyHash::Md5,
        IkeHash::Sha1 => OakleyHash::Sha1,
        IkeHash::Sha256 => OakleyHash::Sha2_256,
    }
}

fn phase1_transform(number: u8, p: IkeProposal, lifetime: u64) -> TransformRepr {
    let (enc, key_len) = oakley_encryption(p.cipher);
    let mut attributes = vec![Attribute::basic(OakleyAttr::Encryption, enc)];
    if let Some(bits) = key_len {
        attributes.push(Attribute::basic(OakleyAttr::KeyLength, bits));
    }
    attributes.extend([
        Attribute::basic(OakleyAttr::Hash, oakley_hash(p.hash)),
        Attribute::basic(OakleyAttr::AuthMethod, AuthMethod::PreSharedKey),
        Attribute::basic(OakleyAttr::GroupDescription, p.group.number()),
        Attribute::basic(OakleyAttr::LifeType, LifeType::Seconds),
        Attribute::number(
            OakleyAttr::LifeDuration,
            lifetime.min(u64::from(u32::MAX)) as u32,
        ),
    ]);
    TransformRepr {
        number,
        id: IkeTransformId::KeyIke.into(),
        attributes,
    }
}

/// Main Mode message 1's SA: one ISAKMP proposal, one transform per configured suite.
pub(crate) fn phase1_offer(proposals: &[IkeProposal], lifetime: u64) -> SaRepr {
    let transforms = proposals
        .iter()
        .enumerate()
        .map(|(i, &p)| phase1_transform((i + 1) as u8, p, lifetime))
        .collect();
    SaRepr {
        doi: DOI_IPSEC,
        situation: SIT_IDENTITY_ONLY,
        proposals: vec![ProposalRepr {
            number: 1,
            protocol: ProtocolId::Isakmp,
            spi: Vec::new(),
            transforms,
        }],
    }
}

/// The suite a phase 1 transform describes and its lifetime in seconds, if given; or why
/// this daemon cannot use it.
fn parse_phase1_transform(t: &TransformRepr) -> Result<(IkeProposal, Option<u64>), String> {
    if IkeTransformId::from(t.id) != IkeTransformId::KeyIke {
        return Err(format!("transform id {} is not KEY_IKE", t.id));
    }
    let mut enc = None;
    let mut key_len = None;
    let mut hash = None;
    let mut auth = None;
    let mut group = None;
    for a in &t.attributes {
        let n = a
            .as_number()
            .ok_or_else(|| format!("attribute {} is too long", a.kind))?;
        match OakleyAttr::from(a.kind) {
            OakleyAttr::Encryption => enc = Some(OakleyEncryption::from(n as u16)),
            OakleyAttr::KeyLength => key_len = Some(n),
            OakleyAttr::Hash => hash = Some(OakleyHash::from(n as u16)),
            OakleyAttr::AuthMethod => auth = Some(AuthMethod::from(n as u16)),
            OakleyAttr::GroupDescription => group = Some(n),
            OakleyAttr::LifeType | OakleyAttr::LifeDuration => {}
            other => return Err(format!("unsupported attribute {other:?}")),
        }
    }
    let cipher = match (enc, key_len) {
        (Some(OakleyEncryption::TripleDesCbc), None) => IkeCipher::TripleDes,
        // RFC 3602 has AES-128 as the length when none is given.
        (Some(OakleyEncryption::AesCbc), None | Some(128)) => IkeCipher::Aes128,
        (Some(OakleyEncryption::AesCbc), Some(256)) => IkeCipher::Aes256,
        (e, k) => {
            return Err(format!(
                "unsupported encryption {e:?} with key length {k:?}"
            ))
        }
    };
    let hash = match hash {
        Some(OakleyHash::Md5) => IkeHash::Md5,
        Some(OakleyHash::Sha1) => IkeHash::Sha1,
        Some(OakleyHash::Sha2_256) => IkeHash::Sha256,
        h => return Err(format!("unsupported hash {h:?}")),
    };
    if auth != Some(AuthMethod::PreSharedKey) {
        return Err(format!("authentication {auth:?} is not pre-shared key"));
    }
    let group = group
        .and_then(group_from_number)
        .ok_or_else(|| format!("unsupported group {group:?}"))?;
    let life = lifetime_secs(
        &t.attributes,
        OakleyAttr::LifeType.into(),
        OakleyAttr::LifeDuration.into(),
    )?;
    Ok((
        IkeProposal {
            cipher,
            hash,
            group,
        },
        life,
    ))
}

fn isakmp_proposal(sa: &SaRepr) -> Result<&ProposalRepr, String> {
    if sa.doi != DOI_IPSEC {
        return Err(format!("DOI {} is not IPsec", sa.doi));
    }
    let p = &sa.proposals[0];
    if p.protocol != ProtocolId::Isakmp {
        return Err(format!("phase 1 proposal for protocol {:?}", p.protocol));
    }
    Ok(p)
}

/// What the responder accepted: the suite, the lifetime to use, and the reply's SA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Phase1Choice {
    pub suite: IkeProposal,
    pub lifetime: u64,
    pub reply: SaRepr,
}

/// Responder: the first of the initiator's transforms that is one of `ours`.
pub(crate) fn choose_phase1(
    offer: &SaRepr,
    ours: &[IkeProposal],
    our_lifetime: u64,
) -> Result<Phase1Choice, String> {
    let p = isakmp_proposal(offer)?;
    let mut why = Vec::new();
    for t in &p.transforms {
        match parse_phase1_transform(t) {
            Ok((suite, life)) if ours.contains(&suite) => {
                let reply = SaRepr {
                    doi: DOI_IPSEC,
                    situation: SIT_IDENTITY_ONLY,
                    proposals: vec![ProposalRepr {
                        transforms: vec![t.clone()],
                        ..p.clone()
                    }],
                };
                return Ok(Phase1Choice {
                    suite,
                    lifetime: clamp_lifetime(life, our_lifetime),
                    reply,
                });
            }
            Ok((suite, _)) => why.push(format!("{suite} not configured")),
            Err(e) => why.push(e),
        }
    }
    Err(format!(
        "no acceptable phase 1 proposal ({})",
        why.join("; ")
    ))
}

/// Initiator: the responder must have picked exactly one of the transforms we offered.
pub(crate) fn check_phase1_reply(
    reply: &SaRepr,
    ours: &[IkeProposal],
    our_lifetime: u64,
) -> Result<(IkeProposal, u64), String> {
    let p = isakmp_proposal(reply)?;
    let [t] = &p.transforms[..] else {
        return Err(format!(
            "responder chose {} transforms instead of one",
            p.transforms.len()
        ));
    };
    let (suite, life) = parse_phase1_transform(t)?;
    if !ours.contains(&suite) {
        return Err(format!("responder chose {suite}, which we did not offer"));
    }
    Ok((suite, clamp_lifetime(life, our_lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipsec_plugin::config::DhGroup;

    #[test]
    fn phase1_offer_matches_and_replies_verbatim() {
        let ours = ipsec_plugin::config::IkeParams::default_proposals();
        let offer = phase1_offer(&ours, 3600);
        let bytes = offer.to_bytes();
        let parsed = SaRepr::parse(&bytes).unwrap();
        // A responder that only has the last suite picks it.
        let choice = choose_phase1(&parsed, &ours[2..], 1800).unwrap();
        assert_eq!(choice.suite, ours[2]);
        assert_eq!(choice.lifetime, 1800);
        assert_eq!(
            choice.reply.proposals[0].transforms,
            vec![offer.proposals[0].transforms[2].clone()]
        );
        assert_eq!(
            check_phase1_reply(&choice.reply, &ours, 7200).unwrap(),
            (ours[2], 3600)
        );
        // Nothing in common.
        let other = [IkeProposal {
            cipher: IkeCipher::Aes256,
            hash: IkeHash::Md5,
            group: DhGroup::Modp1024,
        }];
        let e = choose_phase1(&parsed, &other, 3600).unwrap_err();
        assert!(e.contains("no acceptable phase 1 proposal"), "{e}");
        assert!(check_phase1_reply(&choice.reply, &other, 3600).is_err());
    }

    #[test]
    fn every_phase1_suite_round_trips() {
        for cipher in IkeCipher::ALL {
            for hash in IkeHash::ALL {
                for group in DhGroup::ALL {
                    let p = IkeProposal {
                        cipher,
                        hash,
                        group,
                    };
                    let t = phase1_transform(1, p, 100_000);
                    assert_eq!(parse_phase1_transform(&t), Ok((p, Some(100_000))));
                }
            }
        }
    }

    #[test]
    fn phase1_rsa_and_unknown_groups_are_refused() {
        let mut t = phase1_transform(
            1,
            ipsec_plugin::config::IkeParams::default_proposals()[0],
            3600,
        );
        t.attributes[3] = Attribute::basic(OakleyAttr::AuthMethod, AuthMethod::RsaSig);
        assert!(parse_phase1_transform(&t)
            .unwrap_err()
            .contains("not pre-shared key"));
        let mut t = phase1_transform(
            1,
            ipsec_plugin::config::IkeParams::default_proposals()[0],
            3600,
        );
        t.attributes[4] = Attribute::basic(OakleyAttr::GroupDescription, 1u16);
        assert!(parse_phase1_transform(&t).unwrap_err().contains("group"));
    }
}
