//! Lines → sections of known `key = value` entries. Everything wrong at this level (bad
//! header, unknown or duplicate key, missing `=`, empty value, overlong or non-UTF-8 line)
//! is reported here; the bundle checks then see only well-formed entries.

use std::collections::HashMap;

use super::value::shown;
use super::{Diags, MAX_LINE_BYTES};

/// Direction of a manually keyed SA: `out` is what this end sends with, `in` what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    Out,
    In,
}

/// The keys of ipsec.cfg (SPEC §2).
#[allow(clippy::enum_variant_names)] // EspEncKey etc. spell the key names esp_enc_key_*
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Local,
    Remote,
    Mode,
    LocalSubnet,
    RemoteSubnet,
    Protocol,
    LocalPort,
    RemotePort,
    Esp,
    Ah,
    Ipcomp,
    Keying,
    ReplayWindow,
    UdpEncap,
    EspSpi(Dir),
    EspEncKey(Dir),
    EspAuthKey(Dir),
    AhSpi(Dir),
    AhKey(Dir),
    IpcompCpi(Dir),
    Ike,
    Pfs,
    Lifetime,
    IkeLifetime,
    RekeyMargin,
    RekeyFuzz,
    KeyingTries,
}

/// Which keying a key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyClass {
    Bundle,
    Manual,
    Ike,
}

impl Key {
    const ALL: [Key; 33] = [
        Key::Local,
        Key::Remote,
        Key::Mode,
        Key::LocalSubnet,
        Key::RemoteSubnet,
        Key::Protocol,
        Key::LocalPort,
        Key::RemotePort,
        Key::Esp,
        Key::Ah,
        Key::Ipcomp,
        Key::Keying,
        Key::ReplayWindow,
        Key::UdpEncap,
        Key::EspSpi(Dir::Out),
        Key::EspSpi(Dir::In),
        Key::EspEncKey(Dir::Out),
        Key::EspEncKey(Dir::In),
        Key::EspAuthKey(Dir::Out),
        Key::EspAuthKey(Dir::In),
        Key::AhSpi(Dir::Out),
        Key::AhSpi(Dir::In),
        Key::AhKey(Dir::Out),
        Key::AhKey(Dir::In),
        Key::IpcompCpi(Dir::Out),
        Key::IpcompCpi(Dir::In),
        Key::Ike,
        Key::Pfs,
        Key::Lifetime,
        Key::IkeLifetime,
        Key::RekeyMargin,
        Key::RekeyFuzz,
        Key::KeyingTries,
    ];

    pub(super) fn name(self) -> &'static str {
        use Dir::{In, Out};
        match self {
            Key::Local => "local",
            Key::Remote => "remote",
            Key::Mode => "mode",
            Key::LocalSubnet => "local_subnet",
            Key::RemoteSubnet => "remote_subnet",
            Key::Protocol => "protocol",
            Key::LocalPort => "local_port",
            Key::RemotePort => "remote_port",
            Key::Esp => "esp",
            Key::Ah => "ah",
            Key::Ipcomp => "ipcomp",
            Key::Keying => "keying",
            Key::ReplayWindow => "replay_window",
            Key::UdpEncap => "udp_encap",
            Key::EspSpi(Out) => "esp_spi_out",
            Key::EspSpi(In) => "esp_spi_in",
            Key::EspEncKey(Out) => "esp_enc_key_out",
            Key::EspEncKey(In) => "esp_enc_key_in",
            Key::EspAuthKey(Out) => "esp_auth_key_out",
            Key::EspAuthKey(In) => "esp_auth_key_in",
            Key::AhSpi(Out) => "ah_spi_out",
            Key::AhSpi(In) => "ah_spi_in",
            Key::AhKey(Out) => "ah_key_out",
            Key::AhKey(In) => "ah_key_in",
            Key::IpcompCpi(Out) => "ipcomp_cpi_out",
            Key::IpcompCpi(In) => "ipcomp_cpi_in",
            Key::Ike => "ike",
            Key::Pfs => "pfs",
            Key::Lifetime => "lifetime",
            Key::IkeLifetime => "ike_lifetime",
            Key::RekeyMargin => "rekeymargin",
            Key::RekeyFuzz => "rekeyfuzz",
            Key::KeyingTries => "keyingtries",
        }
    }

    pub(super) fn from_name(name: &str) -> Option<Key> {
        Key::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
    }

    pub(super) fn class(self) -> KeyClass {
        match self {
            Key::EspSpi(_)
            | Key::EspEncKey(_)
            | Key::EspAuthKey(_)
            | Key::AhSpi(_)
            | Key::AhKey(_)
            | Key::IpcompCpi(_) => KeyClass::Manual,
            Key::Ike
            | Key::Pfs
            | Key::Lifetime
            | Key::IkeLifetime
            | Key::RekeyMargin
            | Key::RekeyFuzz
            | Key::KeyingTries => KeyClass::Ike,
            _ => KeyClass::Bundle,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Entry<'t> {
    pub key: Key,
    /// Trimmed, comment removed, never empty.
    pub value: &'t str,
    pub line: u32,
}

#[derive(Debug)]
pub(super) struct Section<'t> {
    /// None when the header itself was bad (the section is still checked, never activated).
    pub name: Option<String>,
    /// Line of the header; 0 for the implicit section of a key text.
    pub line: u32,
    /// At most one entry per key, in file order.
    pub entries: Vec<Entry<'t>>,
    /// Keys whose line had an error here, so later checks do not also call them missing.
    pub bad_keys: Vec<Key>,
    /// A line of the section had an error that belongs to no key (a line too long, ...).
    pub poisoned: bool,
}

