//! `ipsec.log`: the audit log of one plugin instance (SPEC section 4).
//!
//! Every plugin instance owns an [`EventLog`]. The process-global `log` facade is not used:
//! several instances live in one host process, and the logger slot belongs to the host.
//! Floods are folded per (level, bundle, kind) and the file is size-capped with rotation, so
//! that an attacker sending bad packets cannot fill the disk or the host's output window.
//! docs/log.md describes the format for administrators.

#![deny(unsafe_code)]

use std::fmt::{self, Write as _};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What an event is, shown as the line's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// An error: config, key, I/O, daemon failure.
    Err,
    /// A security event: ICV failure, replay, policy violation, unknown SPI, bad padding,
    /// decompression failure.
    Sec,
    /// A warning: weak algorithm, soft lifetime, lax file permissions.
    Wrn,
    /// Life cycle: plugin loaded, bundle activated, SA installed / rekeyed / expired / deleted.
    Inf,
    /// Keying daemon link and requests.
    Ike,
    /// Packet-level detail, written only when enabled.
    Dbg,
}

impl Level {
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            Level::Err => "ERR",
            Level::Sec => "SEC",
            Level::Wrn => "WRN",
            Level::Inf => "INF",
            Level::Ike => "IKE",
            Level::Dbg => "DBG",
        }
    }

    /// SPEC section 4: only errors and security events interrupt the operator.
    const fn shown_in_window(self) -> bool {
        matches!(self, Level::Err | Level::Sec)
    }

    /// Only events that packets from outside can trigger at will are folded: every
    /// life-cycle event and every configuration error is worth its own line, and the
    /// size cap bounds them anyway.
    const fn folds(self) -> bool {
        matches!(self, Level::Sec | Level::Dbg)
    }
}

/// Milliseconds since the Unix epoch, supplied by the host.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;
/// The host's output window: receives one line of text (without line terminator).
pub type OutputWindow = Arc<dyn Fn(&str) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The `ipsec.log` file; `None` logs to the output window only.
    pub path: Option<PathBuf>,
    /// The file is rotated before a line would make it larger than this.
    pub max_bytes: u64,
    /// Rotated files kept (`ipsec.log.1` newest .. `ipsec.log.<keep>` oldest); 0 truncates.
    pub keep: u32,
    /// Write `DBG` events.
    pub debug: bool,
    /// Repeats of an event within this many ms of its last written line are only counted;
    /// 0 writes every event.
    pub burst_ms: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            path: None,
            max_bytes: 1 << 20,
            keep: 3,
            debug: false,
            burst_ms: 10_000,
        }
    }
}

/// Bytes of message text kept; longer messages end in `...`.
const MAX_MESSAGE_BYTES: usize = 1000;
/// Bytes of bundle name kept; section names are normally short, this only bounds the line.
const MAX_BUNDLE_BYTES: usize = 128;
/// Distinct flood keys tracked at once; bounds memory when many bundles or kinds misbehave.
const MAX_FLOOD_KEYS: usize = 256;
/// How often an `event` call looks for other keys whose burst has ended.
const SWEEP_INTERVAL_MS: u64 = 1000;

/// The `ipsec.log` writer of one plugin instance. Safe to share between threads.
pub struct EventLog {
    settings: Settings,
    debug: bool,
    clock: Clock,
    inner: Mutex<Inner>,
}

struct Settings {
    path: Option<PathBuf>,
    max_bytes: u64,
    keep: u32,
    burst_ms: u64,
    window: Option<OutputWindow>,
}

struct Inner {
    file: Option<File>,
    /// Length of the current file, tracked here rather than asked of the OS per line.
    size: u64,
    floods: Vec<Flood>,
    last_sweep_ms: u64,
    /// Reused for every line, so writing an event does not allocate once warmed up.
    line: String,
    /// Lines for the output window, shown after the lock is released so that a slow or
    /// re-entrant host callback cannot stall or deadlock the packet path.
    to_window: Vec<String>,
    /// Lines that could not be written since the last successful write.
    lost_lines: u64,
    io_error_reported: bool,
}

/// The fold state of one (level, bundle, kind).
struct Flood {
    level: Level,
    bundle: String,
    kind: &'static str,
    /// When the last line of this key was written: repeats within `burst_ms` are counted.
    written_ms: u64,
    /// Start of the span that `suppressed` covers.
    since_ms: u64,
    suppressed: u64,
}

impl Flood {
    fn is(&self, level: Level, bundle: &str, kind: &str) -> bool {
        self.level == level && self.kind == kind && self.bundle == bundle
    }
}

