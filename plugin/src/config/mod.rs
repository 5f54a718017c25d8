//! `ipsec.cfg` → SA bundles (SPEC §2; the administrator's reference is `docs/ipsec-cfg.md`).
//!
//! Parsing never stops at the first problem: every error of a file is collected with its
//! file, line and key, a bundle with an error is left out of [`Config::bundles`], and the
//! others are kept in file order, because that order is the order of processing.
//!
//! Layout: `lexer` turns lines into sections of known keys, `bundle` checks one section and
//! builds its [`Bundle`], `manual` and `ike` check the keying keys, `value` and `cidr` hold
//! the value syntax.

#![deny(unsafe_code)]

mod bundle;
mod cidr;
mod ike;
mod lexer;
mod manual;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::crypto::{EspTransform, IntegAlg};

pub use cidr::Cidr;
pub use ike::{DhGroup, IkeCipher, IkeHash, IkeProposal};
pub use value::ValueError;

/// Larger files are refused whole: a real ipsec.cfg is a few kilobytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// Longer lines are an error (the longest legitimate line, a 3DES key, is under 100 bytes).
pub const MAX_LINE_BYTES: usize = 4096;
/// Errors (and, separately, warnings) listed per file; the rest are counted in one last
/// diagnostic, so that a file of garbage cannot flood ipsec.log and the output window.
/// Which bundles are activated does not depend on this cap.
pub const MAX_DIAGNOSTICS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Transport,
    Tunnel,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Transport => "transport",
            Mode::Tunnel => "tunnel",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspKeys {
    pub spi: u32,
    /// Empty for the null cipher; key followed by the 4-byte salt for AES-GCM.
    pub enc_key: Vec<u8>,
    /// Empty when the transform has no separate integrity algorithm.
    pub auth_key: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AhKeys {
    pub spi: u32,
    pub key: Vec<u8>,
}

/// Keys of one direction of a bundle; each Some exactly when the bundle has that protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirectionKeys {
    pub esp: Option<EspKeys>,
    pub ah: Option<AhKeys>,
    pub ipcomp_cpi: Option<u16>,
}

/// `outbound` is what this end sends with, `inbound` what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SaKeys {
    pub outbound: DirectionKeys,
    pub inbound: DirectionKeys,
}

/// What the keying daemon is asked to negotiate for a `keying = ike` bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeParams {
    /// Phase 1 proposals, in order of preference.
    pub proposals: Vec<IkeProposal>,
    pub pfs: bool,
    /// IPsec SA lifetime.
    pub lifetime_secs: u64,
    /// ISAKMP (phase 1) SA lifetime.
    pub ike_lifetime_secs: u64,
    pub rekeymargin_secs: u64,
    pub rekeyfuzz_percent: u32,
    /// 0 = try forever.
    pub keyingtries: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keying {
    Manual(SaKeys),
    Ike(IkeParams),
}

/// One `[name]` section: an SA bundle and the selectors of the traffic it protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub name: String,
    /// Line of the `[name]` header.
    pub line: u32,
    /// 0.0.0.0 = the dynamic address the host reports at connect.
    pub local: Ipv4Addr,
    /// 0.0.0.0 = any peer (keying = ike only).
    pub remote: Ipv4Addr,
    pub mode: Mode,
    /// None = local/32 (follows the dynamic address).
    pub local_subnet: Option<Cidr>,
    /// None = remote/32.
    pub remote_subnet: Option<Cidr>,
    /// None = any; icmp=1 tcp=6 udp=17.
    pub protocol: Option<u8>,
    /// None = any.
    pub local_port: Option<u16>,
    pub remote_port: Option<u16>,
    pub esp: Option<EspTransform>,
    pub ah: Option<IntegAlg>,
    pub ipcomp: bool,
    pub keying: Keying,
    /// 0 = off.
    pub replay_window: u32,
    /// ESP in UDP, port 4500 both ways (RFC 3948): for paths through NAT and for peers
    /// that always encapsulate.
    pub udp_encap: bool,
}

/// An error or warning about a config file (or a key text given to [`parse_sa_keys`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem is the file as a whole (too large, for example).
    pub line: u32,
    pub key: Option<String>,
    pub bundle: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The bundles without errors, in file order.
    pub bundles: Vec<Bundle>,
    /// Sections with errors whose name, endpoints and selectors are known, as bundles with
    /// no protocols: they are not activated, but the traffic they would protect is blocked
    /// instead of sent in clear (fail closed). `line` tells their place in file order.
    pub failed: Vec<Bundle>,
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// Parses the text of an `ipsec.cfg`; `file` is the name diagnostics carry.
pub fn parse(text: &str, file: &str) -> Config {
    parse_bytes(text.as_bytes(), file)
}

