//! The client side of the control socket protocol (`docs/control.md`): one request line,
//! one answer. `ipsecdump` asks for the live table, `pinit` for a daemon initialization.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::control::PROTOCOL_VERSION;

/// A plugin rendering a very large table is slow, not stuck; one that says nothing for this
/// long is stuck.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longer than any `OK <len>` or `ERR <message>` line a server sends.
const MAX_STATUS_LINE: u64 = 1024;

#[derive(Debug)]
pub enum ClientError {
    /// Nothing to talk to at the path, or not allowed to: exit status 1.
    Connect(String),
    /// The plugin answered something this client does not understand: exit status 3.
    Protocol(String),
    /// The plugin understood and said no (`ERR ...`): exit status 3 for a dump; `pinit`
    /// treats a refused initialization as a failure of its own (exit status 1).
    Refused(String),
}

impl ClientError {
    pub fn exit_status(&self) -> u8 {
        match self {
            ClientError::Connect(_) => 1,
            ClientError::Protocol(_) | ClientError::Refused(_) => 3,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(m) | ClientError::Protocol(m) | ClientError::Refused(m) => f.write_str(m),
        }
    }
}

/// The table as the plugin at `socket` renders it, text or JSON.
pub fn dump(socket: &Path, json: bool) -> Result<Vec<u8>, ClientError> {
    request(socket, &format!("DUMP {} {PROTOCOL_VERSION}\n", if json { "JSON" } else { "TEXT" }))
}

/// Asks the plugin at `socket` to (re)initialize the keying daemon; its account of it.
pub fn init(socket: &Path) -> Result<Vec<u8>, ClientError> {
    request(socket, &format!("INIT {PROTOCOL_VERSION}\n"))
}

/// Sends one request line (with its newline) and returns the answer's body.
fn request(socket: &Path, request: &str) -> Result<Vec<u8>, ClientError> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| ClientError::Connect(format!("cannot connect to {}: {}", socket.display(), connect_reason(socket, &e))))?;
    let protocol = |what: String| ClientError::Protocol(format!("{}: {what}", socket.display()));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(|e| protocol(e.to_string()))?;
    // A server that refuses us may answer and close before reading: its answer still counts.
    let _ = (&stream).write_all(request.as_bytes());

    let mut answer = BufReader::new(&stream);
    let mut status = Vec::new();
    (&mut answer)
        .take(MAX_STATUS_LINE)
        .read_until(b'\n', &mut status)
        .map_err(|e| protocol(format!("no answer from the plugin: {e}")))?;
    let Some(status) = status.strip_suffix(b"\n") else {
        return Err(protocol(if status.is_empty() {
            "the plugin closed the connection without answering".into()
        } else {
            format!("unterminated answer {:?}", String::from_utf8_lossy(&status))
        }));
    };
    let status = String::from_utf8_lossy(status);
    if let Some(message) = status.strip_prefix("ERR ") {
        if message == "permission denied" {
            return Err(ClientError::Connect(format!("cannot use {}: {}", socket.display(), denied(socket))));
        }
        return Err(ClientError::Refused(format!("{}: the plugin refused the request: {message}", socket.display())));
    }
    let len = status
        .strip_prefix("OK ")
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| protocol(format!("unexpected answer {status:?}")))?;
    // Read what arrives rather than trusting `len` for an allocation.
    let mut table = Vec::new();
    (&mut answer)
        .take(len)
        .read_to_end(&mut table)
        .map_err(|e| protocol(format!("answer cut off after {} of {len} bytes: {e}", table.len())))?;
    if (table.len() as u64) < len {
        return Err(protocol(format!("answer cut off after {} of {len} bytes", table.len())));
    }
    Ok(table)
}

/// Why connecting failed, in the operator's terms.
fn connect_reason(socket: &Path, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no plugin is listening (there is no socket)".into(),
        io::ErrorKind::ConnectionRefused => match std::fs::symlink_metadata(socket) {
            Ok(meta) if !meta.file_type().is_socket() => "it is not a socket".into(),
            _ => "no plugin is listening (the socket is left over from one that exited)".into(),
        },
        io::ErrorKind::PermissionDenied => denied(socket),
        _ => e.to_string(),
    }
}

fn denied(socket: &Path) -> String {
    let me = rustix::process::geteuid().as_raw();
    match std::fs::metadata(socket) {
        Ok(meta) => format!("permission denied: the control socket belongs to uid {} (you are uid {me})", meta.uid()),
        Err(e) => format!("permission denied (you are uid {me}; the socket cannot be examined: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    /// A server that reads the request line and answers `answer` verbatim.
    fn fake_server(name: &str, answer: &'static [u8]) -> (PathBuf, std::thread::JoinHandle<String>) {
        let path = std::env::temp_dir().join(format!("ipsecdump-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            (&stream).write_all(answer).unwrap();
            request
        });
        (path, server)
    }

    fn fetch_from(name: &str, answer: &'static [u8], json: bool) -> (Result<Vec<u8>, ClientError>, String) {
        let (path, server) = fake_server(name, answer);
        let got = dump(&path, json);
        let request = server.join().unwrap();
        let _ = std::fs::remove_file(&path);
        (got, request)
    }

    #[test]
    fn sends_the_documented_requests_and_reads_exactly_len_bytes() {
        let (got, request) = fetch_from("ok-text", b"OK 5\nhello and more", false);
        assert_eq!(request, "DUMP TEXT 1\n");
        assert_eq!(got.unwrap(), b"hello");
        let (got, request) = fetch_from("ok-json", b"OK 2\n{}", true);
        assert_eq!(request, "DUMP JSON 1\n");
        assert_eq!(got.unwrap(), b"{}");
        assert_eq!(fetch_from("ok-empty", b"OK 0\n", false).0.unwrap(), b"");
    }

    #[test]
    fn malformed_answers_are_protocol_errors() {
        let cases: [(&str, &'static [u8], &str); 6] = [
            ("silent", b"", "without answering"),
            ("hello", b"HELLO\n", "unexpected answer"),
            ("no-len", b"OK \nabc", "unexpected answer"),
            ("neg-len", b"OK -3\nabc", "unexpected answer"),
            ("short", b"OK 100\nabc", "cut off after 3 of 100 bytes"),
            ("unterminated", b"OK 3", "unterminated answer"),
        ];
        for (name, answer, expected) in cases {
            match fetch_from(name, answer, false).0 {
                Err(e @ ClientError::Protocol(_)) => {
                    assert!(e.to_string().contains(expected), "{name}: {e}");
                    assert_eq!(e.exit_status(), 3);
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_err_answer_is_a_refusal() {
        match fetch_from("refused", b"ERR unsupported protocol version; this server speaks 2\n", false).0 {
            Err(e @ ClientError::Refused(_)) => {
                assert!(e.to_string().contains("refused the request: unsupported"), "{e}");
                assert_eq!(e.exit_status(), 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permission_denied_answer_is_a_connect_error() {
        match fetch_from("denied", b"ERR permission denied\n", false).0 {
            Err(e @ ClientError::Connect(_)) => {
                assert!(e.to_string().contains("permission denied"), "{e}");
                assert_eq!(e.exit_status(), 1);
            }
            other => panic!("{other:?}"),
        }
    }
}
