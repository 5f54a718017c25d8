//! pluto.log: one line per event, `[YYYY-MM-DD HH:MM:SS.mmm][PFX][connection][message]`,
//! the layout of the plugin's ipsec.log (SPEC §4) so that both files read alike and merge
//! by sorting. Prefixes: `ERR`, `WRN`, `INF`, `IKE` (the plugin link), `DBG` (only with
//! `--debug`). The file is capped: past `MAX_LOG_BYTES` it is renamed to `pluto.log.1` and
//! started afresh, so a peer that floods us cannot fill the disk.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ipsec_plugin::log::UtcTime;

use crate::event::LogLevel;

pub const MAX_LOG_BYTES: u64 = 8 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Err,
    Wrn,
    Inf,
    /// The plugin link: connects, requests, SAs handed over.
    Ike,
    Dbg,
}

impl Prefix {
    fn text(self) -> &'static str {
        match self {
            Prefix::Err => "ERR",
            Prefix::Wrn => "WRN",
            Prefix::Inf => "INF",
            Prefix::Ike => "IKE",
            Prefix::Dbg => "DBG",
        }
    }
}

impl From<LogLevel> for Prefix {
    fn from(level: LogLevel) -> Prefix {
        match level {
            LogLevel::Error => Prefix::Err,
            LogLevel::Warning => Prefix::Wrn,
            LogLevel::Info => Prefix::Inf,
            LogLevel::Debug => Prefix::Dbg,
        }
    }
}

enum Sink {
    Stderr,
    File { path: PathBuf, file: File, written: u64 },
}

pub struct PlutoLog {
    sink: Sink,
    debug: bool,
}

impl PlutoLog {
    pub fn stderr(debug: bool) -> PlutoLog {
        PlutoLog { sink: Sink::Stderr, debug }
    }

    pub fn file(path: &Path, debug: bool) -> io::Result<PlutoLog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(PlutoLog { sink: Sink::File { path: path.to_path_buf(), file, written }, debug })
    }

    pub fn line(&mut self, prefix: Prefix, conn: Option<&str>, message: &str) {
        if prefix == Prefix::Dbg && !self.debug {
            return;
        }
        let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        // Brackets and line breaks from a peer's text must not forge a line.
        let clean = |s: &str| s.replace(['\n', '\r'], " ");
        let text = format!(
            "[{}][{}][{}][{}]\n",
            UtcTime::from_unix_ms(ms),
            prefix.text(),
            clean(conn.unwrap_or("-")),
            clean(message)
        );
        match &mut self.sink {
            Sink::Stderr => {
                let _ = io::stderr().write_all(text.as_bytes());
            }
            Sink::File { path, file, written } => {
                if *written + text.len() as u64 > MAX_LOG_BYTES {
                    let _ = std::fs::rename(&*path, path.with_extension("log.1"));
                    if let Ok(f) = OpenOptions::new().create(true).write(true).truncate(true).open(&*path) {
                        *file = f;
                        *written = 0;
                    }
                }
                if file.write_all(text.as_bytes()).is_ok() {
                    *written += text.len() as u64;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_the_ipsec_log_layout_and_rotate() {
        let dir = std::env::temp_dir().join(format!("pluto-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pluto.log");
        let mut log = PlutoLog::file(&path, false).unwrap();
        log.line(Prefix::Inf, Some("gw"), "hello\n[forged]");
        log.line(Prefix::Dbg, None, "hidden without --debug");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line = text.lines().next().unwrap();
        assert!(line.ends_with("][INF][gw][hello [forged]]"), "{line}");
        assert_eq!(line.as_bytes()[24], b']', "timestamp is 23 characters: {line}");
        let big = "x".repeat(1024);
        for _ in 0..(MAX_LOG_BYTES / 1024 + 2) {
            log.line(Prefix::Wrn, None, &big);
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= MAX_LOG_BYTES);
        assert!(path.with_extension("log.1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
