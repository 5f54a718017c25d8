//! One section → one [`Bundle`]: value syntax of each key, then the rules between keys.
//! Every check runs even after an error so that one pass reports everything, except checks
//! that depend on a value that was itself wrong (they would only repeat the first error).

use std::net::Ipv4Addr;

use super::ike;
use super::lexer::{Entry, Key, KeyClass, Section};
use super::manual;
use super::value::{number_in, shown, yes_no, Parsed};
use super::{Bundle, Cidr, Diags, IntegAlg, Keying, Mode, SaKeys};
use crate::crypto::{CipherAlg, EspTransform};

/// The error was reported; whatever depended on the value is skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bad;

/// A value: absent (None), well-formed, or bad.
pub(super) type Field<T> = Result<Option<T>, Bad>;

/// Checks the entries of one section, recording errors and warnings against it.
pub(super) struct Check<'a, 't> {
    section: &'a Section<'t>,
    diags: &'a mut Diags,
    failed: bool,
}

impl<'a, 't> Check<'a, 't> {
    pub(super) fn new(section: &'a Section<'t>, diags: &'a mut Diags) -> Check<'a, 't> {
        Check {
            section,
            diags,
            failed: false,
        }
    }

    pub(super) fn entries(&self) -> &'a [Entry<'t>] {
        &self.section.entries
    }

    pub(super) fn entry(&self, key: Key) -> Option<Entry<'t>> {
        self.section.entry(key)
    }

    pub(super) fn bundle_name(&self) -> Option<&'a str> {
        self.section.name.as_deref()
    }

    pub(super) fn header_line(&self) -> u32 {
        self.section.line
    }

    /// The line of the key, or of the section header when the key is absent.
    fn line_of(&self, key: Key) -> u32 {
        self.entry(key).map_or(self.section.line, |e| e.line)
    }

    pub(super) fn fail(&mut self, key: Key, message: String) {
        let line = self.line_of(key);
        self.fail_at(line, Some(key), message);
    }

    pub(super) fn fail_at(&mut self, line: u32, key: Option<Key>, message: String) {
        self.failed = true;
        let bundle = self.bundle_name();
        self.diags.error(line, key.map(Key::name), bundle, message);
    }

    pub(super) fn warn(&mut self, key: Key, message: String) {
        let line = self.line_of(key);
        let bundle = self.bundle_name();
        self.diags.warning(line, Some(key.name()), bundle, message);
    }

    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    pub(super) fn optional<T>(
        &mut self,
        key: Key,
        parse: impl FnOnce(&str) -> Parsed<T>,
    ) -> Field<T> {
        if self.section.bad_keys.contains(&key) {
            return Err(Bad);
        }
        let Some(entry) = self.entry(key) else {
            return Ok(None);
        };
        match parse(entry.value) {
            Ok(v) => Ok(Some(v)),
            Err(message) => {
                self.fail_at(entry.line, Some(key), message);
                Err(Bad)
            }
        }
    }

    /// Like `optional`, but absence is an error: "missing, required {needed_for}".
    pub(super) fn required<T>(
        &mut self,
        key: Key,
        needed_for: &str,
        parse: impl FnOnce(&str) -> Parsed<T>,
    ) -> Result<T, Bad> {
        match self.optional(key, parse)? {
            Some(v) => Ok(v),
            None => {
                self.fail_at(
                    self.section.line,
                    Some(key),
                    format!("missing, required {needed_for}"),
                );
                Err(Bad)
            }
        }
    }
}

/// Checks one ipsec.cfg section; `accepted` are the bundles activated before it (for SPI
/// clashes). Returns the bundle when the section has no error at all.
/// What became of a section.
pub(super) enum Checked {
    Active(Bundle),
    /// Not activated. `Some` when its name, endpoints and selectors are known: that traffic
    /// is then blocked rather than let through in clear (see `Config::failed`).
    Failed(Option<Bundle>),
}

