//! The `keying = ike` keys: phase 1 proposals and the lifetimes passed to the keying daemon.
//! Limits and the rekey check follow Pluto's (`whack`), since the daemon is Pluto-compatible.

use std::fmt;
use std::str::FromStr;

use super::bundle::{Bad, Check};
use super::lexer::Key;
use super::value::{duration, number_in, percent, show_secs, shown, yes_no, Parsed, ValueError};
use super::IkeParams;

/// Pluto's SA_LIFE_DURATION_MAXIMUM and OAKLEY_ISAKMP_SA_LIFETIME_MAXIMUM: one day.
const MAX_LIFETIME_SECS: u64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IkeCipher {
    TripleDes,
    Aes128,
    Aes256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IkeHash {
    Md5,
    Sha1,
    Sha256,
}

/// The MODP Diffie-Hellman groups 2 (RFC 2409), 5 and 14 (RFC 3526).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DhGroup {
    Modp1024,
    Modp1536,
    Modp2048,
}

fn by_name<T: Copy>(all: &[T], name: fn(T) -> &'static str, s: &str) -> Option<T> {
    all.iter()
        .copied()
        .find(|&a| name(a).eq_ignore_ascii_case(s))
}

impl IkeCipher {
    pub const ALL: [IkeCipher; 3] = [IkeCipher::TripleDes, IkeCipher::Aes128, IkeCipher::Aes256];

    pub fn name(self) -> &'static str {
        match self {
            IkeCipher::TripleDes => "3des",
            IkeCipher::Aes128 => "aes128",
            IkeCipher::Aes256 => "aes256",
        }
    }

    pub fn from_name(s: &str) -> Option<IkeCipher> {
        by_name(&IkeCipher::ALL, IkeCipher::name, s)
    }
}

impl IkeHash {
    pub const ALL: [IkeHash; 3] = [IkeHash::Md5, IkeHash::Sha1, IkeHash::Sha256];

    pub fn name(self) -> &'static str {
        match self {
            IkeHash::Md5 => "md5",
            IkeHash::Sha1 => "sha1",
            IkeHash::Sha256 => "sha256",
        }
    }

    pub fn from_name(s: &str) -> Option<IkeHash> {
        by_name(&IkeHash::ALL, IkeHash::name, s)
    }
}

impl DhGroup {
    pub const ALL: [DhGroup; 3] = [DhGroup::Modp1024, DhGroup::Modp1536, DhGroup::Modp2048];

    pub fn name(self) -> &'static str {
        match self {
            DhGroup::Modp1024 => "modp1024",
            DhGroup::Modp1536 => "modp1536",
            DhGroup::Modp2048 => "modp2048",
        }
    }

    pub fn from_name(s: &str) -> Option<DhGroup> {
        by_name(&DhGroup::ALL, DhGroup::name, s)
    }

    /// The IANA group number carried in IKE.
    pub fn number(self) -> u16 {
        match self {
            DhGroup::Modp1024 => 2,
            DhGroup::Modp1536 => 5,
            DhGroup::Modp2048 => 14,
        }
    }
}

/// A phase 1 proposal, written `<cipher>-<hash>-<group>` (`aes128-sha1-modp2048`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeProposal {
    pub cipher: IkeCipher,
    pub hash: IkeHash,
    pub group: DhGroup,
}

impl IkeProposal {
    /// Why the proposal is weak, if it is (RFC 8247 deprecates MD5 and group 2).
    fn weaknesses(self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if self.hash == IkeHash::Md5 {
            why.push("MD5");
        }
        if self.group == DhGroup::Modp1024 {
            why.push("modp1024 (group 2)");
        }
        why
    }
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.cipher.name(),
            self.hash.name(),
            self.group.name()
        )
    }
}

