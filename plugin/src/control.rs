//! The control socket: a Unix stream socket through which the plugin's owner reads the live
//! SA table (`ipsecdump`). One request line in, one answer out, then the connection closes;
//! the protocol is described in `docs/control.md`.
//!
//! Only the owner may use it: the socket file is mode 0600, and every connection is checked
//! with the peer's credentials (SO_PEERCRED) against the plugin process's effective uid —
//! root included, since a file mode alone does not stop root and the table is the owner's.
//! Clients are served one at a time on one thread; a client gets at most
//! [`REQUEST_TIMEOUT`] to send its request, so a stuck client delays others only briefly.

#![deny(unsafe_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::net::sockopt::socket_peercred;
use rustix::process::{geteuid, Uid};

use crate::DumpFormat;

/// Renders the table on demand (the plugin passes a closure over itself).
pub type Render = Arc<dyn Fn(DumpFormat) -> String + Send + Sync>;
/// (Re)initializes the keying daemon for `pinit`: what happened, or why it failed.
pub type Init = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// What the server can be asked.
struct Handlers {
    render: Render,
    init: Option<Init>,
}

/// A parsed request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Dump(DumpFormat),
    /// `INIT 1`: what `pinit` sends.
    Init,
}

/// Where hosts put the socket unless they say otherwise.
pub const DEFAULT_PATH: &str = "/run/ipsec-plugin/control.sock";
/// The trailing number of every request line.
pub const PROTOCOL_VERSION: u32 = 1;
/// The longest request line, newline included.
pub const MAX_REQUEST: usize = 256;
/// How long a client has to send its whole request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one write of the answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that Drop removes only our own.
    file_id: (u64, u64),
    listener: UnixListener,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer").field("path", &self.path).finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Binds a Unix stream socket at `path` (replacing a stale socket file left by a dead
    /// process, but refusing to replace anything that is not a socket, and refusing a path
    /// where another live server answers), mode 0600, and serves it on one background thread.
    /// A missing parent directory is created with mode 0700.
    pub fn start(path: &Path, render: Render) -> io::Result<ControlServer> {
        Self::start_for(path, Handlers { render, init: None }, geteuid())
    }

    /// `start`, also answering `INIT 1` (pinit) with `init`.
    pub fn start_with_init(path: &Path, render: Render, init: Init) -> io::Result<ControlServer> {
        Self::start_for(path, Handlers { render, init: Some(init) }, geteuid())
    }

    /// `start`, serving `owner` instead of this process's effective uid (tests use it to
    /// see a refusal without a second user).
    fn start_for(path: &Path, handlers: Handlers, owner: Uid) -> io::Result<ControlServer> {
        let context = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("control socket {}: {what}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| context(e, "cannot create its directory"))?;
        }
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path).map_err(|e| context(e, "cannot bind"))?;
        // The socket exists with the umask's mode until this chmod; the peer-credential
        // check covers that instant.
        let bound = fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .and_then(|()| fs::symlink_metadata(path))
            .and_then(|meta| Ok((listener.try_clone()?, (meta.dev(), meta.ino()))));
        let (accepting, file_id) = match bound {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(context(e, "cannot set up"));
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ipsec-control".into())
            .spawn(move || serve_forever(&accepting, &handlers, owner, &stop_seen));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                let _ = fs::remove_file(path);
                return Err(context(e, "cannot start its thread"));
            }
        };
        Ok(ControlServer { path: path.to_path_buf(), file_id, listener, stop, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    /// Returns once the thread has finished the client it is serving, if any (bounded by
    /// the request and write timeouts).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening socket down makes a blocked accept() return (Linux); the
        // connection is the fallback wake-up where it does not.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Read);
        if let Some(thread) = self.thread.take() {
            if !thread.is_finished() {
                let _ = UnixStream::connect(&self.path);
            }
            let _ = thread.join();
        }
        // Another server may have replaced a file it took for stale; that one is not ours.
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Clears the way for bind: nothing there, or a socket nobody answers on (which is removed).
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("control socket {}: exists and is not a socket; not replacing it", path.display()),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("control socket {}: another server is listening on it", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
                e.kind(),
                format!("control socket {}: cannot remove the stale socket: {e}", path.display()),
            )),
            _ => Ok(()),
        },
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("control socket {}: cannot tell whether it is in use: {e}", path.display()),
        )),
    }
}