/// A bundle that carries no SAs, only what its selectors cover: for a section with errors.
fn blocking(section: &Section, endpoints: &Result<(Ipv4Addr, Ipv4Addr), Bad>, sel: &Result<Selectors, Bad>) -> Option<Bundle> {
    let (Some(name), Ok((local, remote)), Ok(sel)) = (&section.name, endpoints, sel) else { return None };
    Some(Bundle {
        name: name.clone(),
        line: section.line,
        local: *local,
        remote: *remote,
        mode: sel.mode,
        local_subnet: sel.local_subnet,
        remote_subnet: sel.remote_subnet,
        protocol: sel.protocol,
        local_port: sel.local_port,
        remote_port: sel.remote_port,
        esp: None,
        ah: None,
        ipcomp: false,
        keying: Keying::Manual(SaKeys::default()),
        replay_window: 0,
        udp_encap: false,
    })
}

pub(super) fn check_section(
    section: &Section,
    accepted: &[Bundle],
    diags: &mut Diags,
) -> Checked {
    let mut c = Check::new(section, diags);
    let kind = c
        .optional(Key::Keying, keying_kind)
        .map(|k| k.unwrap_or(KeyingKind::Manual));
    let endpoints = endpoints(&mut c, kind);
    let selectors = selectors(&mut c);
    let protocols = protocols(&mut c, kind);
    let replay_window = c.optional(Key::ReplayWindow, |s| number_in(s, 0, 4096));
    let udp_encap = c.optional(Key::UdpEncap, yes_no).map(|v| v.unwrap_or(false));
    if let (Ok(true), Ok(p)) = (udp_encap, &protocols) {
        if p.esp.is_none() {
            c.fail(Key::UdpEncap, "UDP encapsulation carries ESP: the bundle needs esp".into());
        } else if p.ah.is_some() {
            // RFC 3948 encapsulates ESP only; AH cannot cross the NAT it is meant for.
            c.fail(Key::UdpEncap, "UDP encapsulation is for ESP alone (RFC 3948): remove ah".into());
        }
    }
    let keying = keying(&mut c, kind, protocols);
    if c.failed() || section.poisoned {
        return Checked::Failed(blocking(section, &endpoints, &selectors));
    }
    let blocked = blocking(section, &endpoints, &selectors);
    let (Some(name), Ok((local, remote)), Ok(sel), Ok(p), Ok(replay_window), Ok(keying), Ok(udp_encap)) = (
        section.name.clone(),
        endpoints,
        selectors,
        protocols,
        replay_window,
        keying,
        udp_encap,
    ) else {
        return Checked::Failed(blocked); // a line the lexer refused (duplicate key, empty value)
    };
    let default_window = match keying {
        Keying::Manual(_) => 0,
        Keying::Ike(_) => 64,
    };
    let bundle = Bundle {
        name,
        line: section.line,
        local,
        remote,
        mode: sel.mode,
        local_subnet: sel.local_subnet,
        remote_subnet: sel.remote_subnet,
        protocol: sel.protocol,
        local_port: sel.local_port,
        remote_port: sel.remote_port,
        esp: p.esp,
        ah: p.ah,
        ipcomp: p.ipcomp,
        keying,
        replay_window: replay_window.map_or(default_window, |n| n as u32), // at most 4096
        udp_encap,
    };
    // Only a bundle that would be activated can take an SPI from another.
    manual::spi_clashes(&mut c, &bundle, accepted);
    if c.failed() {
        Checked::Failed(blocked)
    } else {
        Checked::Active(bundle)
    }
}