impl<'t> Section<'t> {
    fn new(name: Option<String>, line: u32) -> Section<'t> {
        Section {
            name,
            line,
            entries: Vec::new(),
            bad_keys: Vec::new(),
            poisoned: false,
        }
    }

    pub(super) fn entry(&self, key: Key) -> Option<Entry<'t>> {
        self.entries.iter().find(|e| e.key == key).copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// ipsec.cfg: `[name]` sections.
    Sections,
    /// The key text of `parse_sa_keys`: one implicit section, headers not allowed.
    KeysOnly,
}

pub(super) fn lex<'t>(bytes: &'t [u8], layout: Layout, diags: &mut Diags) -> Vec<Section<'t>> {
    // Editors on Windows may start the file with a byte-order mark.
    let bytes = bytes
        .strip_prefix(b"\xEF\xBB\xBF".as_slice())
        .unwrap_or(bytes);
    let mut sections = Vec::new();
    // Lowercased name → header line; a map, since a hostile file can hold 200k headers.
    let mut names: HashMap<String, u32> = HashMap::new();
    if layout == Layout::KeysOnly {
        sections.push(Section::new(None, 0));
    }
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix(b"\r".as_slice()).unwrap_or(raw);
        let current = sections.last_mut();
        if raw.len() > MAX_LINE_BYTES {
            line_error(
                current,
                line,
                diags,
                format!(
                    "line is {} bytes long, the limit is {MAX_LINE_BYTES}",
                    raw.len()
                ),
            );
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            line_error(current, line, diags, "line is not valid UTF-8".to_owned());
            continue;
        };
        let text = text.split(';').next().unwrap_or("").trim();
        if text.is_empty() {
            continue;
        }
        if let Some(rest) = text.strip_prefix('[') {
            if layout == Layout::KeysOnly {
                line_error(
                    current,
                    line,
                    diags,
                    "a key text has no [section] headers".to_owned(),
                );
            } else {
                let mut section = Section::new(header_name(rest, line, diags), line);
                if let Some(name) = &section.name {
                    // Names only label logs and dumps, where [VPN] and [vpn] would look like
                    // one bundle: so they must differ by more than case.
                    if let Some(first) = names.get(&name.to_ascii_lowercase()) {
                        let message = format!(
                            "duplicate section name (first at line {first}; names are compared ignoring case)"
                        );
                        diags.error(line, None, Some(name), message);
                        section.poisoned = true;
                    } else {
                        names.insert(name.to_ascii_lowercase(), line);
                    }
                }
                sections.push(section);
            }
            continue;
        }
        key_line(current, text, line, diags);
    }
    sections
}

fn line_error(section: Option<&mut Section>, line: u32, diags: &mut Diags, message: String) {
    let bundle = section.as_ref().and_then(|s| s.name.clone());
    diags.error(line, None, bundle.as_deref(), message);
    if let Some(s) = section {
        s.poisoned = true;
    }
}

