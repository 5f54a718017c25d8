//! `isecrets.cfg`: the pre-shared keys of the keying daemon (SPEC §3), in the format of
//! FreeS/WAN Pluto's `ipsec.secrets(5)`.
//!
//! ```text
//! # this gateway and its peer
//! 192.0.2.1 198.51.100.2 : PSK "shared by two hosts"
//! # an entry may go on over indented lines
//! 192.0.2.1 gw.example.net
//!     203.0.113.7 : PSK 0x6a8f_21c4_55e0_9b3d
//! 192.0.2.1 0.0.0.0 "road warriors (old form: no colon, no PSK)"
//! include more.secrets
//! ```
//!
//! Syntax, as FreeS/WAN documents it, and what we decided where it leaves room:
//! - An entry (or an `include`) starts in column 1; its continuation lines are indented.
//!   Lines that are blank or hold only a comment do not end an entry (FreeS/WAN's records
//!   are token sequences whose first token, and only that, is in column 1).
//! - `#` at the start of a line or after whitespace starts a comment to the end of the line;
//!   inside a quoted secret it is part of the secret.
//! - An entry is a list of indices, then the secret: `: PSK "secret"` (FreeS/WAN's form;
//!   `PSK` in any case; the colon may be glued to the last index, as in `10.1.0.1:`), or
//!   just `"secret"` (the older form that FreeS/WAN still accepts and SPEC §3 describes).
//!   An entry with no index (`: PSK "x"`) is a default for any pair of endpoints. Other
//!   kinds of secret (`: RSA {...}`) are an error: this daemon authenticates with PSKs only.
//! - A secret is a double-quoted string on one line, in which `\"` and `\\` stand for `"`
//!   and `\` (an extension: FreeS/WAN's strings cannot hold a `"`; any other backslash is
//!   kept as it is, so FreeS/WAN secrets with backslashes mean the same here), or `0x` hex
//!   (FreeS/WAN's `ttodata` form; `_` separators allowed, whole bytes). Empty secrets and
//!   secrets over [`MAX_SECRET_BYTES`] are refused.
//! - An index is a dotted quad, `%any` (= `0.0.0.0`), a host name (kept as a string: the
//!   daemon resolves it, through the closure given to [`Secrets::find_with`]), or `@name`,
//!   a FreeS/WAN FQDN identity, which is kept but never matches an address (Main Mode with
//!   PSKs looks the secret up by IP address, before any ID payload is decrypted).
//! - `include FILE` (one file, no globbing) reads FILE, relative to the directory of the
//!   including file, in place. Includes nest at most [`MAX_INCLUDE_DEPTH`] deep; a file that
//!   includes itself, directly or not, is an error.
//! - Any error rejects the whole load (a daemon keeps its previous secrets on a failed
//!   reload rather than run with half a file). Errors name file and line (and column),
//!   never the text of the file, so that a misplaced secret cannot reach a log.
//!
//! Matching ([`Secrets::find_with`]): for a connection between `local` (this end, as used
//! now) and `remote`, every entry gets a rank, and the first entry of the highest rank in
//! file order (includes in place) is used:
//! 5. an index matches `local` and an index matches `remote` exactly ("the first entry
//!    listing both endpoints is used", SPEC §3);
//! 4. an index matches `local` and an index is `0.0.0.0` (road warrior: any peer; an exact
//!    entry for the peer wins over it, as in Pluto, which looks a road warrior's secret up
//!    under 0.0.0.0 only when there is no entry for its address);
//! 3. the entry has a single index and it matches `local` (FreeS/WAN: "an entry with one
//!    index will match a host and peer if the index matches the host's ID");
//! 2. the entry has a single index and it matches `remote` exactly (our addition, so that
//!    a lone peer address also works; FreeS/WAN would not match such an entry);
//! 1. the entry has no index, or only `0.0.0.0` (a default for everything).
//!
//! An index matches `local` when it is that address, a host name resolving to it, or
//! `127.0.0.1` while `local` is the host's current dynamic address (`dynamic_local`).
//! `0.0.0.0` never matches `local`. A multi-index entry that lists only one end does not
//! match (as in Pluto: a PSK is shared by exactly the endpoints it lists).

#![deny(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// One secrets file larger than this is refused (real ones are a few kilobytes).
pub const MAX_FILE_BYTES: usize = 1 << 20;
/// All files of one load together, includes counted.
pub const MAX_TOTAL_BYTES: usize = 4 << 20;
/// Nesting depth of `include`: the top file includes at depth 1.
pub const MAX_INCLUDE_DEPTH: usize = 10;
/// A PSK longer than this is surely a mistake (an unterminated multi-line paste).
pub const MAX_SECRET_BYTES: usize = 1024;

/// A pre-shared key. Debug never shows it; its bytes are overwritten when it is dropped.
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}