fn endpoints(c: &mut Check, kind: Result<KeyingKind, Bad>) -> Result<(Ipv4Addr, Ipv4Addr), Bad> {
    let local = c.required(
        Key::Local,
        "in every bundle (this end's address, or 0.0.0.0 for the dynamic one)",
        address,
    );
    let remote = c.required(Key::Remote, "in every bundle (the peer's address)", address);
    if let (Ok(remote), Ok(KeyingKind::Manual)) = (remote, kind) {
        if remote.is_unspecified() {
            c.fail(Key::Remote, "remote = 0.0.0.0 (any peer) needs keying = ike: manual keys are shared with one known peer".into());
        }
    }
    if let (Ok(local), Ok(remote)) = (local, remote) {
        if local == remote && !local.is_unspecified() {
            c.fail(
                Key::Remote,
                format!("remote is the same address as local ({local})"),
            );
        }
    }
    Ok((local?, remote?))
}

struct Selectors {
    mode: Mode,
    local_subnet: Option<Cidr>,
    remote_subnet: Option<Cidr>,
    protocol: Option<u8>,
    local_port: Option<u16>,
    remote_port: Option<u16>,
}

fn selectors(c: &mut Check) -> Result<Selectors, Bad> {
    let mode = c
        .optional(Key::Mode, mode)
        .map(|m| m.unwrap_or(Mode::Transport));
    let local_subnet = c.optional(Key::LocalSubnet, |s| {
        s.parse::<Cidr>().map_err(|e| e.to_string())
    });
    let remote_subnet = c.optional(Key::RemoteSubnet, |s| {
        s.parse::<Cidr>().map_err(|e| e.to_string())
    });
    if mode == Ok(Mode::Transport) {
        for key in [Key::LocalSubnet, Key::RemoteSubnet] {
            if c.entry(key).is_some() {
                c.fail(key, "only with mode = tunnel: transport mode protects the traffic between local and remote themselves".into());
            }
        }
    }
    let protocol = c.optional(Key::Protocol, protocol).map(Option::flatten);
    let local_port = c.optional(Key::LocalPort, port).map(Option::flatten);
    let remote_port = c.optional(Key::RemotePort, port).map(Option::flatten);
    if let Ok(p) = protocol {
        if !matches!(p, Some(PROTO_TCP | PROTO_UDP)) {
            for (key, value) in [(Key::LocalPort, local_port), (Key::RemotePort, remote_port)] {
                if let Ok(Some(_)) = value {
                    c.fail(key, "a port selector needs protocol = tcp or udp".into());
                }
            }
        }
    }
    Ok(Selectors {
        mode: mode?,
        local_subnet: local_subnet?,
        remote_subnet: remote_subnet?,
        protocol: protocol?,
        local_port: local_port?,
        remote_port: remote_port?,
    })
}

#[derive(Debug, Clone, Copy)]
struct Protocols {
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
}

fn protocols(c: &mut Check, kind: Result<KeyingKind, Bad>) -> Result<Protocols, Bad> {
    let esp = c.optional(Key::Esp, esp_transform);
    let ah = c.optional(Key::Ah, |s| {
        IntegAlg::from_name(s).ok_or_else(|| format!("{} is not md5, sha1 or sha256", shown(s)))
    });
    let ipcomp = c.optional(Key::Ipcomp, ipcomp).map(|v| v.unwrap_or(false));
    if let (Ok(None), Ok(None), Ok(false)) = (esp, ah, ipcomp) {
        let header = c.header_line();
        c.fail_at(
            header,
            None,
            "the bundle has no protocol: set at least one of esp, ah, ipcomp".into(),
        );
    }
    if let (Ok(Some(EspTransform::Aead(_))), Ok(KeyingKind::Manual)) = (esp, kind) {
        c.fail(Key::Esp, "AES-GCM needs keying = ike: with static keys a restarted sender would reuse nonces under the same key, which RFC 4106 forbids".into());
    }
    weak_algorithm_warnings(c, esp.ok().flatten(), ah.ok().flatten());
    Ok(Protocols {
        esp: esp?,
        ah: ah?,
        ipcomp: ipcomp?,
    })
}