impl FromStr for IkeProposal {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<IkeProposal, ValueError> {
        let mut parts = s.split('-');
        let (Some(c), Some(h), Some(g), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!(
                "{} is not an IKE proposal <cipher>-<hash>-<group> (like aes128-sha1-modp2048)",
                shown(s)
            )
            .into());
        };
        let unknown = |what: &str, part: &str, names: &[&str]| -> ValueError {
            format!(
                "unknown IKE {what} {} in {} (one of {})",
                shown(part),
                shown(s),
                names.join(", ")
            )
            .into()
        };
        let cipher = IkeCipher::from_name(c)
            .ok_or_else(|| unknown("cipher", c, &IkeCipher::ALL.map(IkeCipher::name)))?;
        let hash = IkeHash::from_name(h)
            .ok_or_else(|| unknown("hash", h, &IkeHash::ALL.map(IkeHash::name)))?;
        let group = DhGroup::from_name(g)
            .ok_or_else(|| unknown("group", g, &DhGroup::ALL.map(DhGroup::name)))?;
        Ok(IkeProposal {
            cipher,
            hash,
            group,
        })
    }
}

impl IkeParams {
    /// SPEC §2's default phase 1 proposals, most preferred first.
    pub fn default_proposals() -> Vec<IkeProposal> {
        use {DhGroup::*, IkeCipher::*, IkeHash::*};
        vec![
            IkeProposal {
                cipher: Aes128,
                hash: Sha1,
                group: Modp2048,
            },
            IkeProposal {
                cipher: Aes128,
                hash: Sha1,
                group: Modp1536,
            },
            IkeProposal {
                cipher: TripleDes,
                hash: Sha1,
                group: Modp1024,
            },
        ]
    }
}

/// SPEC §2's defaults (the same as Pluto's).
impl Default for IkeParams {
    fn default() -> IkeParams {
        IkeParams {
            proposals: IkeParams::default_proposals(),
            pfs: true,
            lifetime_secs: 8 * 3600,
            ike_lifetime_secs: 3600,
            rekeymargin_secs: 9 * 60,
            rekeyfuzz_percent: 100,
            keyingtries: 3,
        }
    }
}

fn proposal_list(s: &str) -> Parsed<Vec<IkeProposal>> {
    s.split(',')
        .map(|item| match item.trim() {
            "" => Err(format!("empty item in the proposal list {}", shown(s))),
            item => item.parse::<IkeProposal>().map_err(|e| e.to_string()),
        })
        .collect()
}

fn sa_lifetime(s: &str) -> Parsed<u64> {
    match duration(s)? {
        0 => Err("a lifetime of 0 would expire the SA at once".to_owned()),
        secs if secs > MAX_LIFETIME_SECS => Err(format!(
            "{} is longer than the keying daemon's limit of {}",
            show_secs(secs),
            show_secs(MAX_LIFETIME_SECS)
        )),
        secs => Ok(secs),
    }
}

/// Reads the IKE keys of a `keying = ike` section; absent keys take SPEC §2's defaults.
pub(super) fn params(c: &mut Check) -> Result<IkeParams, Bad> {
    let default = IkeParams::default();
    let proposals = c.optional(Key::Ike, proposal_list);
    // The default list keeps 3des-sha1-modp1024 as a last resort for old peers; only a
    // list the administrator wrote is worth a warning.
    for p in proposals.iter().flatten().flatten() {
        let why = p.weaknesses();
        if !why.is_empty() {
            c.warn(
                Key::Ike,
                format!(
                    "proposal {p} uses {}, deprecated by RFC 8247",
                    why.join(" and ")
                ),
            );
        }
    }
    let pfs = c.optional(Key::Pfs, yes_no);
    let lifetime = c.optional(Key::Lifetime, sa_lifetime);
    let ike_lifetime = c.optional(Key::IkeLifetime, sa_lifetime);
    let margin = c.optional(Key::RekeyMargin, duration);
    let fuzz = c.optional(Key::RekeyFuzz, percent);
    let tries = c.optional(Key::KeyingTries, |s| number_in(s, 0, u64::from(u32::MAX)));
    let params = IkeParams {
        proposals: proposals?.unwrap_or(default.proposals),
        pfs: pfs?.unwrap_or(default.pfs),
        lifetime_secs: lifetime?.unwrap_or(default.lifetime_secs),
        ike_lifetime_secs: ike_lifetime?.unwrap_or(default.ike_lifetime_secs),
        rekeymargin_secs: margin?.unwrap_or(default.rekeymargin_secs),
        rekeyfuzz_percent: fuzz?.unwrap_or(default.rekeyfuzz_percent),
        keyingtries: tries?.map_or(default.keyingtries, |n| n as u32), // at most u32::MAX
    };
    check_rekey_fits(c, &params)?;
    Ok(params)
}