/// The name of a `[name]` header (`rest` is what follows `[`), or None after reporting why
/// it is not one.
fn header_name(rest: &str, line: u32, diags: &mut Diags) -> Option<String> {
    let problem = match rest.split_once(']') {
        None => "section header has no closing ']'".to_owned(),
        Some((_, after)) if !after.trim().is_empty() => {
            format!(
                "unexpected {} after the section header",
                shown(after.trim())
            )
        }
        Some((inner, _)) => {
            let name = inner.trim();
            if name.is_empty() {
                "empty section name".to_owned()
            } else if name.chars().any(|c| c.is_control() || c == '[') {
                format!(
                    "section name {} has a control character or '['",
                    shown(name)
                )
            } else {
                return Some(name.to_owned());
            }
        }
    };
    diags.error(line, None, None, problem);
    None
}

fn key_line<'t>(section: Option<&mut Section<'t>>, text: &'t str, line: u32, diags: &mut Diags) {
    let bundle = section.as_ref().and_then(|s| s.name.clone());
    let bundle = bundle.as_deref();
    let Some((raw_key, raw_value)) = text.split_once('=') else {
        let key = is_identifier(text).then_some(text);
        diags.error(
            line,
            key,
            bundle,
            "missing '=' (expected key = value)".to_owned(),
        );
        poison(section);
        return;
    };
    let raw_key = raw_key.trim();
    let value = raw_value.trim();
    let Some(section) = section else {
        let key = is_identifier(raw_key).then_some(raw_key);
        diags.error(
            line,
            key,
            None,
            "key outside any section: start a bundle with [name] first".to_owned(),
        );
        return;
    };
    if raw_key.is_empty() {
        diags.error(line, None, bundle, "missing key name before '='".to_owned());
        section.poisoned = true;
        return;
    }
    let Some(key) = Key::from_name(raw_key) else {
        let shown_key = if is_identifier(raw_key) {
            raw_key.to_owned()
        } else {
            shown(raw_key)
        };
        diags.error(line, Some(&shown_key), bundle, "unknown key".to_owned());
        section.poisoned = true;
        return;
    };
    if let Some(first) = section.entry(key) {
        diags.error(
            line,
            Some(key.name()),
            bundle,
            format!("duplicate key (first at line {})", first.line),
        );
        section.bad_keys.push(key);
        return;
    }
    if value.is_empty() {
        diags.error(line, Some(key.name()), bundle, "empty value".to_owned());
        section.bad_keys.push(key);
        return;
    }
    section.entries.push(Entry { key, value, line });
}