impl EventLog {
    /// Opens (creating if needed) the log file in append mode.
    ///
    /// # Errors
    /// Only if the file cannot be opened, so the caller can report a bad log path at load
    /// time; later write errors are counted instead (see docs/log.md).
    pub fn open(
        opts: LogOptions,
        clock: Clock,
        window: Option<OutputWindow>,
    ) -> io::Result<EventLog> {
        let (file, size) = match &opts.path {
            Some(path) => {
                let file = open_append(path)?;
                let size = file.metadata()?.len();
                (Some(file), size)
            }
            None => (None, 0),
        };
        Ok(EventLog {
            settings: Settings {
                path: opts.path,
                max_bytes: opts.max_bytes,
                keep: opts.keep,
                burst_ms: opts.burst_ms,
                window,
            },
            debug: opts.debug,
            clock,
            inner: Mutex::new(Inner {
                file,
                size,
                floods: Vec::new(),
                last_sweep_ms: 0,
                line: String::new(),
                to_window: Vec::new(),
                lost_lines: 0,
                io_error_reported: false,
            }),
        })
    }

    pub fn enabled(&self, level: Level) -> bool {
        level != Level::Dbg || self.debug
    }

    /// `kind` is a stable name for the sort of event ("icv-failure", "replay", "config") used to
    /// fold floods; the message is formatted only when the event will be written.
    pub fn event(&self, level: Level, bundle: &str, kind: &'static str, msg: fmt::Arguments<'_>) {
        if !self.enabled(level) {
            return;
        }
        let to_window = {
            let mut inner = self.lock();
            // Read under the lock so that lines in the file are in clock order.
            let now = (self.clock)();
            inner.event(&self.settings, now, level, bundle, kind, msg);
            std::mem::take(&mut inner.to_window)
        };
        self.show(&to_window);
    }

    /// Writes the pending "repeated" counts (called on reload and close, and usable from a timer).
    pub fn flush(&self) {
        let to_window = {
            let mut inner = self.lock();
            let now = (self.clock)();
            for i in 0..inner.floods.len() {
                inner.summarize(&self.settings, now, i);
            }
            std::mem::take(&mut inner.to_window)
        };
        self.show(&to_window);
    }