fn keying(
    c: &mut Check,
    kind: Result<KeyingKind, Bad>,
    protocols: Result<Protocols, Bad>,
) -> Result<Keying, Bad> {
    match kind? {
        KeyingKind::Manual => {
            only_for(c, KeyClass::Ike, "keying = ike");
            // Which keys are needed depends on the protocols: skipped when one was wrong, and
            // for a manual GCM bundle, whose fix (keying = ike) makes every key line wrong.
            let p = protocols?;
            if let Some(EspTransform::Aead(_)) = p.esp {
                return Err(Bad);
            }
            manual::sa_keys(c, p.esp, p.ah, p.ipcomp).map(Keying::Manual)
        }
        KeyingKind::Ike => {
            only_for(
                c,
                KeyClass::Manual,
                "keying = manual (with keying = ike the keying daemon negotiates the SAs)",
            );
            ike::params(c).map(Keying::Ike)
        }
    }
}

/// Checks the key text of `parse_sa_keys`: manual-key names only, AES-GCM allowed.
pub(super) fn check_key_text(
    section: &Section,
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
    diags: &mut Diags,
) -> Option<SaKeys> {
    let mut c = Check::new(section, diags);
    for e in c.entries() {
        if e.key.class() != KeyClass::Manual {
            c.fail(e.key, "only SPI, key and CPI lines (esp_spi_out, ..., ipcomp_cpi_in) belong in a key text".into());
        }
    }
    let keys = manual::sa_keys(&mut c, esp, ah, ipcomp).ok()?;
    (!c.failed() && !section.poisoned).then_some(keys)
}

/// Reports every key of `class` in the section: it belongs to the other keying.
fn only_for(c: &mut Check, class: KeyClass, keying: &str) {
    for e in c.entries() {
        if e.key.class() == class {
            c.fail(e.key, format!("applies only to {keying}"));
        }
    }
}