fn poison(section: Option<&mut Section>) {
    if let Some(s) = section {
        s.poisoned = true;
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex_text(text: &str) -> (Vec<Section<'_>>, Diags) {
        let mut diags = Diags::new("t.cfg");
        let sections = lex(text.as_bytes(), Layout::Sections, &mut diags);
        (sections, diags)
    }

    #[test]
    fn every_key_name_round_trips_case_insensitively() {
        for key in Key::ALL {
            assert_eq!(Key::from_name(key.name()), Some(key));
            assert_eq!(Key::from_name(&key.name().to_ascii_uppercase()), Some(key));
        }
        assert_eq!(Key::from_name("esp_spi"), None);
    }

    #[test]
    fn comments_blank_lines_crlf_and_bom() {
        let text = "\u{feff}; header comment\r\n\r\n[a] ; trailing\r\n  LOCAL = 10.0.0.1 ; me\r\n\tremote=10.0.0.2\r\n";
        let (sections, diags) = lex_text(text);
        assert!(diags.errors.is_empty(), "{:?}", diags.errors);
        assert_eq!(sections.len(), 1);
        let s = &sections[0];
        assert_eq!((s.name.as_deref(), s.line), (Some("a"), 3));
        assert_eq!(
            s.entry(Key::Local).map(|e| (e.value, e.line)),
            Some(("10.0.0.1", 4))
        );
        assert_eq!(
            s.entry(Key::Remote).map(|e| (e.value, e.line)),
            Some(("10.0.0.2", 5))
        );
    }

    #[test]
    fn section_names_keep_case_and_are_trimmed() {
        let (sections, diags) = lex_text("[ Site-A to B ]\n[x]");
        assert!(diags.errors.is_empty());
        assert_eq!(sections[0].name.as_deref(), Some("Site-A to B"));
    }

    #[test]
    fn bad_headers() {
        for (text, needle) in [
            ("[abc", "no closing"),
            ("[]", "empty section name"),
            ("[  ]", "empty section name"),
            ("[a]b]", "unexpected 'b]'"),
            ("[a] x", "unexpected 'x'"),
            ("[a\u{7}b]", "control character"),
            ("[a[b]", "'['"),
        ] {
            let (sections, diags) = lex_text(text);
            assert_eq!(diags.errors.len(), 1, "{text:?}");
            assert!(
                diags.errors[0].message.contains(needle),
                "{text:?}: {}",
                diags.errors[0].message
            );
            assert_eq!(diags.errors[0].line, 1);
            assert_eq!(sections[0].name, None, "{text:?}");
        }
    }

    #[test]
    fn duplicate_section_names_ignore_case() {
        let (sections, diags) = lex_text("[vpn]\n[other]\n[VPN]\n");
        assert_eq!(diags.errors.len(), 1);
        let e = &diags.errors[0];
        assert_eq!((e.line, e.bundle.as_deref()), (3, Some("VPN")));
        assert!(e.message.contains("first at line 1"));
        assert!(sections[2].poisoned && !sections[0].poisoned);
        assert_eq!(
            sections[2].name.as_deref(),
            Some("VPN"),
            "kept to label its other errors"
        );
    }

    #[test]
    fn line_level_errors_name_line_and_key() {
        let text = "local = 1.2.3.4\n[a]\nlocal\nfoo = 1\nremote =\nlocal = 1.1.1.1\nlocal = 2.2.2.2\n= 5\n";
        let (sections, diags) = lex_text(text);
        let got: Vec<_> = diags
            .errors
            .iter()
            .map(|d| (d.line, d.key.as_deref(), d.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    Some("local"),
                    "key outside any section: start a bundle with [name] first"
                ),
                (3, Some("local"), "missing '=' (expected key = value)"),
                (4, Some("foo"), "unknown key"),
                (5, Some("remote"), "empty value"),
                (7, Some("local"), "duplicate key (first at line 6)"),
                (8, None, "missing key name before '='"),
            ]
        );
        assert!(diags.errors[1..]
            .iter()
            .all(|d| d.bundle.as_deref() == Some("a")));
        let s = &sections[0];
        assert!(s.poisoned);
        assert_eq!(s.entry(Key::Local).map(|e| e.value), Some("1.1.1.1"));
        assert_eq!(s.bad_keys, [Key::Remote, Key::Local]);
    }

    #[test]
    fn overlong_and_non_utf8_lines_poison_their_section() {
        let long = format!("[a]\nlocal = {}\n[b]\n", "1".repeat(MAX_LINE_BYTES));
        let (sections, diags) = lex_text(&long);
        assert_eq!(diags.errors.len(), 1);
        assert_eq!(
            (diags.errors[0].line, diags.errors[0].bundle.as_deref()),
            (2, Some("a"))
        );
        assert!(sections[0].poisoned && !sections[1].poisoned);

        let mut diags = Diags::new("t.cfg");
        let sections = lex(b"[a]\n; caf\xe9\n", Layout::Sections, &mut diags);
        assert_eq!(diags.errors[0].line, 2);
        assert!(diags.errors[0].message.contains("UTF-8"));
        assert!(sections[0].poisoned);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_fine() {
        let text = format!("[a]\n;{}\n", "x".repeat(MAX_LINE_BYTES - 1));
        let (_, diags) = lex_text(&text);
        assert!(diags.errors.is_empty());
    }

    #[test]
    fn key_text_layout_refuses_headers() {
        let mut diags = Diags::new("keys");
        let sections = lex(b"[a]\nesp_spi_in = 0x1000\n", Layout::KeysOnly, &mut diags);
        assert_eq!(sections.len(), 1);
        assert_eq!(diags.errors[0].line, 1);
        assert_eq!(
            sections[0].entry(Key::EspSpi(Dir::In)).map(|e| e.line),
            Some(2)
        );
    }
}