    pub fn path(&self) -> Option<&Path> {
        self.settings.path.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while formatting a message leaves Inner consistent (the line buffer is
        // cleared before each use), so logging carries on rather than going silent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn show(&self, lines: &[String]) {
        if let Some(window) = &self.settings.window {
            for line in lines {
                window(line);
            }
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Inner {
    fn event(
        &mut self,
        s: &Settings,
        now: u64,
        level: Level,
        bundle: &str,
        kind: &'static str,
        msg: fmt::Arguments<'_>,
    ) {
        if !self.floods.is_empty() && now.saturating_sub(self.last_sweep_ms) >= SWEEP_INTERVAL_MS {
            self.last_sweep_ms = now;
            self.sweep(s, now);
        }
        if s.burst_ms > 0 && level.folds() {
            match self.floods.iter().position(|f| f.is(level, bundle, kind)) {
                Some(i) => {
                    let flood = &mut self.floods[i];
                    if now.saturating_sub(flood.written_ms) < s.burst_ms {
                        flood.suppressed = flood.suppressed.saturating_add(1);
                        return;
                    }
                    // The burst is over: account for it before the event that opens the next.
                    self.summarize(s, now, i);
                    let flood = &mut self.floods[i];
                    flood.written_ms = now;
                    flood.since_ms = now;
                }
                None => {
                    if self.floods.len() >= MAX_FLOOD_KEYS {
                        self.evict_oldest(s, now);
                    }
                    self.floods.push(Flood {
                        level,
                        bundle: bundle.to_owned(),
                        kind,
                        written_ms: now,
                        since_ms: now,
                        suppressed: 0,
                    });
                }
            }
        }
        self.write_event(s, now, level, bundle, msg);
    }

    /// Writes the summaries of keys whose burst has ended and forgets them, so a flood that
    /// stops is reported even if that key never logs again.
    fn sweep(&mut self, s: &Settings, now: u64) {
        let mut i = 0;
        while i < self.floods.len() {
            if now.saturating_sub(self.floods[i].written_ms) >= s.burst_ms {
                self.summarize(s, now, i);
                self.floods.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn evict_oldest(&mut self, s: &Settings, now: u64) {
        let oldest = (0..self.floods.len()).min_by_key(|&i| self.floods[i].written_ms);
        if let Some(i) = oldest {
            self.summarize(s, now, i);
            self.floods.swap_remove(i);
        }
    }

    /// Writes the "N more events suppressed" line of flood `i`, if it has suppressed any.
    fn summarize(&mut self, s: &Settings, now: u64, i: usize) {
        let flood = &mut self.floods[i];
        if flood.suppressed == 0 {
            return;
        }
        let (level, kind, count) = (flood.level, flood.kind, flood.suppressed);
        let secs = now.saturating_sub(flood.since_ms).div_ceil(1000).max(1);
        flood.suppressed = 0;
        flood.since_ms = now;
        let bundle = std::mem::take(&mut flood.bundle);
        let events = if count == 1 { "event" } else { "events" };
        self.write_event(
            s,
            now,
            level,
            &bundle,
            format_args!("{kind}: {count} more {events} suppressed in the last {secs} s"),
        );
        self.floods[i].bundle = bundle;
    }

    fn write_event(
        &mut self,
        s: &Settings,
        now: u64,
        level: Level,
        bundle: &str,
        msg: fmt::Arguments<'_>,
    ) {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        format_line(&mut line, now, level, bundle, msg);
        if s.window.is_some() && level.shown_in_window() {
            self.to_window.push(line.clone());
        }
        if s.path.is_some() {
            line.push('\n');
            self.write_to_file(s, now, &line);
        }
        self.line = line;
    }

    fn write_to_file(&mut self, s: &Settings, now: u64, line: &str) {
        if self.lost_lines > 0 {
            // Tell the administrator about the gap once writing works again.
            let mut notice = String::new();
            let lost = self.lost_lines;
            let lines = if lost == 1 { "line" } else { "lines" };
            format_line(
                &mut notice,
                now,
                Level::Err,
                "",
                format_args!("ipsec.log: {lost} {lines} lost to write errors"),
            );
            notice.push('\n');
            if !self.append(s, now, &notice) {
                self.lost_lines = self.lost_lines.saturating_add(1);
                return;
            }
            self.lost_lines = 0;
        }
        if !self.append(s, now, line) {
            self.lost_lines = self.lost_lines.saturating_add(1);
        }
    }

    fn append(&mut self, s: &Settings, now: u64, line: &str) -> bool {
        match self.try_append(s, now, line.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                self.io_failed(s, now, "cannot write", &e);
                false
            }
        }
    }

    fn try_append(&mut self, s: &Settings, now: u64, line: &[u8]) -> io::Result<()> {
        let Some(path) = s.path.as_deref() else {
            return Ok(());
        };
        if self.file.is_none() {
            let file = open_append(path)?;
            self.size = file.metadata()?.len();
            self.file = Some(file);
        }
        if self.size > 0 && self.size.saturating_add(line.len() as u64) > s.max_bytes {
            if let Err(e) = self.rotate(s, path) {
                self.io_failed(s, now, "cannot rotate", &e);
                // Losing the old lines beats filling the disk: restart the current file.
                self.file = None;
                let file = open_append(path)?;
                file.set_len(0)?;
                self.file = Some(file);
                self.size = 0;
            }
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(open_append(path)?),
        };
        // One write call per line: with O_APPEND a line is never interleaved with another
        // writer's. A short write (disk nearly full) is completed rather than left half a line.
        let written = file.write(line)?;
        self.size += written as u64;
        if written < line.len() {
            file.write_all(&line[written..])?;
            self.size += (line.len() - written) as u64;
        }
        Ok(())
    }

    /// `ipsec.log` → `ipsec.log.1` → ... → `ipsec.log.<keep>`; the next write opens a new file.
    fn rotate(&mut self, s: &Settings, path: &Path) -> io::Result<()> {
        if s.keep == 0 {
            if let Some(file) = &self.file {
                file.set_len(0)?;
            }
            self.size = 0;
            return Ok(());
        }
        // Closed first: Windows cannot rename an open file.
        self.file = None;
        // Removed first: on Windows, rename does not replace an existing file.
        ignore_not_found(fs::remove_file(rotated(path, s.keep)))?;
        for n in (1..s.keep).rev() {
            ignore_not_found(fs::rename(rotated(path, n), rotated(path, n + 1)))?;
        }
        fs::rename(path, rotated(path, 1))?;
        self.size = 0;
        Ok(())
    }

    fn io_failed(&mut self, s: &Settings, now: u64, what: &str, e: &io::Error) {
        // Reported once: a full disk would otherwise put a line in the window per event.
        if self.io_error_reported {
            return;
        }
        self.io_error_reported = true;
        if s.window.is_some() {
            let path = s.path.as_deref().unwrap_or(Path::new("ipsec.log"));
            let mut line = String::new();
            format_line(
                &mut line,
                now,
                Level::Err,
                "",
                format_args!(
                    "{what} {}: {e}; further log file errors are not shown, lost lines are counted",
                    path.display()
                ),
            );
            self.to_window.push(line);
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `ipsec.log.<n>`
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn ignore_not_found(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `[YYYY-MM-DD HH:MM:SS.mmm][PFX][bundle][message]`, without line terminator.
fn format_line(out: &mut String, now_ms: u64, level: Level, bundle: &str, msg: fmt::Arguments<'_>) {
    // Writing into a String cannot fail; an error can only come from a Display impl in
    // `msg`, and then the text written so far is kept.
    let _ = write!(
        out,
        "[{}][{}][",
        UtcTime::from_unix_ms(now_ms),
        level.prefix()
    );
    if bundle.is_empty() {
        out.push('-');
    } else {
        let mut field = OneLine::new(out, MAX_BUNDLE_BYTES, true);
        let _ = field.write_str(bundle);
        field.finish();
    }
    out.push_str("][");
    let mut field = OneLine::new(out, MAX_MESSAGE_BYTES, false);
    let _ = field.write_fmt(msg);
    field.finish();
    out.push(']');
}

/// Appends text as part of one log line: control characters (and line separators) become
/// `?` so that an event can never forge a second line, and text beyond `limit` bytes is cut
/// at a char boundary and marked with `...`.
struct OneLine<'a> {
    out: &'a mut String,
    room: usize,
    /// The bundle field is followed by more fields, so brackets there would confuse parsers.
    no_brackets: bool,
    cut: bool,
}

impl<'a> OneLine<'a> {
    fn new(out: &'a mut String, limit: usize, no_brackets: bool) -> Self {
        OneLine {
            out,
            room: limit,
            no_brackets,
            cut: false,
        }
    }

    fn finish(self) {
        if self.cut {
            self.out.push_str("...");
        }
    }
}

impl fmt::Write for OneLine<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.cut {
                break;
            }
            let unsafe_char = c.is_control()
                || c == '\u{2028}'
                || c == '\u{2029}'
                || (self.no_brackets && (c == '[' || c == ']'));
            let c = if unsafe_char { '?' } else { c };
            if c.len_utf8() > self.room {
                self.cut = true;
                break;
            }
            self.room -= c.len_utf8();
            self.out.push(c);
        }
        Ok(())
    }
}

/// A UTC civil time, printed as `YYYY-MM-DD HH:MM:SS.mmm` (also pluto.log's stamp).
pub struct UtcTime {
    year: i64,
    month: u32,
    day: u32,
    ms_of_day: u64,
}

impl UtcTime {
    pub fn from_unix_ms(ms: u64) -> Self {
        const MS_PER_DAY: u64 = 86_400_000;
        // u64 ms / ms-per-day is below 2^38, so the cast to i64 is exact.
        let (year, month, day) = civil_from_days((ms / MS_PER_DAY) as i64);
        UtcTime {
            year,
            month,
            day,
            ms_of_day: ms % MS_PER_DAY,
        }
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.ms_of_day;
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            self.year,
            self.month,
            self.day,
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>):
/// the calendar is shifted to start in March so that the leap day ends the year, and
/// counted in 400-year eras of 146097 days.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// A unique directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("ipsec-log-{}-{name}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn log(&self) -> PathBuf {
            self.0.join("ipsec.log")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_clock(start_ms: u64) -> (Arc<AtomicU64>, Clock) {
        let now = Arc::new(AtomicU64::new(start_ms));
        let reader = Arc::clone(&now);
        (now, Arc::new(move || reader.load(Ordering::SeqCst)))
    }

    fn recording_window() -> (Arc<Mutex<Vec<String>>>, OutputWindow) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        (
            lines,
            Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_owned())),
        )
    }

    fn options(path: &Path) -> LogOptions {
        LogOptions {
            path: Some(path.to_owned()),
            ..LogOptions::default()
        }
    }

    fn read_lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .expect("read log")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Checks `[YYYY-MM-DD HH:MM:SS.mmm][PFX][bundle][message]`.
    fn assert_well_formed(line: &str) {
        assert!(
            !line.chars().any(char::is_control),
            "control char in {line:?}"
        );
        let b = line.as_bytes();
        assert!(
            b.len() > 30 && b[0] == b'[' && b[24] == b']' && b[25] == b'[',
            "{line:?}"
        );
        for (i, &c) in b[1..24].iter().enumerate() {
            let expected_sep = match i {
                4 | 7 => Some(b'-'),
                10 => Some(b' '),
                13 | 16 => Some(b':'),
                19 => Some(b'.'),
                _ => None,
            };
            match expected_sep {
                Some(sep) => assert_eq!(c, sep, "{line:?}"),
                None => assert!(c.is_ascii_digit(), "{line:?}"),
            }
        }
        assert!(
            ["ERR", "SEC", "WRN", "INF", "IKE", "DBG"].contains(&&line[26..29]),
            "{line:?}"
        );
        assert_eq!(&line[29..31], "][", "{line:?}");
        let rest = &line[31..];
        let end = rest.find("][").expect("bundle field");
        assert!(end > 0 && !rest[..end].contains(['[', ']']), "{line:?}");
        assert!(rest.ends_with(']'), "{line:?}");
    }

    #[test]
    fn civil_from_days_matches_day_by_day_calendar() {
        // Oracle: walk the calendar one day at a time with the Gregorian leap rule.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for days in 0..(400 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn timestamps_are_utc_with_padded_milliseconds() {
        let cases = [
            (0, "1970-01-01 00:00:00.000"),
            // 1709251200 s is 2024-03-01T00:00:00Z, so one second less is the leap day.
            (1_709_251_199_007, "2024-02-29 23:59:59.007"),
            // 2000 is a leap year (divisible by 400): 951782400 s is 2000-02-29T00:00:00Z.
            (951_782_400_050, "2000-02-29 00:00:00.050"),
            // 2100 is not (divisible by 100): 4107542400 s is 2100-03-01T00:00:00Z.
            (4_107_542_399_999, "2100-02-28 23:59:59.999"),
            (4_107_542_400_000, "2100-03-01 00:00:00.000"),
        ];
        for (ms, text) in cases {
            assert_eq!(UtcTime::from_unix_ms(ms).to_string(), text);
        }
    }

    #[test]
    fn line_format_is_exact() {
        let dir = TempDir::new("format");
        let (_, clock) = fake_clock(1_709_251_199_007);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        log.event(
            Level::Inf,
            "vpn-a",
            "sa",
            format_args!("SA installed, SPI 0x{:08x}", 0x1234),
        );
        log.event(
            Level::Wrn,
            "",
            "perm",
            format_args!("isecrets.cfg is readable by others"),
        );
        assert_eq!(
            read_lines(&dir.log()),
            [
                "[2024-02-29 23:59:59.007][INF][vpn-a][SA installed, SPI 0x00001234]",
                "[2024-02-29 23:59:59.007][WRN][-][isecrets.cfg is readable by others]",
            ]
        );
        assert_eq!(log.path(), Some(dir.log().as_path()));
    }

    #[test]
    fn every_level_has_its_prefix() {
        let dir = TempDir::new("prefix");
        let (_, clock) = fake_clock(0);
        let opts = LogOptions {
            debug: true,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, None).unwrap();
        let levels = [
            Level::Err,
            Level::Sec,
            Level::Wrn,
            Level::Inf,
            Level::Ike,
            Level::Dbg,
        ];
        for level in levels {
            log.event(level, "b", "k", format_args!("m"));
        }
        let prefixes: Vec<String> = read_lines(&dir.log())
            .iter()
            .map(|l| l[26..29].to_owned())
            .collect();
        assert_eq!(prefixes, ["ERR", "SEC", "WRN", "INF", "IKE", "DBG"]);
    }

    #[test]
    fn window_gets_err_and_sec_lines_only() {
        let dir = TempDir::new("window");
        let (_, clock) = fake_clock(86_400_000 + 1);
        let (shown, window) = recording_window();
        let opts = LogOptions {
            debug: true,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, Some(window)).unwrap();
        log.event(
            Level::Err,
            "cfg",
            "config",
            format_args!("ipsec.cfg:3: bad key"),
        );
        log.event(Level::Sec, "vpn", "replay", format_args!("replayed packet"));
        log.event(Level::Wrn, "vpn", "weak", format_args!("DES is weak"));
        log.event(Level::Inf, "vpn", "sa", format_args!("activated"));
        log.event(Level::Ike, "vpn", "acquire", format_args!("ACQUIRE sent"));
        log.event(Level::Dbg, "vpn", "packet", format_args!("ESP seq 1"));
        let file = read_lines(&dir.log());
        assert_eq!(file.len(), 6);
        assert_eq!(*shown.lock().unwrap(), file[..2]);
        assert_eq!(
            file[0],
            "[1970-01-02 00:00:00.001][ERR][cfg][ipsec.cfg:3: bad key]"
        );
    }

    #[test]
    fn debug_is_hidden_unless_enabled() {
        let dir = TempDir::new("debug");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock.clone(), None).unwrap();
        assert!(!log.enabled(Level::Dbg));
        assert!(log.enabled(Level::Inf));
        log.event(Level::Dbg, "vpn", "packet", format_args!("hidden"));
        log.event(Level::Inf, "vpn", "sa", format_args!("shown"));
        let lines = read_lines(&dir.log());
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with("[INF][vpn][shown]"));
        drop(log);

        let opts = LogOptions {
            debug: true,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, None).unwrap();
        assert!(log.enabled(Level::Dbg));
        log.event(Level::Dbg, "vpn", "packet", format_args!("now shown"));
        assert!(read_lines(&dir.log())[1].ends_with("[DBG][vpn][now shown]"));
    }

    #[test]
    fn message_is_formatted_only_when_written() {
        struct Counted<'a>(&'a AtomicUsize);
        impl fmt::Display for Counted<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fetch_add(1, Ordering::SeqCst);
                f.write_str("x")
            }
        }
        let formatted = AtomicUsize::new(0);
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(LogOptions::default(), clock, None).unwrap();
        log.event(
            Level::Dbg,
            "vpn",
            "packet",
            format_args!("{}", Counted(&formatted)),
        );
        for _ in 0..10 {
            log.event(
                Level::Sec,
                "vpn",
                "icv-failure",
                format_args!("{}", Counted(&formatted)),
            );
        }
        assert_eq!(formatted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn newline_injection_stays_one_line() {
        let dir = TempDir::new("inject");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        let forged = "x]\n[1970-01-01 00:00:00.000][INF][vpn][forged";
        log.event(
            Level::Sec,
            "a\r\nb[c]",
            "policy",
            format_args!("peer said {forged}\u{2028}\u{1b}[31m\0"),
        );
        let lines = read_lines(&dir.log());
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0],
            "[1970-01-01 00:00:00.000][SEC][a??b?c?][peer said x]?[1970-01-01 00:00:00.000][INF][vpn][forged??[31m?]"
        );
        assert_well_formed(&lines[0]);
    }

    #[test]
    fn long_message_is_cut_at_a_char_boundary() {
        let dir = TempDir::new("long");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(
            LogOptions {
                burst_ms: 0,
                ..options(&dir.log())
            },
            clock,
            None,
        )
        .unwrap();
        let exact = "m".repeat(MAX_MESSAGE_BYTES);
        // 1 + 2 * 600 bytes: the 500th 'é' would end at byte 1001, so the cut is at 999.
        let long = format!("a{}", "é".repeat(600));
        log.event(Level::Inf, "", "k", format_args!("{exact}"));
        log.event(Level::Inf, "", "k", format_args!("{long}"));
        let lines = read_lines(&dir.log());
        assert_eq!(
            lines[0],
            format!("[1970-01-01 00:00:00.000][INF][-][{exact}]")
        );
        assert_eq!(
            lines[1],
            format!("[1970-01-01 00:00:00.000][INF][-][a{}...]", "é".repeat(499))
        );
    }

    #[test]
    fn flood_writes_first_line_and_a_count() {
        let dir = TempDir::new("flood");
        let (now, clock) = fake_clock(1_000_000);
        let (shown, window) = recording_window();
        let log = EventLog::open(options(&dir.log()), clock, Some(window)).unwrap();
        for i in 0..100_000u64 {
            now.store(1_000_000 + i / 20, Ordering::SeqCst); // 5 s of flood, inside the burst
            log.event(
                Level::Sec,
                "vpn",
                "icv-failure",
                format_args!("ICV mismatch, SPI 0x1000, seq {i}"),
            );
        }
        assert_eq!(read_lines(&dir.log()).len(), 1);
        assert_eq!(shown.lock().unwrap().len(), 1);
        log.flush();
        let lines = read_lines(&dir.log());
        assert_eq!(
            lines,
            [
                "[1970-01-01 00:16:40.000][SEC][vpn][ICV mismatch, SPI 0x1000, seq 0]",
                "[1970-01-01 00:16:44.999][SEC][vpn][icv-failure: 99999 more events suppressed in the last 5 s]",
            ]
        );
        assert_eq!(*shown.lock().unwrap(), lines);
        // Nothing pending any more: closing adds no line.
        drop(log);
        assert_eq!(read_lines(&dir.log()).len(), 2);
    }

    #[test]
    fn event_after_the_burst_writes_the_count_first() {
        let dir = TempDir::new("burst-end");
        let (now, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        for _ in 0..3 {
            log.event(Level::Sec, "vpn", "replay", format_args!("replay"));
        }
        now.store(10_000, Ordering::SeqCst);
        log.event(Level::Sec, "vpn", "replay", format_args!("replay again"));
        // Within the new burst: counted, written on drop.
        log.event(Level::Sec, "vpn", "replay", format_args!("replay"));
        drop(log);
        let lines = read_lines(&dir.log());
        assert_eq!(
            lines,
            [
                "[1970-01-01 00:00:00.000][SEC][vpn][replay]",
                "[1970-01-01 00:00:10.000][SEC][vpn][replay: 2 more events suppressed in the last 10 s]",
                "[1970-01-01 00:00:10.000][SEC][vpn][replay again]",
                "[1970-01-01 00:00:10.000][SEC][vpn][replay: 1 more event suppressed in the last 1 s]",
            ]
        );
    }

    #[test]
    fn different_bundles_levels_and_kinds_are_not_folded_together() {
        let dir = TempDir::new("keys");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(LogOptions { debug: true, ..options(&dir.log()) }, clock, None).unwrap();
        for _ in 0..5 {
            log.event(Level::Sec, "vpn-a", "replay", format_args!("a replay"));
            log.event(Level::Sec, "vpn-b", "replay", format_args!("b replay"));
            log.event(Level::Sec, "vpn-a", "icv-failure", format_args!("a icv"));
            log.event(Level::Dbg, "vpn-a", "replay", format_args!("a dbg"));
        }
        log.flush();
        let lines = read_lines(&dir.log());
        assert_eq!(lines.len(), 8);
        for (i, suffix) in [
            "[SEC][vpn-a][a replay]",
            "[SEC][vpn-b][b replay]",
            "[SEC][vpn-a][a icv]",
            "[DBG][vpn-a][a dbg]",
        ]
        .iter()
        .enumerate()
        {
            assert!(lines[i].ends_with(suffix), "{}", lines[i]);
        }
        let summaries = &lines[4..];
        for suffix in [
            "[SEC][vpn-a][replay: 4 more events suppressed in the last 1 s]",
            "[SEC][vpn-b][replay: 4 more events suppressed in the last 1 s]",
            "[SEC][vpn-a][icv-failure: 4 more events suppressed in the last 1 s]",
            "[DBG][vpn-a][replay: 4 more events suppressed in the last 1 s]",
        ] {
            assert!(
                summaries.iter().any(|l| l.ends_with(suffix)),
                "missing {suffix}"
            );
        }
    }

    #[test]
    fn life_cycle_events_and_errors_are_never_folded() {
        let dir = TempDir::new("nofold");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        for i in 0..3 {
            log.event(Level::Inf, "", "address", format_args!("address {i}"));
            log.event(Level::Err, "", "config", format_args!("error {i}"));
        }
        assert_eq!(read_lines(&dir.log()).len(), 6);
    }

    #[test]
    fn sweep_reports_a_flood_that_stopped() {
        let dir = TempDir::new("sweep");
        let (now, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        for _ in 0..7 {
            log.event(
                Level::Sec,
                "vpn",
                "unknown-spi",
                format_args!("unknown SPI 0x2000"),
            );
        }
        now.store(10_500, Ordering::SeqCst);
        log.event(Level::Inf, "vpn", "sa", format_args!("SA rekeyed"));
        let lines = read_lines(&dir.log());
        assert_eq!(
            lines[1..],
            [
                "[1970-01-01 00:00:10.500][SEC][vpn][unknown-spi: 6 more events suppressed in the last 11 s]",
                "[1970-01-01 00:00:10.500][INF][vpn][SA rekeyed]",
            ]
        );
        assert_eq!(log.lock().floods.len(), 0, "the ended flood is forgotten; INF is never folded");
    }

    #[test]
    fn flood_table_is_bounded_and_evicted_keys_are_summarized() {
        let dir = TempDir::new("evict");
        let (now, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        let keys = MAX_FLOOD_KEYS + 10;
        for i in 0..keys {
            // Each bundle twice: one line, one suppressed.
            now.store(i as u64, Ordering::SeqCst);
            log.event(
                Level::Sec,
                &format!("b{i}"),
                "replay",
                format_args!("replay"),
            );
            log.event(
                Level::Sec,
                &format!("b{i}"),
                "replay",
                format_args!("replay"),
            );
        }
        assert_eq!(log.lock().floods.len(), MAX_FLOOD_KEYS);
        let lines = read_lines(&dir.log());
        assert_eq!(lines.len(), keys + 10);
        for i in 0..10 {
            let summary = format!("[SEC][b{i}][replay: 1 more event suppressed in the last 1 s]");
            assert!(
                lines.iter().any(|l| l.ends_with(&summary)),
                "no summary for b{i}"
            );
        }
        log.flush();
        assert_eq!(read_lines(&dir.log()).len(), 2 * keys);
    }

    #[test]
    fn zero_burst_writes_every_event() {
        let dir = TempDir::new("noburst");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(
            LogOptions {
                burst_ms: 0,
                ..options(&dir.log())
            },
            clock,
            None,
        )
        .unwrap();
        for _ in 0..5 {
            log.event(Level::Sec, "vpn", "replay", format_args!("replay"));
        }
        assert_eq!(read_lines(&dir.log()).len(), 5);
    }

    #[test]
    fn rotation_keeps_the_size_cap_and_names() {
        let dir = TempDir::new("rotate");
        let (now, clock) = fake_clock(0);
        let (max_bytes, keep) = (500u64, 2u32);
        let opts = LogOptions {
            max_bytes,
            keep,
            burst_ms: 0,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, None).unwrap();
        for i in 0..200u64 {
            now.store(i, Ordering::SeqCst);
            log.event(Level::Inf, "vpn", "sa", format_args!("event number {i}"));
        }
        let names = ["ipsec.log", "ipsec.log.1", "ipsec.log.2"];
        let mut total = 0;
        for name in names {
            let len = fs::metadata(dir.0.join(name)).expect(name).len();
            assert!(len > 0 && len <= max_bytes, "{name}: {len}");
            total += len;
            read_lines(&dir.0.join(name))
                .iter()
                .for_each(|l| assert_well_formed(l));
        }
        assert!(total <= u64::from(keep + 1) * max_bytes);
        assert!(!dir.0.join("ipsec.log.3").exists());
        let mut entries: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        entries.sort();
        assert_eq!(entries, names);
        // Newest in ipsec.log, and ipsec.log.1 holds the lines just before it.
        let current = read_lines(&dir.log());
        assert!(current.last().unwrap().ends_with("[event number 199]"));
        let previous = read_lines(&dir.0.join("ipsec.log.1"));
        let first_current: u64 = current[0]
            .rsplit(' ')
            .next()
            .unwrap()
            .trim_end_matches(']')
            .parse()
            .unwrap();
        assert!(previous
            .last()
            .unwrap()
            .ends_with(&format!("[event number {}]", first_current - 1)));
    }

    #[test]
    fn keep_zero_truncates_and_restarts() {
        let dir = TempDir::new("keep0");
        let (_, clock) = fake_clock(0);
        let opts = LogOptions {
            max_bytes: 300,
            keep: 0,
            burst_ms: 0,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, None).unwrap();
        for i in 0..50 {
            log.event(Level::Inf, "vpn", "sa", format_args!("event number {i}"));
        }
        assert!(fs::metadata(dir.log()).unwrap().len() <= 300);
        assert!(read_lines(&dir.log())
            .last()
            .unwrap()
            .ends_with("[event number 49]"));
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn existing_file_length_counts_toward_the_cap() {
        let dir = TempDir::new("existing");
        fs::write(dir.log(), "x".repeat(450)).unwrap();
        let (_, clock) = fake_clock(0);
        let opts = LogOptions {
            max_bytes: 500,
            keep: 1,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, None).unwrap();
        log.event(Level::Inf, "vpn", "loaded", format_args!("plugin loaded"));
        assert_eq!(
            fs::read_to_string(dir.0.join("ipsec.log.1")).unwrap(),
            "x".repeat(450)
        );
        assert_eq!(
            read_lines(&dir.log()),
            ["[1970-01-01 00:00:00.000][INF][vpn][plugin loaded]"]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn write_errors_are_counted_and_reported_once() {
        // Every write to /dev/full fails with ENOSPC, like a full disk.
        let (_, clock) = fake_clock(0);
        let (shown, window) = recording_window();
        let opts = LogOptions {
            burst_ms: 0,
            ..options(Path::new("/dev/full"))
        };
        let log = EventLog::open(opts, clock, Some(window)).unwrap();
        for _ in 0..5 {
            log.event(Level::Inf, "vpn", "sa", format_args!("lost"));
        }
        assert_eq!(log.lock().lost_lines, 5);
        let shown = shown.lock().unwrap();
        assert_eq!(shown.len(), 1);
        assert!(
            shown[0].starts_with("[1970-01-01 00:00:00.000][ERR][-][cannot write /dev/full: "),
            "{}",
            shown[0]
        );
    }

    #[test]
    fn failed_rotation_restarts_the_file_instead_of_growing() {
        let dir = TempDir::new("rotate-fail");
        // A non-empty directory where the rotated file should go makes the rename fail.
        let blocker = dir.0.join("ipsec.log.1");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("keep-me"), "x").unwrap();
        let (_, clock) = fake_clock(0);
        let (shown, window) = recording_window();
        let opts = LogOptions {
            max_bytes: 300,
            keep: 1,
            burst_ms: 0,
            ..options(&dir.log())
        };
        let log = EventLog::open(opts, clock, Some(window)).unwrap();
        for i in 0..50 {
            log.event(Level::Inf, "vpn", "sa", format_args!("event number {i}"));
        }
        assert!(fs::metadata(dir.log()).unwrap().len() <= 300);
        assert!(read_lines(&dir.log())
            .last()
            .unwrap()
            .ends_with("[event number 49]"));
        let shown = shown.lock().unwrap();
        assert_eq!(shown.len(), 1);
        assert!(shown[0].contains("[ERR][-][cannot rotate "), "{}", shown[0]);
        assert_eq!(log.lock().lost_lines, 0);
    }

    #[test]
    fn lost_lines_are_reported_once_writing_works_again() {
        let dir = TempDir::new("recover");
        let (_, clock) = fake_clock(0);
        let log = EventLog::open(options(&dir.log()), clock, None).unwrap();
        log.lock().lost_lines = 3;
        log.event(Level::Inf, "vpn", "sa", format_args!("back"));
        assert_eq!(
            read_lines(&dir.log()),
            [
                "[1970-01-01 00:00:00.000][ERR][-][ipsec.log: 3 lines lost to write errors]",
                "[1970-01-01 00:00:00.000][INF][vpn][back]",
            ]
        );
    }

    #[test]
    fn window_only_log_without_a_file() {
        let (_, clock) = fake_clock(0);
        let (shown, window) = recording_window();
        let log = EventLog::open(LogOptions::default(), clock, Some(window)).unwrap();
        assert_eq!(log.path(), None);
        log.event(Level::Sec, "vpn", "replay", format_args!("replay"));
        log.event(Level::Inf, "vpn", "sa", format_args!("not shown"));
        assert_eq!(
            *shown.lock().unwrap(),
            ["[1970-01-01 00:00:00.000][SEC][vpn][replay]"]
        );
    }

    #[test]
    fn concurrent_events_are_whole_lines() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<EventLog>();

        let dir = TempDir::new("threads");
        let (now, clock) = fake_clock(0);
        let opts = LogOptions {
            burst_ms: 0,
            ..options(&dir.log())
        };
        let log = Arc::new(EventLog::open(opts, clock, None).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = Arc::clone(&log);
                let now = Arc::clone(&now);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        now.fetch_add(1, Ordering::SeqCst);
                        log.event(
                            Level::Sec,
                            &format!("thread-{t}"),
                            "replay",
                            format_args!("thread {t} event {i}"),
                        );
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let lines = read_lines(&dir.log());
        assert_eq!(lines.len(), 4000);
        lines.iter().for_each(|l| assert_well_formed(l));
        for t in 0..4 {
            let mine: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains(&format!("[thread-{t}]")))
                .collect();
            assert_eq!(mine.len(), 1000);
            assert!(mine
                .last()
                .unwrap()
                .ends_with(&format!("[thread {t} event 999]")));
        }
    }
}