fn weak_algorithm_warnings(c: &mut Check, esp: Option<EspTransform>, ah: Option<IntegAlg>) {
    if let Some(EspTransform::Cipher { cipher, integ }) = esp {
        match cipher {
            CipherAlg::DesCbc => c.warn(
                Key::Esp,
                "DES is broken (56-bit key, RFC 8221 says MUST NOT): use aes128 or stronger".into(),
            ),
            CipherAlg::Null => c.warn(
                Key::Esp,
                "the null cipher does not encrypt: traffic is only authenticated".into(),
            ),
            _ => {}
        }
        match integ {
            Some(IntegAlg::HmacMd5_96) => c.warn(Key::Esp, "HMAC-MD5 is deprecated (RFC 8221): use sha256 or sha1".into()),
            None if ah.is_none() => c.warn(
                Key::Esp,
                "ESP without integrity and without ah: packets can be altered undetected (RFC 4303 recommends integrity with encryption)".into(),
            ),
            _ => {}
        }
    }
    if ah == Some(IntegAlg::HmacMd5_96) {
        c.warn(
            Key::Ah,
            "HMAC-MD5 is deprecated (RFC 8221): use sha256 or sha1".into(),
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyingKind {
    Manual,
    Ike,
}

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn address(s: &str) -> Parsed<Ipv4Addr> {
    s.parse()
        .map_err(|_| format!("{} is not an IPv4 address (a.b.c.d)", shown(s)))
}

fn keying_kind(s: &str) -> Parsed<KeyingKind> {
    match s.to_ascii_lowercase().as_str() {
        "manual" => Ok(KeyingKind::Manual),
        "ike" => Ok(KeyingKind::Ike),
        _ => Err(format!("{} is not manual or ike", shown(s))),
    }
}

fn mode(s: &str) -> Parsed<Mode> {
    match s.to_ascii_lowercase().as_str() {
        "transport" => Ok(Mode::Transport),
        "tunnel" => Ok(Mode::Tunnel),
        _ => Err(format!("{} is not transport or tunnel", shown(s))),
    }
}

/// None = any.
fn protocol(s: &str) -> Parsed<Option<u8>> {
    match s.to_ascii_lowercase().as_str() {
        "any" => Ok(None),
        "icmp" => Ok(Some(PROTO_ICMP)),
        "tcp" => Ok(Some(PROTO_TCP)),
        "udp" => Ok(Some(PROTO_UDP)),
        _ => number_in(s, 0, 255)
            .map(|n| Some(n as u8)) // at most 255
            .map_err(|_| {
                format!(
                    "{} is not any, icmp, tcp, udp or a protocol number 0-255",
                    shown(s)
                )
            }),
    }
}

/// None = any.
fn port(s: &str) -> Parsed<Option<u16>> {
    if s.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    number_in(s, 0, 65535)
        .map(|n| Some(n as u16)) // at most 65535
        .map_err(|_| format!("{} is not any or a port number 0-65535", shown(s)))
}

fn esp_transform(s: &str) -> Parsed<EspTransform> {
    if let Some(t) = EspTransform::from_name(s) {
        return Ok(t);
    }
    let null_none = s
        .split_once('-')
        .is_some_and(|(c, i)| c.eq_ignore_ascii_case("null") && i.eq_ignore_ascii_case("none"));
    if null_none {
        return Err("null-none would neither encrypt nor authenticate".into());
    }
    Err(format!(
        "{} is not an ESP transform: <cipher>-<integrity> with cipher null, des, 3des, aes128, aes192 or aes256 \
         and integrity md5, sha1, sha256 or none; or aes128gcm16, aes256gcm16",
        shown(s)
    ))
}

fn ipcomp(s: &str) -> Parsed<bool> {
    if s.eq_ignore_ascii_case("deflate") {
        Ok(true)
    } else {
        Err(format!(
            "{} is not deflate (the only IPComp algorithm)",
            shown(s)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_values_are_case_insensitive() {
        assert_eq!(mode("TUNNEL"), Ok(Mode::Tunnel));
        assert_eq!(keying_kind("Ike"), Ok(KeyingKind::Ike));
        assert_eq!(protocol("UDP"), Ok(Some(17)));
        assert_eq!(protocol("Any"), Ok(None));
        assert_eq!(port("ANY"), Ok(None));
        assert_eq!(ipcomp("DEFLATE"), Ok(true));
        assert_eq!(
            esp_transform("AES128-SHA1"),
            Ok(EspTransform::Cipher {
                cipher: CipherAlg::AesCbc128,
                integ: Some(IntegAlg::HmacSha1_96)
            })
        );
    }

    #[test]
    fn numeric_selectors() {
        assert_eq!(protocol("0"), Ok(Some(0)));
        assert_eq!(protocol("0x32"), Ok(Some(50)));
        assert_eq!(protocol("255"), Ok(Some(255)));
        assert!(protocol("256").is_err());
        assert!(protocol("gre").is_err());
        assert_eq!(port("0"), Ok(Some(0)));
        assert_eq!(port("65535"), Ok(Some(65535)));
        assert!(port("65536").is_err());
        assert!(port("-1").is_err());
    }

    #[test]
    fn esp_names() {
        assert_eq!(
            esp_transform("null-none"),
            Err("null-none would neither encrypt nor authenticate".into())
        );
        assert_eq!(
            esp_transform("NULL-None"),
            Err("null-none would neither encrypt nor authenticate".into())
        );
        assert!(esp_transform("aes128")
            .unwrap_err()
            .contains("not an ESP transform"));
        assert!(esp_transform("aes128-sha384").is_err());
        assert_eq!(
            esp_transform("aes256gcm16"),
            Ok(EspTransform::Aead(crate::crypto::AeadAlg::AesGcm16_256))
        );
        assert_eq!(
            esp_transform("3des-none"),
            Ok(EspTransform::Cipher {
                cipher: CipherAlg::TripleDesCbc,
                integ: None
            })
        );
    }
}
