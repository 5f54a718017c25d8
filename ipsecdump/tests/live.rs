//! `ipsecdump` against a live control socket: a real plugin instance (configured from
//! cfg-samples/host-to-host) serves its table through `ControlServer`, and the built binary
//! reads it, as an operator would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ipsec_plugin::control::{ControlServer, Render};
use ipsec_plugin::{Direction, DumpFormat, Host, Options, Plugin};

const NOBODY: u32 = 65534;

/// A directory of its own under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("ipsecdump-live-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct QuietHost;

impl Host for QuietHost {
    fn output_window(&self, _line: &str) {}
    fn now_ms(&self) -> u64 {
        // Fixed, so that the table rendered for the check and the one served are the same.
        1_700_000_000_000
    }
    fn emit_packet(&self, _direction: Direction, _packet: &[u8]) {}
}

/// A plugin serving its table on `dir/control.sock`, and how many tables it has rendered.
struct Live {
    plugin: Arc<Plugin>,
    server: ControlServer,
    served: Arc<AtomicUsize>,
}

fn live_plugin(dir: &Path) -> Live {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cfg-samples/host-to-host/host1/ipsec.cfg");
    fs::copy(&sample, dir.join("ipsec.cfg")).unwrap();
    let options = Options { config_path: dir.to_path_buf(), log_path: None, log_max_bytes: 0, debug: false };
    let (plugin, errors) = Plugin::open(options, Arc::new(QuietHost)).unwrap();
    assert_eq!(errors, 0);
    let plugin = Arc::new(plugin);
    let served = Arc::new(AtomicUsize::new(0));
    let (p, s) = (Arc::clone(&plugin), Arc::clone(&served));
    let render: Render = Arc::new(move |format| {
        s.fetch_add(1, Ordering::SeqCst);
        p.dump(format)
    });
    let server = ControlServer::start(&dir.join("control.sock"), render).unwrap();
    Live { plugin, server, served }
}

fn ipsecdump(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ipsecdump")).args(args).env_remove("IPSEC_CONTROL").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[test]
fn text_table_is_the_plugins_own() {
    let dir = TempDir::new();
    let live = live_plugin(&dir.0);
    let out = ipsecdump(&["--socket", live.server.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), live.plugin.dump(DumpFormat::Text));
    assert!(stdout(&out).contains("[host1-host2]"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
    assert_eq!(live.served.load(Ordering::SeqCst), 1);
}

#[test]
fn json_table_is_the_plugins_own() {
    let dir = TempDir::new();
    let live = live_plugin(&dir.0);
    let out = ipsecdump(&["--json", "--socket", live.server.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), live.plugin.dump(DumpFormat::Json));
    assert!(stdout(&out).trim_start().starts_with('{') && stdout(&out).contains("host1-host2"));
    assert_eq!(live.served.load(Ordering::SeqCst), 1);
}

#[test]
fn socket_path_from_the_environment() {
    let dir = TempDir::new();
    let live = live_plugin(&dir.0);
    let out = Command::new(env!("CARGO_BIN_EXE_ipsecdump")).env("IPSEC_CONTROL", live.server.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), live.plugin.dump(DumpFormat::Text));
}

#[test]
fn missing_socket_says_which_path_and_exits_1() {
    let dir = TempDir::new();
    let absent = dir.0.join("absent.sock");
    let out = ipsecdump(&["--socket", absent.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(absent.to_str().unwrap()) && err.contains("no plugin is listening"), "{err}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn stale_socket_and_non_socket_exit_1() {
    let dir = TempDir::new();
    let stale = dir.0.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let out = ipsecdump(&["--socket", stale.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no plugin is listening"), "{}", stderr(&out));
    let file = dir.0.join("file.sock");
    fs::write(&file, "").unwrap();
    let out = ipsecdump(&["--socket", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    for args in [&["--socket"][..], &["--socket", "a", "--config", "b"], &["--frobnicate"]] {
        let out = ipsecdump(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("usage: ipsecdump"), "{args:?}");
    }
    let help = ipsecdump(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(stdout(&help).contains("--socket PATH") && stdout(&help).contains("--config PATH"));
}

#[test]
fn garbled_answer_exits_3() {
    let dir = TempDir::new();
    let path = dir.0.join("garbled.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (stream, _) = listener.accept().unwrap();
        std::io::BufReader::new(&stream).read_line(&mut String::new()).unwrap();
        (&stream).write_all(b"OK 1000\nonly this").unwrap();
    });
    let out = ipsecdump(&["--socket", path.to_str().unwrap()]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cut off"), "{}", stderr(&out));
}

/// Runs the ipsecdump binary as user nobody. The binary is copied beside the socket so that
/// nobody can reach it whatever the permissions on the build directory.
fn ipsecdump_as_nobody(dir: &Path, socket: &Path) -> Output {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root (CI runs as root): it runs ipsecdump as user nobody to check that \
         another user cannot use the control socket"
    );
    let exe = dir.join("ipsecdump");
    fs::copy(env!("CARGO_BIN_EXE_ipsecdump"), &exe).unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--"])
        .arg(&exe)
        .arg("--socket")
        .arg(socket)
        .env_remove("IPSEC_CONTROL")
        .output()
        .expect("setpriv (util-linux) runs the client as nobody")
}

#[test]
fn another_user_cannot_open_the_control_socket() {
    let dir = TempDir::new();
    let live = live_plugin(&dir.0);
    let out = ipsecdump_as_nobody(&dir.0, live.server.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied: the control socket belongs to uid 0 (you are uid 65534)"), "{err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(live.served.load(Ordering::SeqCst), 0);
}

#[test]
fn another_user_is_refused_by_peer_credentials_even_when_the_file_mode_allows() {
    let dir = TempDir::new();
    let live = live_plugin(&dir.0);
    // A host that loosens the mode must still not expose the table: the server checks the
    // connecting process's uid itself.
    fs::set_permissions(live.server.path(), fs::Permissions::from_mode(0o666)).unwrap();
    let out = ipsecdump_as_nobody(&dir.0, live.server.path());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(live.served.load(Ordering::SeqCst), 0);
    // The owner is still served afterwards.
    let own = ipsecdump(&["--socket", live.server.path().to_str().unwrap()]);
    assert_eq!(own.status.code(), Some(0), "{}", stderr(&own));
    assert_eq!(live.served.load(Ordering::SeqCst), 1);
}