fn serve_forever(listener: &UnixListener, handlers: &Handlers, owner: Uid, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            // A client that goes away mid-answer is its own problem, not the server's.
            Ok((mut stream, _)) => drop(serve_one(&mut stream, handlers, owner)),
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted) => {}
            // Out of descriptors or memory: back off rather than spin.
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn serve_one(stream: &mut UnixStream, handlers: &Handlers, owner: Uid) -> io::Result<()> {
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // Checked before reading anything, so a stranger cannot hold the server up either.
    match socket_peercred(&*stream) {
        Ok(peer) if peer.uid == owner => {}
        _ => return reply_err(stream, "permission denied"),
    }
    let mut buf = [0u8; MAX_REQUEST];
    let request = match read_request(stream, &mut buf) {
        Ok(line) => match parse_request(line) {
            Ok(request) => request,
            Err(message) => return reply_err(stream, message),
        },
        Err(RequestError::TooLong) => return reply_err(stream, "request longer than 256 bytes"),
        Err(RequestError::Timeout) => return reply_err(stream, "no request line within 2 s"),
        Err(RequestError::Unterminated) => return reply_err(stream, "request line not ended by a newline"),
        Err(RequestError::Io(e)) => return Err(e),
    };
    // A bug in a handler must not take the socket down with it.
    let answer = match request {
        Request::Dump(format) => catch_unwind(AssertUnwindSafe(|| Ok((handlers.render)(format))))
            .unwrap_or(Err("internal error: the table could not be rendered".to_string())),
        Request::Init => match &handlers.init {
            Some(init) => catch_unwind(AssertUnwindSafe(|| init())).unwrap_or(Err("internal error in INIT".to_string())),
            None => Err("INIT is not served here".to_string()),
        },
    };
    match answer {
        Ok(text) => {
            // Whole lines in one write each, rather than write!'s one write per piece.
            stream.write_all(format!("OK {}\n", text.len()).as_bytes())?;
            stream.write_all(text.as_bytes())
        }
        Err(message) => reply_err(stream, &message.replace('\n', " ")),
    }
}

fn reply_err(stream: &mut UnixStream, message: &str) -> io::Result<()> {
    stream.write_all(format!("ERR {message}\n").as_bytes())
}

#[derive(Debug)]
enum RequestError {
    TooLong,
    Timeout,
    /// The client closed its side before a newline.
    Unterminated,
    Io(io::Error),
}

/// Reads up to the first newline, within [`REQUEST_TIMEOUT`] in all (not per read, so a
/// client dripping one byte at a time is cut off too). Returns the line without its newline.
fn read_request<'b>(stream: &mut UnixStream, buf: &'b mut [u8; MAX_REQUEST]) -> Result<&'b [u8], RequestError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(RequestError::TooLong);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RequestError::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(RequestError::Io)?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(RequestError::Unterminated),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(RequestError::Timeout),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(RequestError::Io(e)),
        };
        if let Some(end) = buf[len..len + n].iter().position(|&b| b == b'\n') {
            return Ok(&buf[..len + end]);
        }
        len += n;
    }
}