/// Pluto rekeys up to rekeymargin × (100% + rekeyfuzz) before expiry; a lifetime not longer
/// than that would have the SA due for rekeying the moment it is up (whack refuses it too).
fn check_rekey_fits(c: &mut Check, p: &IkeParams) -> Result<(), Bad> {
    let earliest_rekey =
        u128::from(p.rekeymargin_secs) * (100 + u128::from(p.rekeyfuzz_percent)) / 100;
    let mut result = Ok(());
    for (key, life) in [
        (Key::Lifetime, p.lifetime_secs),
        (Key::IkeLifetime, p.ike_lifetime_secs),
    ] {
        if u128::from(life) > earliest_rekey {
            continue;
        }
        // Blame the key the administrator wrote: the defaults alone always fit.
        let at = [key, Key::RekeyMargin, Key::RekeyFuzz]
            .into_iter()
            .find(|&k| c.entry(k).is_some())
            .unwrap_or(key);
        c.fail(
            at,
            format!(
                "{} = {} must be longer than rekeymargin × (100% + rekeyfuzz) = {} × {}% = {}s",
                key.name(),
                show_secs(life),
                show_secs(p.rekeymargin_secs),
                100 + u64::from(p.rekeyfuzz_percent),
                earliest_rekey
            ),
        );
        result = Err(Bad);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposal_text_round_trips() {
        for cipher in IkeCipher::ALL {
            for hash in IkeHash::ALL {
                for group in DhGroup::ALL {
                    let p = IkeProposal {
                        cipher,
                        hash,
                        group,
                    };
                    assert_eq!(p.to_string().parse::<IkeProposal>(), Ok(p));
                    assert_eq!(
                        p.to_string().to_ascii_uppercase().parse::<IkeProposal>(),
                        Ok(p)
                    );
                }
            }
        }
        assert_eq!(
            "aes128-sha1-modp2048".parse::<IkeProposal>(),
            Ok(IkeProposal {
                cipher: IkeCipher::Aes128,
                hash: IkeHash::Sha1,
                group: DhGroup::Modp2048
            })
        );
    }

    #[test]
    fn bad_proposals_say_which_part() {
        let e = "aes192-sha1-modp2048"
            .parse::<IkeProposal>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "unknown IKE cipher 'aes192' in 'aes192-sha1-modp2048' (one of 3des, aes128, aes256)"
        );
        assert!("aes128-sha384-modp2048"
            .parse::<IkeProposal>()
            .unwrap_err()
            .to_string()
            .contains("hash 'sha384'"));
        assert!("aes128-sha1-modp4096"
            .parse::<IkeProposal>()
            .unwrap_err()
            .to_string()
            .contains("group 'modp4096'"));
        for bad in [
            "",
            "aes128",
            "aes128-sha1",
            "aes128-sha1-modp2048-x",
            "aes128--modp2048",
        ] {
            assert!(bad.parse::<IkeProposal>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proposal_lists() {
        assert_eq!(
            proposal_list("aes256-sha256-modp2048 , 3des-md5-modp1024").map(|l| l.len()),
            Ok(2)
        );
        assert!(proposal_list("aes256-sha256-modp2048,")
            .unwrap_err()
            .contains("empty item"));
    }

    #[test]
    fn defaults_match_spec() {
        let d = IkeParams::default();
        let text: Vec<String> = d.proposals.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "aes128-sha1-modp2048",
                "aes128-sha1-modp1536",
                "3des-sha1-modp1024"
            ]
        );
        assert_eq!(
            (d.pfs, d.lifetime_secs, d.ike_lifetime_secs),
            (true, 28_800, 3600)
        );
        assert_eq!(
            (d.rekeymargin_secs, d.rekeyfuzz_percent, d.keyingtries),
            (540, 100, 3)
        );
        assert_eq!(DhGroup::ALL.map(DhGroup::number), [2, 5, 14]);
    }

    #[test]
    fn lifetimes_are_bounded() {
        assert_eq!(sa_lifetime("1d"), Ok(86_400));
        assert!(sa_lifetime("86401").unwrap_err().contains("limit of 1d"));
        assert!(sa_lifetime("0h").unwrap_err().contains("at once"));
    }
}
