//! Value syntax shared by several keys: numbers, hex keys, durations, percentages, yes/no.
//! Each parser returns the message the administrator reads; the caller adds file, line, key.

use std::fmt;

/// A malformed value (the `Err` of the public `FromStr` impls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError(pub(super) String);

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl From<String> for ValueError {
    fn from(s: String) -> ValueError {
        ValueError(s)
    }
}

pub(super) type Parsed<T> = Result<T, String>;

/// Quotes input for a message: control characters escaped (they may come from a corrupt
/// file and end up in a log line), long values cut.
pub(super) fn shown(s: &str) -> String {
    const MAX_CHARS: usize = 40;
    let mut out = String::from("'");
    for (i, c) in s.chars().enumerate() {
        if i == MAX_CHARS {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('\'');
    out
}

fn hex_prefixed(s: &str) -> Option<&str> {
    match s.get(..2) {
        Some(p) if p.eq_ignore_ascii_case("0x") => s.get(2..),
        _ => None,
    }
}

/// A decimal or `0x` hex number.
pub(super) fn number(s: &str) -> Parsed<u64> {
    let (digits, radix) = match hex_prefixed(s) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(format!(
            "{} is not a number (decimal, or hex starting with 0x)",
            shown(s)
        ));
    }
    u64::from_str_radix(digits, radix).map_err(|_| format!("{} is too large", shown(s)))
}

pub(super) fn number_in(s: &str, min: u64, max: u64) -> Parsed<u64> {
    let n = number(s)?;
    if n < min || n > max {
        return Err(format!("{n} is out of range {min}-{max}"));
    }
    Ok(n)
}

/// Key material: `0x` then an even number of hex digits, `_` allowed anywhere as a separator.
pub(super) fn hex_key(s: &str) -> Parsed<Vec<u8>> {
    let Some(body) = hex_prefixed(s) else {
        return Err("a key is written in hex starting with 0x".to_owned());
    };
    let mut digits = Vec::with_capacity(body.len());
    for c in body.chars().filter(|&c| c != '_') {
        match c.to_digit(16) {
            // to_digit(16) is below 16, so the cast is lossless.
            Some(d) => digits.push(d as u8),
            None => return Err(format!("{} is not a hex digit", shown(&c.to_string()))),
        }
    }
    if digits.is_empty() {
        return Err("the key has no hex digits after 0x".to_owned());
    }
    if digits.len() % 2 != 0 {
        return Err(format!(
            "odd number of hex digits ({}): a key is whole bytes",
            digits.len()
        ));
    }
    Ok(digits.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// A duration in seconds: a decimal number with an optional unit `s`, `m`, `h` or `d`.
pub(super) fn duration(s: &str) -> Parsed<u64> {
    let bad = || {
        format!(
            "{} is not a duration (like 3600, 3600s, 60m, 8h, 1d)",
            shown(s)
        )
    };
    let (digits, unit_secs) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let unit = match c.to_ascii_lowercase() {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad()),
            };
            (&s[..i], unit)
        }
        _ => (s, 1),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .ok_or_else(|| format!("{} is too long", shown(s)))
}

/// A percentage written `N%`.
pub(super) fn percent(s: &str) -> Parsed<u32> {
    let digits = s
        .strip_suffix('%')
        .ok_or_else(|| format!("{} is not a percentage (like 100%)", shown(s)))?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{} is not a percentage (like 100%)", shown(s)));
    }
    digits
        .parse::<u32>()
        .map_err(|_| format!("{} is too large", shown(s)))
}

pub(super) fn yes_no(s: &str) -> Parsed<bool> {
    if s.eq_ignore_ascii_case("yes") {
        Ok(true)
    } else if s.eq_ignore_ascii_case("no") {
        Ok(false)
    } else {
        Err(format!("{} is not yes or no", shown(s)))
    }
}

/// Seconds as the administrator would write them back: `8h`, `90m`, `3601s`.
pub(super) fn show_secs(secs: u64) -> String {
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(len) {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_decimal_and_hex() {
        assert_eq!(number("4096"), Ok(4096));
        assert_eq!(number("0x1000"), Ok(0x1000));
        assert_eq!(number("0XfF"), Ok(255));
        assert_eq!(number("18446744073709551615"), Ok(u64::MAX));
        for bad in [
            "", "0x", "-1", "+1", "1.5", "12a", "0x1g", "1_000", " 1", "é",
        ] {
            assert!(number(bad).is_err(), "{bad:?}");
        }
        assert!(number("18446744073709551616")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(
            number_in("4097", 0, 4096),
            Err("4097 is out of range 0-4096".to_owned())
        );
    }

    #[test]
    fn hex_keys_with_separators() {
        assert_eq!(
            hex_key("0x0123_4567_89ab_CDEF"),
            Ok(vec![0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])
        );
        assert_eq!(hex_key("0X_ff_"), Ok(vec![0xff]));
        assert!(hex_key("0x").unwrap_err().contains("no hex digits"));
        assert!(hex_key("0x___").unwrap_err().contains("no hex digits"));
        assert!(hex_key("0x123").unwrap_err().contains("odd number"));
        assert!(hex_key("0x12 34").is_err());
        assert!(hex_key("0x12g4").unwrap_err().contains("'g'"));
        assert!(hex_key("1234").unwrap_err().contains("0x"));
        assert!(hex_key("0x12é4").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration("3600"), Ok(3600));
        assert_eq!(duration("3600s"), Ok(3600));
        assert_eq!(duration("9m"), Ok(540));
        assert_eq!(duration("8H"), Ok(28_800));
        assert_eq!(duration("1d"), Ok(86_400));
        assert_eq!(duration("0"), Ok(0));
        for bad in ["", "h", "8x", "8 h", "-1h", "1.5h", "8hh", "éh"] {
            assert!(duration(bad).is_err(), "{bad:?}");
        }
        assert!(duration("18446744073709551615d")
            .unwrap_err()
            .contains("too long"));
        assert_eq!(show_secs(28_800), "8h");
        assert_eq!(show_secs(540), "9m");
        assert_eq!(show_secs(3601), "3601s");
        assert_eq!(show_secs(0), "0s");
    }

    #[test]
    fn percent_and_yes_no() {
        assert_eq!(percent("100%"), Ok(100));
        assert_eq!(percent("0%"), Ok(0));
        assert!(percent("100").is_err());
        assert!(percent("%").is_err());
        assert!(percent("-5%").is_err());
        assert_eq!(yes_no("YES"), Ok(true));
        assert_eq!(yes_no("no"), Ok(false));
        assert!(yes_no("true").is_err());
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("a\u{1b}b"), "'a\\u{1b}b'");
        assert_eq!(shown(&"x".repeat(50)), format!("'{}...'", "x".repeat(40)));
    }
}