/// Reads and parses an `ipsec.cfg`. Only failing to read is an io error; content problems
/// (too large, not UTF-8, ...) are diagnostics in the returned [`Config`].
pub fn load(path: &Path) -> std::io::Result<Config> {
    let mut bytes = Vec::new();
    // One byte more than the limit tells "too large" apart from "exactly at the limit"
    // without reading an arbitrarily large file into memory.
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(parse_bytes(&bytes, &path.display().to_string()))
}

/// Parses `key = value` lines (the manual-key names of SPEC §2, no section header) for a
/// bundle with the given protocols — used to install keys for `keying = ike` bundles from
/// outside (AES-GCM allowed here, unlike in manual bundles). Same validation as in ipsec.cfg.
pub fn parse_sa_keys(
    text: &str,
    source: &str,
    esp: Option<EspTransform>,
    ah: Option<IntegAlg>,
    ipcomp: bool,
) -> Result<SaKeys, Vec<Diagnostic>> {
    let mut diags = Diags::new(source);
    let keys = if check_file_size(text.as_bytes(), &mut diags) {
        let sections = lexer::lex(text.as_bytes(), lexer::Layout::KeysOnly, &mut diags);
        sections
            .first()
            .and_then(|s| bundle::check_key_text(s, esp, ah, ipcomp, &mut diags))
    } else {
        None
    };
    match keys {
        Some(keys) if diags.errors.is_empty() => Ok(keys),
        _ => Err(diags.into_sorted().errors),
    }
}

fn parse_bytes(bytes: &[u8], file: &str) -> Config {
    let mut diags = Diags::new(file);
    let mut bundles: Vec<Bundle> = Vec::new();
    let mut failed: Vec<Bundle> = Vec::new();
    if check_file_size(bytes, &mut diags) {
        for section in lexer::lex(bytes, lexer::Layout::Sections, &mut diags) {
            match bundle::check_section(&section, &bundles, &mut diags) {
                bundle::Checked::Active(b) => bundles.push(b),
                bundle::Checked::Failed(Some(b)) => failed.push(b),
                bundle::Checked::Failed(None) => {}
            }
        }
    }
    let diags = diags.into_sorted();
    Config {
        bundles,
        failed,
        errors: diags.errors,
        warnings: diags.warnings,
    }
}

fn check_file_size(bytes: &[u8], diags: &mut Diags) -> bool {
    if bytes.len() > MAX_FILE_BYTES {
        diags.error(
            0,
            None,
            None,
            format!("file is larger than {MAX_FILE_BYTES} bytes; nothing loaded"),
        );
        return false;
    }
    true
}

/// Collects the diagnostics of one file.
struct Diags {
    file: String,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
    errors_not_listed: usize,
    warnings_not_listed: usize,
}

impl Diags {
    fn new(file: &str) -> Diags {
        Diags {
            file: file.to_owned(),
            errors: Vec::new(),
            warnings: Vec::new(),
            errors_not_listed: 0,
            warnings_not_listed: 0,
        }
    }

    fn make(
        &self,
        line: u32,
        key: Option<&str>,
        bundle: Option<&str>,
        message: String,
    ) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line,
            key: key.map(str::to_owned),
            bundle: bundle.map(str::to_owned),
            message,
        }
    }

    fn error(&mut self, line: u32, key: Option<&str>, bundle: Option<&str>, message: String) {
        if self.errors.len() < MAX_DIAGNOSTICS {
            let d = self.make(line, key, bundle, message);
            self.errors.push(d);
        } else {
            self.errors_not_listed += 1;
        }
    }

    fn warning(&mut self, line: u32, key: Option<&str>, bundle: Option<&str>, message: String) {
        if self.warnings.len() < MAX_DIAGNOSTICS {
            let d = self.make(line, key, bundle, message);
            self.warnings.push(d);
        } else {
            self.warnings_not_listed += 1;
        }
    }

    /// Reading order: checks run section by section and key by key, not line by line.
    fn into_sorted(mut self) -> Diags {
        self.errors.sort_by_key(|d| d.line);
        self.warnings.sort_by_key(|d| d.line);
        let more = |n: usize, what: &str| format!("{n} more {what} not listed");
        if self.errors_not_listed > 0 {
            let d = self.make(0, None, None, more(self.errors_not_listed, "errors"));
            self.errors.push(d);
        }
        if self.warnings_not_listed > 0 {
            let d = self.make(0, None, None, more(self.warnings_not_listed, "warnings"));
            self.warnings.push(d);
        }
        self
    }
}