/// Overwrites key material before its memory is freed. Without `unsafe` there is no
/// volatile write, so `black_box` keeps the compiler from dropping the stores as dead.
fn wipe(bytes: &mut Vec<u8>) {
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut *bytes);
}

/// What an entry lists its secret under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Index {
    /// A dotted quad; `0.0.0.0` (or `%any`) is any peer.
    Addr(Ipv4Addr),
    /// A host name, lower-cased, resolved by the daemon when it looks a secret up.
    Host(String),
    /// `@name`: an FQDN identity (without the `@`); never matches an address.
    Id(String),
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Index::Addr(a) => write!(f, "{a}"),
            Index::Host(h) => f.write_str(h),
            Index::Id(n) => write!(f, "@{n}"),
        }
    }
}

#[derive(Debug)]
pub struct Entry {
    pub indices: Vec<Index>,
    pub secret: Secret,
    /// Where the entry starts, for logs ("PSK from isecrets.cfg:12").
    pub file: PathBuf,
    pub line: u32,
}

/// The entries of a secrets file and its includes, in reading order.
#[derive(Debug, Default)]
pub struct Secrets {
    entries: Vec<Entry>,
    files: Vec<PathBuf>,
}

/// A problem in a secrets file. Never carries the file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole.
    pub line: u32,
    pub message: String,
}

impl fmt::Display for SecretsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line != 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for SecretsError {}

/// A warning text when the secrets file can be read or written by anyone but its owner
/// (SPEC §3: the daemon warns). None when the mode is tight, or the file cannot be
/// examined (reading it reports that).
pub fn check_permissions(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} holds pre-shared keys but is accessible by group or others (mode {:04o}); run chmod 600 on it",
            path.display(),
            mode & 0o7777
        )
    })
}

impl Secrets {
    /// Reads a secrets file and everything it includes.
    pub fn load(path: &Path) -> Result<Secrets, SecretsError> {
        let mut loader = Loader {
            secrets: Secrets::default(),
            stack: Vec::new(),
            total: 0,
        };
        let mut bytes = loader.read(path, None)?;
        let parsed = loader.parse_file(&bytes, path);
        wipe(&mut bytes);
        parsed.map(|()| loader.secrets)
    }

    /// Parses the text of a secrets file named `path`; includes are read from disk,
    /// relative to `path`'s directory.
    pub fn parse(text: &[u8], path: &Path) -> Result<Secrets, SecretsError> {
        let mut loader = Loader {
            secrets: Secrets::default(),
            stack: Vec::new(),
            total: 0,
        };
        loader.check_size(text.len(), path, None)?;
        loader.parse_file(text, path)?;
        Ok(loader.secrets)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Every file read, the top one first: the daemon checks each one's permissions.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The PSK for `local` ↔ `remote`, matching dotted-quad indices only (host-name
    /// indices are skipped). See the module documentation for the ranking.
    pub fn find_psk(&self, local: Ipv4Addr, remote: Ipv4Addr, dynamic_local: Option<Ipv4Addr>) -> Option<&Secret> {
        self.find_with(local, remote, dynamic_local, |_| Vec::new())
            .map(|e| &e.secret)
    }

    /// The entry whose secret `local` ↔ `remote` uses. `resolve` turns a host-name index
    /// into its addresses (called at most once per name per lookup; it may block, so the
    /// daemon should pass a cache).
    pub fn find_with<R>(
        &self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        dynamic_local: Option<Ipv4Addr>,
        resolve: R,
    ) -> Option<&Entry>
    where
        R: FnMut(&str) -> Vec<Ipv4Addr>,
    {
        let mut matcher = Matcher {
            local,
            remote,
            dynamic_local,
            resolve,
            resolved: HashMap::new(),
        };
        let mut best: Option<(u8, &Entry)> = None;
        for entry in &self.entries {
            let rank = matcher.rank(&entry.indices);
            if rank > best.map_or(0, |(r, _)| r) {
                best = Some((rank, entry));
            }
        }
        best.map(|(_, e)| e)
    }
}

struct Matcher<'a, R> {
    local: Ipv4Addr,
    remote: Ipv4Addr,
    dynamic_local: Option<Ipv4Addr>,
    resolve: R,
    resolved: HashMap<&'a str, Vec<Ipv4Addr>>,
}

impl<'a, R: FnMut(&str) -> Vec<Ipv4Addr>> Matcher<'a, R> {
    fn addresses_of(&mut self, host: &'a str) -> &[Ipv4Addr] {
        let resolve = &mut self.resolve;
        self.resolved.entry(host).or_insert_with(|| resolve(host))
    }

    fn is_local(&mut self, index: &'a Index) -> bool {
        match index {
            Index::Addr(a) if a.is_unspecified() => false,
            Index::Addr(a) => *a == self.local || (*a == Ipv4Addr::LOCALHOST && self.dynamic_local == Some(self.local)),
            Index::Host(h) => {
                let local = self.local;
                self.addresses_of(h).contains(&local)
            }
            Index::Id(_) => false,
        }
    }