/// `DUMP TEXT 1`, `DUMP JSON 1` or `INIT 1`, exactly: single spaces, upper case, no
/// trailing blanks.
fn parse_request(line: &[u8]) -> Result<Request, &'static str> {
    if line == b"INIT 1" {
        return Ok(Request::Init);
    }
    let mut words = line.split(|&b| b == b' ');
    let (verb, format, version) = (words.next(), words.next(), words.next());
    if verb != Some(b"DUMP".as_slice()) {
        return Err("unknown request; expected DUMP TEXT 1, DUMP JSON 1 or INIT 1");
    }
    let format = match format {
        Some(b"TEXT") => DumpFormat::Text,
        Some(b"JSON") => DumpFormat::Json,
        _ => return Err("unknown format; expected TEXT or JSON"),
    };
    let version = version
        .filter(|v| !v.is_empty() && v.iter().all(u8::is_ascii_digit))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse::<u32>().ok());
    if version != Some(PROTOCOL_VERSION) || words.next().is_some() {
        return Err("unsupported protocol version; this server speaks 1");
    }
    Ok(Request::Dump(format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, AtomicU64};

    const TEXT: &str = "[host-to-host] transport 10.0.0.1 <-> 10.0.0.2\n";
    const JSON: &str = "{\"bundles\":[]}\n";

    /// A directory of its own under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir()
                .join(format!("ipsec-control-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn sock(&self) -> PathBuf {
            self.0.join("control.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A Render that counts how often it was asked.
    fn render() -> (Render, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let render: Render = Arc::new(move |format| {
            seen.fetch_add(1, Ordering::SeqCst);
            match format {
                DumpFormat::Text => TEXT.to_string(),
                DumpFormat::Json => JSON.to_string(),
            }
        });
        (render, calls)
    }

    /// Sends `request` and returns everything the server answers until it closes.
    fn ask(path: &Path, request: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer and close before it reads all of an over-long request.
        let _ = s.write_all(request);
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                // Unread request bytes make the close a reset, after the answer was read.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        String::from_utf8(answer).unwrap()
    }

    #[test]
    fn serves_text_and_json() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let server = ControlServer::start(&dir.sock(), r).unwrap();
        assert_eq!(server.path(), dir.sock());
        assert_eq!(ask(&dir.sock(), b"DUMP TEXT 1\n"), format!("OK {}\n{TEXT}", TEXT.len()));
        assert_eq!(ask(&dir.sock(), b"DUMP JSON 1\n"), format!("OK {}\n{JSON}", JSON.len()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn socket_is_mode_0600_and_directory_created_0700() {
        let dir = TempDir::new();
        let path = dir.0.join("run").join("control.sock");
        let (r, _) = render();
        let _server = ControlServer::start(&path, r).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(dir.0.join("run")).unwrap().mode() & 0o777, 0o700);
    }

    #[test]
    fn bad_requests_get_err_and_never_render() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        let cases: [(&[u8], &str); 10] = [
            (b"HELLO\n", "ERR unknown request"),
            (b"\n", "ERR unknown request"),
            (b"dump text 1\n", "ERR unknown request"),
            (b"DUMP XML 1\n", "ERR unknown format"),
            (b"DUMP TEXT\n", "ERR unsupported protocol version"),
            (b"DUMP TEXT 2\n", "ERR unsupported protocol version"),
            (b"DUMP TEXT 1 extra\n", "ERR unsupported protocol version"),
            (b"DUMP  TEXT 1\n", "ERR unknown format"),
            (b"\xff\x00\xfe DUMP\n", "ERR unknown request"),
            (b"DUMP TEXT 1", "ERR request line not ended by a newline"),
        ];
        for (request, expected) in cases {
            // The unterminated case needs the client's end shut to be seen as such.
            let mut s = UnixStream::connect(dir.sock()).unwrap();
            s.write_all(request).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut answer = String::new();
            s.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with(expected), "{request:?}: {answer:?}");
            assert!(answer.ends_with('\n') && answer.lines().count() == 1, "{answer:?}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn request_length_limit_is_256_bytes_with_newline() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        let mut at_limit = vec![b'A'; MAX_REQUEST - 1];
        at_limit.push(b'\n');
        assert!(ask(&dir.sock(), &at_limit).starts_with("ERR unknown request"));
        let mut over = vec![b'A'; MAX_REQUEST];
        over.push(b'\n');
        assert_eq!(ask(&dir.sock(), &over), "ERR request longer than 256 bytes\n");
        assert_eq!(ask(&dir.sock(), &[b'D'; 100_000]), "ERR request longer than 256 bytes\n");
        assert_eq!(ask(&dir.sock(), b"DUMP TEXT 1\n"), format!("OK {}\n{TEXT}", TEXT.len()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn silent_client_is_dropped_and_the_next_one_served() {
        let dir = TempDir::new();
        let (r, _) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        let started = Instant::now();
        let mut silent = UnixStream::connect(dir.sock()).unwrap();
        // Queued behind the silent client on the single server thread.
        let path = dir.sock();
        let next = std::thread::spawn(move || ask(&path, b"DUMP TEXT 1\n"));
        silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = String::new();
        silent.read_to_string(&mut answer).unwrap();
        let waited = started.elapsed();
        assert_eq!(answer, "ERR no request line within 2 s\n");
        assert!(waited >= REQUEST_TIMEOUT - Duration::from_millis(100) && waited < Duration::from_secs(8), "{waited:?}");
        assert_eq!(next.join().unwrap(), format!("OK {}\n{TEXT}", TEXT.len()));
    }

    #[test]
    fn dripping_client_is_cut_off_by_the_overall_deadline() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        let mut s = UnixStream::connect(dir.sock()).unwrap();
        let started = Instant::now();
        // Each byte arrives well within any per-read timeout; the line never completes in time.
        for &b in b"DUMP TEXT 1".iter().cycle().take(40) {
            if s.write_all(&[b]).is_err() || started.elapsed() > Duration::from_secs(6) {
                break;
            }
            std::thread::sleep(Duration::from_millis(150));
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        assert_eq!(String::from_utf8_lossy(&answer), "ERR no request line within 2 s\n");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn other_uid_is_refused_before_reading() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let stranger_owner = Uid::from_raw(geteuid().as_raw().wrapping_add(4242));
        let _server = ControlServer::start_for(&dir.sock(), Handlers { render: r, init: None }, stranger_owner).unwrap();
        assert_eq!(ask(&dir.sock(), b"DUMP TEXT 1\n"), "ERR permission denied\n");
        // Refused at once, even when the client sends nothing at all.
        let started = Instant::now();
        let mut silent = UnixStream::connect(dir.sock()).unwrap();
        let mut answer = String::new();
        silent.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "ERR permission denied\n");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn replaces_a_stale_socket() {
        let dir = TempDir::new();
        drop(UnixListener::bind(dir.sock()).unwrap());
        assert!(fs::symlink_metadata(dir.sock()).unwrap().file_type().is_socket());
        let (r, _) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        assert_eq!(ask(&dir.sock(), b"DUMP JSON 1\n"), format!("OK {}\n{JSON}", JSON.len()));
    }

    #[test]
    fn refuses_a_path_where_a_live_server_answers() {
        let dir = TempDir::new();
        let (r, _) = render();
        let first = ControlServer::start(&dir.sock(), r.clone()).unwrap();
        let err = ControlServer::start(&dir.sock(), r).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        assert!(err.to_string().contains("another server"), "{err}");
        assert_eq!(ask(first.path(), b"DUMP TEXT 1\n"), format!("OK {}\n{TEXT}", TEXT.len()));
    }

    #[test]
    fn refuses_to_clobber_what_is_not_a_socket() {
        let dir = TempDir::new();
        fs::write(dir.sock(), "precious").unwrap();
        let (r, _) = render();
        let err = ControlServer::start(&dir.sock(), r.clone()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read_to_string(dir.sock()).unwrap(), "precious");
        // Nor a symlink, even one to a stale socket.
        let target = dir.0.join("target.sock");
        drop(UnixListener::bind(&target).unwrap());
        let link = dir.0.join("link.sock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(ControlServer::start(&link, r).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    }

    #[test]
    fn drop_stops_promptly_and_removes_the_socket() {
        let dir = TempDir::new();
        let (r, _) = render();
        let server = ControlServer::start(&dir.sock(), r.clone()).unwrap();
        assert_eq!(ask(&dir.sock(), b"DUMP TEXT 1\n"), format!("OK {}\n{TEXT}", TEXT.len()));
        let started = Instant::now();
        drop(server);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(!dir.sock().exists());
        assert_eq!(UnixStream::connect(dir.sock()).unwrap_err().kind(), io::ErrorKind::NotFound);
        // The path is free again for a new server.
        let again = ControlServer::start(&dir.sock(), r).unwrap();
        assert_eq!(ask(again.path(), b"DUMP JSON 1\n"), format!("OK {}\n{JSON}", JSON.len()));
    }

    #[test]
    fn drop_leaves_a_socket_that_is_not_its_own() {
        let dir = TempDir::new();
        let (r, _) = render();
        let server = ControlServer::start(&dir.sock(), r).unwrap();
        fs::remove_file(dir.sock()).unwrap();
        let _other = UnixListener::bind(dir.sock()).unwrap();
        drop(server);
        assert!(fs::symlink_metadata(dir.sock()).unwrap().file_type().is_socket());
    }

    #[test]
    fn a_panicking_render_is_an_err_not_a_dead_server() {
        let dir = TempDir::new();
        let render: Render = Arc::new(|format| match format {
            DumpFormat::Text => panic!("rendering bug"),
            DumpFormat::Json => JSON.to_string(),
        });
        let _server = ControlServer::start(&dir.sock(), render).unwrap();
        assert!(ask(&dir.sock(), b"DUMP TEXT 1\n").starts_with("ERR internal error"));
        assert_eq!(ask(&dir.sock(), b"DUMP JSON 1\n"), format!("OK {}\n{JSON}", JSON.len()));
    }

    #[test]
    fn survives_a_hundred_bad_clients() {
        let dir = TempDir::new();
        let (r, calls) = render();
        let _server = ControlServer::start(&dir.sock(), r).unwrap();
        let bad: [&[u8]; 5] = [b"", b"GARBAGE\n", b"\0\0\0\0", &[b'x'; 1000], b"DUMP TEXT 9\n"];
        // Serial: each one connects, misbehaves and hangs up without reading the answer.
        for i in 0..50 {
            let mut s = UnixStream::connect(dir.sock()).unwrap();
            let _ = s.write_all(bad[i % bad.len()]);
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Concurrent: all at once, queued on the listener.
        let clients: Vec<_> = (0..50)
            .map(|i| {
                let path = dir.sock();
                std::thread::spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    let _ = s.write_all(bad[i % bad.len()]);
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    let mut answer = Vec::new();
                    let _ = s.read_to_end(&mut answer);
                    answer
                })
            })
            .collect();
        for c in clients {
            let answer = c.join().unwrap();
            assert!(answer.starts_with(b"ERR "), "{:?}", String::from_utf8_lossy(&answer));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(ask(&dir.sock(), b"DUMP TEXT 1\n"), format!("OK {}\n{TEXT}", TEXT.len()));
    }

    #[test]
    fn parses_exactly_the_documented_requests() {
        assert_eq!(parse_request(b"DUMP TEXT 1"), Ok(Request::Dump(DumpFormat::Text)));
        assert_eq!(parse_request(b"INIT 1"), Ok(Request::Init));
        assert_eq!(parse_request(b"DUMP JSON 1"), Ok(Request::Dump(DumpFormat::Json)));
        assert!(parse_request(b"DUMP JSON 01").is_ok(), "a version is a number");
        for bad in [&b"DUMP JSON 1 "[..], b"DUMP JSON -1", b"DUMP JSON +1", b"DUMP JSON 4294967297", b" DUMP JSON 1", b"DUMP\tJSON 1", b"DUMP TEXT 1\r"] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
    }
}