    fn is_remote(&mut self, index: &'a Index) -> bool {
        match index {
            Index::Addr(a) => !a.is_unspecified() && *a == self.remote,
            Index::Host(h) => {
                let remote = self.remote;
                self.addresses_of(h).contains(&remote)
            }
            Index::Id(_) => false,
        }
    }

    /// 0 = no match; see the module documentation for 1-5.
    fn rank(&mut self, indices: &'a [Index]) -> u8 {
        let is_any = |i: &Index| *i == Index::Addr(Ipv4Addr::UNSPECIFIED);
        match indices {
            [] => 1,
            [only] if is_any(only) => 1,
            [only] if self.is_local(only) => 3,
            [only] if self.is_remote(only) => 2,
            [_] => 0,
            _ => {
                let mut local = false;
                let mut remote = false;
                for i in indices {
                    local |= self.is_local(i);
                    remote |= self.is_remote(i);
                }
                match (local, remote, indices.iter().any(is_any)) {
                    (true, true, _) => 5,
                    (true, false, true) => 4,
                    _ => 0,
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum TokKind {
    Word(Vec<u8>),
    Quoted(Vec<u8>),
    Colon,
}

struct Tok {
    kind: TokKind,
    line: u32,
    col: u32,
    /// Starts in column 1: begins a record.
    first: bool,
}

impl Drop for Tok {
    fn drop(&mut self) {
        // Quoted strings and words (an unquoted hex secret) may be key material.
        if let TokKind::Word(b) | TokKind::Quoted(b) = &mut self.kind {
            wipe(b);
        }
    }
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

struct Loader {
    secrets: Secrets,
    /// The files being read, outermost first, by canonical path (loop detection).
    stack: Vec<PathBuf>,
    total: usize,
}

impl Loader {
    fn err(file: &Path, line: u32, message: impl Into<String>) -> SecretsError {
        SecretsError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    fn check_size(&mut self, len: usize, path: &Path, from: Option<(&Path, u32)>) -> Result<(), SecretsError> {
        let (file, line) = from.unwrap_or((path, 0));
        if len > MAX_FILE_BYTES {
            return Err(Loader::err(
                file,
                line,
                format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display()),
            ));
        }
        self.total += len;
        if self.total > MAX_TOTAL_BYTES {
            return Err(Loader::err(
                file,
                line,
                format!("secrets files add up to more than {MAX_TOTAL_BYTES} bytes"),
            ));
        }
        Ok(())
    }

    /// Reads `path`; errors are reported at the include line `from` when there is one.
    fn read(&mut self, path: &Path, from: Option<(&Path, u32)>) -> Result<Vec<u8>, SecretsError> {
        let (file, line) = from.unwrap_or((path, 0));
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(|e| Loader::err(file, line, format!("cannot read {}: {e}", path.display())))?;
        if let Err(e) = self.check_size(bytes.len(), path, from) {
            wipe(&mut bytes);
            return Err(e);
        }
        Ok(bytes)
    }

    fn parse_file(&mut self, text: &[u8], path: &Path) -> Result<(), SecretsError> {
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.stack.push(canonical);
        self.secrets.files.push(path.to_path_buf());
        let tokens = lex(text, path)?;
        let mut start = 0;
        while start < tokens.len() {
            let end = tokens[start + 1..]
                .iter()
                .position(|t| t.first)
                .map_or(tokens.len(), |p| start + 1 + p);
            self.record(&tokens[start..end], path)?;
            start = end;
        }
        self.stack.pop();
        Ok(())
    }

    fn record(&mut self, toks: &[Tok], path: &Path) -> Result<(), SecretsError> {
        let head = &toks[0];
        if !head.first {
            return Err(Loader::err(
                path,
                head.line,
                "indented line before any entry (an entry starts in column 1)",
            ));
        }
        if head.kind == TokKind::Word(b"include".to_vec()) {
            return self.include(toks, path);
        }
        let mut indices = Vec::new();
        let mut rest = toks;
        while let Some((tok, tail)) = rest.split_first() {
            match &tok.kind {
                TokKind::Word(w) => {
                    indices.push(
                        parse_index(w).map_err(|m| Loader::err(path, tok.line, format!("column {}: {m}", tok.col)))?,
                    );
                    rest = tail;
                }
                _ => break,
            }
        }
        let secret = match rest {
            [] => {
                return Err(Loader::err(
                    path,
                    head.line,
                    "entry has no secret (expected `: PSK \"secret\"` after its indices)",
                ));
            }
            [Tok {
                kind: TokKind::Quoted(s),
                line,
                col,
                ..
            }, more @ ..] => {
                no_more(more, path)?;
                quoted_secret(s).map_err(|m| Loader::err(path, *line, format!("column {col}: {m}")))?
            }
            [colon, more @ ..] => {
                debug_assert_eq!(colon.kind, TokKind::Colon);
                let Some((kind, more)) = more.split_first() else {
                    return Err(Loader::err(path, colon.line, "expected PSK after the colon"));
                };
                match &kind.kind {
                    TokKind::Word(w) if w.eq_ignore_ascii_case(b"PSK") => {}
                    TokKind::Word(w)
                        if [&b"RSA"[..], b"XAUTH", b"EAP", b"PIN"]
                            .iter()
                            .any(|k| w.eq_ignore_ascii_case(k)) =>
                    {
                        return Err(Loader::err(path, kind.line, "only PSK secrets are supported"));
                    }
                    _ => {
                        return Err(Loader::err(
                            path,
                            kind.line,
                            format!("column {}: expected PSK after the colon", kind.col),
                        ))
                    }
                }
                let Some((value, more)) = more.split_first() else {
                    return Err(Loader::err(path, kind.line, "PSK without a secret"));
                };
                no_more(more, path)?;
                let at = |m: String| Loader::err(path, value.line, format!("column {}: {m}", value.col));
                match &value.kind {
                    TokKind::Quoted(s) => quoted_secret(s).map_err(at)?,
                    TokKind::Word(w) if w.starts_with(b"0x") || w.starts_with(b"0X") => {
                        hex_secret(&w[2..]).map_err(at)?
                    }
                    _ => return Err(at("a PSK is a double-quoted string or 0x hex".into())),
                }
            }
        };
        self.secrets.entries.push(Entry {
            indices,
            secret,
            file: path.to_path_buf(),
            line: head.line,
        });
        Ok(())
    }

    fn include(&mut self, toks: &[Tok], path: &Path) -> Result<(), SecretsError> {
        let line = toks[0].line;
        let name = match toks {
            [_, Tok {
                kind: TokKind::Word(n) | TokKind::Quoted(n),
                ..
            }] if !n.is_empty() => n,
            _ => return Err(Loader::err(path, line, "include takes exactly one file name")),
        };
        let name = Path::new(std::ffi::OsStr::from_bytes(name));
        let target = if name.is_absolute() {
            name.to_path_buf()
        } else {
            path.parent().unwrap_or(Path::new("")).join(name)
        };
        if self.stack.len() > MAX_INCLUDE_DEPTH {
            return Err(Loader::err(
                path,
                line,
                format!("includes nested deeper than {MAX_INCLUDE_DEPTH}"),
            ));
        }
        let canonical = std::fs::canonicalize(&target).unwrap_or_else(|_| target.clone());
        if self.stack.contains(&canonical) {
            return Err(Loader::err(
                path,
                line,
                format!("include loop: {} is already being read", target.display()),
            ));
        }
        let mut bytes = self.read(&target, Some((path, line)))?;
        let parsed = self.parse_file(&bytes, &target);
        wipe(&mut bytes);
        parsed
    }
}

fn no_more(more: &[Tok], path: &Path) -> Result<(), SecretsError> {
    match more.first() {
        None => Ok(()),
        Some(t) => Err(Loader::err(
            path,
            t.line,
            format!("column {}: unexpected text after the secret", t.col),
        )),
    }
}

/// Splits a file into tokens. Works on bytes: secrets need not be UTF-8.
fn lex(text: &[u8], path: &Path) -> Result<Vec<Tok>, SecretsError> {
    let mut toks = Vec::new();
    for (n, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = u32::try_from(n + 1).unwrap_or(u32::MAX);
        let at = |i: usize, m: &str| Loader::err(path, line, format!("column {}: {m}", i + 1));
        let col = |i: usize| u32::try_from(i + 1).unwrap_or(u32::MAX);
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            if is_blank(b) {
                i += 1;
                continue;
            }
            // Only reached at line start or after a blank: both begin a comment.
            if b == b'#' {
                break;
            }
            let start = i;
            let kind = if b == b'"' {
                let mut s = Vec::new();
                i += 1;
                loop {
                    match raw.get(i) {
                        None => return Err(at(start, "unterminated quoted string (a secret ends on its line)")),
                        Some(b'"') => break,
                        Some(b'\\') if matches!(raw.get(i + 1), Some(b'"' | b'\\')) => {
                            s.push(raw[i + 1]);
                            i += 2;
                        }
                        Some(&c) => {
                            s.push(c);
                            i += 1;
                        }
                    }
                }
                i += 1;
                if raw.get(i).is_some_and(|&c| !is_blank(c)) {
                    wipe(&mut s);
                    return Err(at(i, "expected a blank after the closing quote"));
                }
                TokKind::Quoted(s)
            } else {
                while i < raw.len() && !is_blank(raw[i]) {
                    if raw[i] == b'"' {
                        return Err(at(i, "quote inside a word"));
                    }
                    if raw[i] < 0x20 || raw[i] == 0x7f {
                        return Err(at(i, "control character"));
                    }
                    i += 1;
                }
                let word = &raw[start..i];
                if word == b":" {
                    TokKind::Colon
                } else if let Some(w) = word.strip_suffix(b":") {
                    // FreeS/WAN: a trailing ":" on a token is a token of its own.
                    toks.push(Tok {
                        kind: TokKind::Word(w.to_vec()),
                        line,
                        col: col(start),
                        first: start == 0,
                    });
                    toks.push(Tok {
                        kind: TokKind::Colon,
                        line,
                        col: col(i - 1),
                        first: false,
                    });
                    continue;
                } else {
                    TokKind::Word(word.to_vec())
                }
            };
            toks.push(Tok {
                kind,
                line,
                col: col(start),
                first: start == 0,
            });
        }
    }
    Ok(toks)
}

fn parse_index(w: &[u8]) -> Result<Index, String> {
    if w.eq_ignore_ascii_case(b"%any") {
        return Ok(Index::Addr(Ipv4Addr::UNSPECIFIED));
    }
    if w.eq_ignore_ascii_case(b"PSK") {
        return Err("PSK must follow a colon (`: PSK \"secret\"`)".into());
    }
    if let Some(id) = w.strip_prefix(b"@") {
        if !id.is_empty() && id.iter().all(|c| c.is_ascii_graphic()) {
            return Ok(Index::Id(String::from_utf8_lossy(id).into_owned()));
        }
        return Err("an @identity needs a printable name".into());
    }
    if w.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
        return std::str::from_utf8(w)
            .ok()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(Index::Addr)
            .ok_or_else(|| "not a dotted quad (a.b.c.d, each 0-255, no leading zeros)".into());
    }
    if is_host_name(w) {
        return Ok(Index::Host(String::from_utf8_lossy(w).to_ascii_lowercase()));
    }
    Err("an index is a dotted quad, a host name, %any or @name".into())
}

/// RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(w: &[u8]) -> bool {
    let w = w.strip_suffix(b".").unwrap_or(w);
    !w.is_empty()
        && w.len() <= 253
        && w.split(|&c| c == b'.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
                && !label.starts_with(b"-")
                && !label.ends_with(b"-")
        })
}

fn quoted_secret(s: &[u8]) -> Result<Secret, String> {
    if s.is_empty() {
        return Err("empty secret".into());
    }
    if s.len() > MAX_SECRET_BYTES {
        return Err(format!("secret longer than {MAX_SECRET_BYTES} bytes"));
    }
    Ok(Secret(s.to_vec()))
}

fn hex_secret(digits: &[u8]) -> Result<Secret, String> {
    let mut out = Secret(Vec::with_capacity(digits.len() / 2));
    let mut high: Option<u8> = None;
    for &c in digits {
        if c == b'_' {
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return Err("0x secret with a character that is not a hex digit".into()),
        };
        match high.take() {
            None => high = Some(v),
            Some(h) => out.0.push(h << 4 | v),
        }
    }
    if high.is_some() {
        return Err("0x secret with an odd number of hex digits".into());
    }
    if out.0.is_empty() {
        return Err("empty secret".into());
    }
    if out.0.len() > MAX_SECRET_BYTES {
        return Err(format!("secret longer than {MAX_SECRET_BYTES} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn parse(text: &str) -> Result<Secrets, SecretsError> {
        Secrets::parse(text.as_bytes(), Path::new("/nonexistent/isecrets.cfg"))
    }

    fn psk<'a>(s: &'a Secrets, local: &str, remote: &str, dynamic: Option<&str>) -> Option<&'a [u8]> {
        s.find_psk(ip(local), ip(remote), dynamic.map(ip)).map(Secret::as_bytes)
    }

    /// A fresh directory under the system temp dir for include tests.
    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("isecrets-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn freeswan_forms() {
        let s = parse(concat!(
            "# comment\n",
            "10.1.0.1 10.2.0.1: PSK \"secret shared by two hosts\"\n",
            "\n",
            "www.xs4all.nl @www.kremvax.ru\n",
            "    10.6.0.1 10.7.0.1 1.8.0.1: PSK \"secret shared by 5\"\n",
            "10.1.0.1 10.3.0.1 \"old form\"   # trailing comment\n",
            "10.1.0.1 10.4.0.1 : psk 0x0102_0A0b\n",
            ": PSK \"default\"\n",
        ))
        .unwrap();
        assert_eq!(s.len(), 5);
        let e = &s.entries()[1];
        assert_eq!(
            e.indices,
            vec![
                Index::Host("www.xs4all.nl".into()),
                Index::Id("www.kremvax.ru".into()),
                Index::Addr(ip("10.6.0.1")),
                Index::Addr(ip("10.7.0.1")),
                Index::Addr(ip("1.8.0.1")),
            ]
        );
        assert_eq!(e.line, 4);
        assert_eq!(e.secret.as_bytes(), b"secret shared by 5");
        assert_eq!(s.entries()[2].secret.as_bytes(), b"old form");
        assert_eq!(s.entries()[3].secret.as_bytes(), &[1, 2, 0x0a, 0x0b]);
        assert!(s.entries()[4].indices.is_empty());
        assert_eq!(s.files(), &[PathBuf::from("/nonexistent/isecrets.cfg")]);
    }

    #[test]
    fn quoting_comments_and_continuations() {
        let s = parse(concat!(
            "10.0.0.1 # the first index\n",
            "# a comment line does not end the entry\n",
            "\n",
            "\t10.0.0.2 : PSK \"a \\\"quoted\\\" #not-a-comment \\\\ and \\n kept\"\n",
            "10.0.0.3\t10.0.0.4 : PSK \"x\"\r\n",
        ))
        .unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.entries()[0].indices,
            vec![Index::Addr(ip("10.0.0.1")), Index::Addr(ip("10.0.0.2"))]
        );
        assert_eq!(
            s.entries()[0].secret.as_bytes(),
            b"a \"quoted\" #not-a-comment \\ and \\n kept"
        );
        assert_eq!(s.entries()[1].secret.as_bytes(), b"x");
        assert_eq!(s.entries()[1].line, 5);
    }

    #[test]
    fn errors_name_file_and_line_and_hide_the_text() {
        let cases: &[(&str, u32, &str)] = &[
            (
                "  10.0.0.1 10.0.0.2 : PSK \"hunter2\"\n",
                1,
                "indented line before any entry",
            ),
            ("10.0.0.1 10.0.0.2\n", 1, "no secret"),
            ("10.0.0.1\n10.0.0.2 : PSK \"hunter2\"\n", 1, "no secret"),
            ("10.0.0.1 10.0.0.2 : PSK hunter2\n", 1, "double-quoted string or 0x hex"),
            ("10.0.0.1 10.0.0.2 : PSK \"hunter2\n", 1, "unterminated"),
            (
                "10.0.0.1 10.0.0.2 : PSK \"hunter2\"x\n",
                1,
                "blank after the closing quote",
            ),
            ("10.0.0.1 10.0.0.2 : PSK \"\"\n", 1, "empty secret"),
            ("10.0.0.1 10.0.0.2 : PSK 0xhunter2\n", 1, "not a hex digit"),
            ("10.0.0.1 10.0.0.2 : PSK 0x123\n", 1, "odd number"),
            ("10.0.0.1 10.0.0.2 : PSK 0x\n", 1, "empty secret"),
            ("\n\n10.0.0.1 10.0.0.256 : PSK \"hunter2\"\n", 3, "not a dotted quad"),
            ("10.0.0.1 010.0.0.2 : PSK \"hunter2\"\n", 1, "not a dotted quad"),
            ("10.0.0.1 bad_host : PSK \"hunter2\"\n", 1, "an index is"),
            ("10.0.0.1 10.0.0.2 PSK \"hunter2\"\n", 1, "PSK must follow a colon"),
            ("10.0.0.1 10.0.0.2 : RSA {\n", 1, "only PSK"),
            ("10.0.0.1 10.0.0.2 : PSK\n", 1, "PSK without a secret"),
            ("10.0.0.1 10.0.0.2 :\n", 1, "expected PSK"),
            (
                "10.0.0.1 10.0.0.2 : PSK \"hunter2\" extra\n",
                1,
                "unexpected text after the secret",
            ),
            (
                "10.0.0.1 10.0.0.2 : PSK \"hunter2\"\n  \"more\"\n",
                2,
                "unexpected text after the secret",
            ),
            ("10.0.0.1 10\"0.0.2 : PSK \"hunter2\"\n", 1, "quote inside a word"),
            ("10.0.0.1 10.0.0.2\x01 : PSK \"hunter2\"\n", 1, "control character"),
            ("include\n", 1, "exactly one file name"),
            ("include a b\n", 1, "exactly one file name"),
            (
                "include missing.secrets\n",
                1,
                "cannot read /nonexistent/missing.secrets",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert_eq!(e.file, PathBuf::from("/nonexistent/isecrets.cfg"));
            let shown = e.to_string();
            assert!(shown.starts_with("/nonexistent/isecrets.cfg:"), "{shown}");
            assert!(shown.contains(needle), "{text:?}: {shown}");
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn long_secrets_are_refused() {
        let ok = format!("1.2.3.4 : PSK \"{}\"\n", "a".repeat(MAX_SECRET_BYTES));
        assert_eq!(
            parse(&ok).unwrap().entries()[0].secret.as_bytes().len(),
            MAX_SECRET_BYTES
        );
        let long = format!("1.2.3.4 : PSK \"{}\"\n", "a".repeat(MAX_SECRET_BYTES + 1));
        assert!(parse(&long).unwrap_err().message.contains("longer than"));
        let hex = format!("1.2.3.4 : PSK 0x{}\n", "ab".repeat(MAX_SECRET_BYTES + 1));
        assert!(parse(&hex).unwrap_err().message.contains("longer than"));
        let big = vec![b'#'; MAX_FILE_BYTES + 1];
        assert!(Secrets::parse(&big, Path::new("x"))
            .unwrap_err()
            .message
            .contains("larger than"));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = parse("10.0.0.1 10.0.0.2 : PSK \"hunter2\"\n10.0.0.1 10.0.0.3 : PSK 0x68756e74657232\n").unwrap();
        let shown = format!("{s:?} {:?}", s.entries()[1]);
        assert!(
            !shown.contains("hunter2") && !shown.contains("68756e") && !shown.contains("104, 117"),
            "{shown}"
        );
        assert!(shown.contains("redacted"));
        assert_eq!(s.entries()[1].secret.as_bytes(), b"hunter2");
    }

    #[test]
    fn every_truncation_and_random_bytes_never_panic() {
        let text = concat!(
            "10.1.0.1 10.2.0.1: PSK \"secret \\\" shared\"  # c\n",
            "gw.example.net @id\n  10.6.0.1 : PSK 0x01_02\n",
            "10.1.0.1 0.0.0.0 \"old\"\n",
            "include other.secrets\n",
        );
        for cut in 0..=text.len() {
            // Ok or a located error, never a panic.
            if let Err(e) = parse(&text[..cut]) {
                assert!(e.line >= 1, "{cut}: {e}");
            }
        }
        // xorshift: deterministic, no dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"0123456789.: \t\n\"\\#abcPSKx_@%-\r\x00\xff";
        for round in 0..3000 {
            let len = (round % 120) + 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if round % 2 == 0 {
                        alphabet[(x % alphabet.len() as u64) as usize]
                    } else {
                        x as u8
                    }
                })
                .collect();
            let _ = Secrets::parse(&bytes, Path::new("/nonexistent/r"));
        }
    }

    #[test]
    fn first_entry_listing_both_endpoints_wins() {
        let s = parse(concat!(
            "10.0.0.1 : PSK \"lone local\"\n",
            "10.0.0.1 0.0.0.0 : PSK \"road warrior\"\n",
            "10.0.0.2 10.0.0.1 : PSK \"first explicit\"\n",
            "10.0.0.1 10.0.0.2 : PSK \"second explicit\"\n",
            "10.0.0.9 10.0.0.2 10.0.0.3 : PSK \"one end only\"\n",
        ))
        .unwrap();
        // Explicit beats road warrior and lone local even when later in the file; order
        // reversed in the entry does not matter; the first explicit one wins.
        assert_eq!(psk(&s, "10.0.0.1", "10.0.0.2", None), Some(&b"first explicit"[..]));
        assert_eq!(psk(&s, "10.0.0.2", "10.0.0.1", None), Some(&b"first explicit"[..]));
        // No explicit entry for 10.0.0.7: the 0.0.0.0 entry serves any peer.
        assert_eq!(psk(&s, "10.0.0.1", "10.0.0.7", None), Some(&b"road warrior"[..]));
        // A multi-index entry listing only this end does not match...
        assert_eq!(psk(&s, "10.0.0.9", "10.0.0.7", None), None);
        // ...and one listing both does, whatever else it lists.
        assert_eq!(psk(&s, "10.0.0.3", "10.0.0.2", None), Some(&b"one end only"[..]));
    }

    #[test]
    fn single_index_and_default_ranks() {
        let s = parse(concat!(
            ": PSK \"default\"\n",
            "10.0.0.5 : PSK \"lone remote\"\n",
            "10.0.0.1 : PSK \"lone local\"\n",
        ))
        .unwrap();
        assert_eq!(psk(&s, "10.0.0.1", "10.0.0.5", None), Some(&b"lone local"[..]));
        assert_eq!(psk(&s, "10.0.0.2", "10.0.0.5", None), Some(&b"lone remote"[..]));
        assert_eq!(psk(&s, "10.0.0.2", "10.0.0.6", None), Some(&b"default"[..]));
        let only_any = parse("0.0.0.0 : PSK \"any\"\n").unwrap();
        assert_eq!(psk(&only_any, "10.0.0.2", "10.0.0.6", None), Some(&b"any"[..]));
        let none = parse("10.0.0.1 10.0.0.2 : PSK \"x\"\n").unwrap();
        assert_eq!(psk(&none, "10.0.0.1", "10.0.0.3", None), None);
        assert_eq!(psk(&none, "10.0.0.3", "10.0.0.2", None), None);
    }

    #[test]
    fn road_warrior_both_sides() {
        // Gateway: remote = 0.0.0.0 with a 0.0.0.0 secret.
        let gw = parse("192.0.2.1 0.0.0.0 : PSK \"rw\"\n").unwrap();
        assert_eq!(psk(&gw, "192.0.2.1", "203.0.113.50", None), Some(&b"rw"[..]));
        assert_eq!(psk(&gw, "192.0.2.2", "203.0.113.50", None), None);
        // 0.0.0.0 is any peer, never this end.
        assert_eq!(psk(&gw, "0.0.0.0", "192.0.2.1", None), None);
        // Host: local = 0.0.0.0 (dynamic) with a 127.0.0.1 secret.
        let host = parse("%any 1.1.1.1 : PSK \"no\"\n127.0.0.1 192.0.2.1 : PSK \"rw\"\n").unwrap();
        assert_eq!(
            psk(&host, "203.0.113.50", "192.0.2.1", Some("203.0.113.50")),
            Some(&b"rw"[..])
        );
        // Without a dynamic address, or when the local address in use is not the dynamic
        // one, 127.0.0.1 does not stand for it.
        assert_eq!(psk(&host, "203.0.113.50", "192.0.2.1", None), None);
        assert_eq!(psk(&host, "203.0.113.50", "192.0.2.1", Some("203.0.113.51")), None);
    }

    #[test]
    fn host_names_go_through_the_resolver() {
        let s = parse("GW.example.net 10.0.0.1 : PSK \"named\"\n10.0.0.1 0.0.0.0 : PSK \"rw\"\n").unwrap();
        let mut asked = Vec::new();
        let found = s.find_with(ip("10.0.0.1"), ip("192.0.2.1"), None, |h| {
            asked.push(h.to_string());
            if h == "gw.example.net" {
                vec![ip("192.0.2.9"), ip("192.0.2.1")]
            } else {
                vec![]
            }
        });
        assert_eq!(found.map(|e| e.secret.as_bytes()), Some(&b"named"[..]));
        assert_eq!(found.map(|e| e.line), Some(1));
        assert_eq!(
            asked,
            vec!["gw.example.net".to_string()],
            "one resolution per name per lookup"
        );
        // find_psk skips names: the road-warrior entry is what is left.
        assert_eq!(psk(&s, "10.0.0.1", "192.0.2.1", None), Some(&b"rw"[..]));
    }

    #[test]
    fn includes_are_relative_nested_and_loops_refused() {
        let dir = temp_dir("inc");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(
            dir.join("top.cfg"),
            "10.0.0.1 10.0.0.2 : PSK \"top\"\ninclude sub/a.cfg\n10.0.0.1 10.0.0.4 : PSK \"after\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("sub/a.cfg"), "include b.cfg\n").unwrap();
        std::fs::write(dir.join("sub/b.cfg"), "10.0.0.1 10.0.0.3 : PSK \"nested\"\n").unwrap();
        let s = Secrets::load(&dir.join("top.cfg")).unwrap();
        let got: Vec<&[u8]> = s.entries().iter().map(|e| e.secret.as_bytes()).collect();
        assert_eq!(got, vec![&b"top"[..], b"nested", b"after"]);
        assert_eq!(s.entries()[1].file, dir.join("sub/b.cfg"));
        assert_eq!(s.files().len(), 3);

        // A loop through two files is reported at the include that closes it.
        std::fs::write(dir.join("sub/b.cfg"), "include ../top.cfg\n").unwrap();
        let e = Secrets::load(&dir.join("top.cfg")).unwrap_err();
        assert!(e.message.contains("include loop"), "{e}");
        assert_eq!((e.file.clone(), e.line), (dir.join("sub/b.cfg"), 1));

        // Depth: a chain of 11 includes is refused, 10 is fine.
        for depth in [10usize, 11] {
            let d = temp_dir(&format!("depth{depth}"));
            for i in 0..depth {
                std::fs::write(d.join(format!("f{i}")), format!("include f{}\n", i + 1)).unwrap();
            }
            std::fs::write(d.join(format!("f{depth}")), "1.2.3.4 : PSK \"deep\"\n").unwrap();
            let r = Secrets::load(&d.join("f0"));
            if depth <= MAX_INCLUDE_DEPTH {
                assert_eq!(r.unwrap().len(), 1);
            } else {
                assert!(r.unwrap_err().message.contains("nested deeper"));
            }
            let _ = std::fs::remove_dir_all(&d);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn permissions_warning() {
        let dir = temp_dir("perm");
        let f = dir.join("isecrets.cfg");
        std::fs::write(&f, "1.2.3.4 : PSK \"x\"\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_permissions(&f), None);
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = check_permissions(&f).unwrap();
        assert!(w.contains("0644") && w.contains("isecrets.cfg"), "{w}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o620)).unwrap();
        assert!(check_permissions(&f).is_some());
        assert_eq!(check_permissions(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
