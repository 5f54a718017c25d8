//! `pinit` against a real plugin instance and a fake keying daemon.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ipsec_plugin::ipc::{self, Message, MsgType, Sender};
use ipsec_plugin::{Direction, Host, Options, Plugin};

struct QuietHost;

impl Host for QuietHost {
    fn output_window(&self, _: &str) {}
    fn now_ms(&self) -> u64 {
        0
    }
    fn emit_packet(&self, _: Direction, _: &[u8]) {}
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pinit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn plugin(dir: &std::path::Path) -> Plugin {
    std::fs::write(dir.join("ipsec.cfg"), "[vpn]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nesp = aes128-sha1\nkeying = ike\n").unwrap();
    let options = Options { config_path: dir.to_path_buf(), log_path: None, log_max_bytes: 0, debug: false };
    Plugin::open(options, Arc::new(QuietHost)).unwrap().0
}

fn pinit(socket: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pinit")).arg("--socket").arg(socket).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn read_type(s: &mut std::os::unix::net::UnixStream) -> MsgType {
    let mut head = vec![0u8; ipc::HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let len = ipc::message_len(&head).unwrap().unwrap();
    head.resize(len, 0);
    s.read_exact(&mut head[ipc::HEADER_LEN..]).unwrap();
    Message::decode_from(&head, Sender::Plugin).unwrap().header.msg_type
}

#[test]
fn pinit_reinitializes_the_daemon_and_says_so() {
    let dir = temp_dir("ok");
    let p = plugin(&dir);
    let control = dir.join("control.sock");
    p.control_listen(Some(&control)).unwrap();
    let daemon_sock = dir.join("pluto.ctl");
    let listener = UnixListener::bind(&daemon_sock).unwrap();
    p.daemon_connect(Some(&daemon_sock)).unwrap();
    let (mut d, _) = listener.accept().unwrap();
    d.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The plugin's own initialization.
    assert_eq!(read_type(&mut d), MsgType::Register);
    assert_eq!(read_type(&mut d), MsgType::SpdFlush);
    assert_eq!(read_type(&mut d), MsgType::SpdAdd);
    // pinit asks for it again.
    let (code, out, err) = pinit(&control);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("initialized: 1 IKE bundles sent"), "{out}");
    assert_eq!(read_type(&mut d), MsgType::Register);
    assert_eq!(read_type(&mut d), MsgType::SpdFlush);
    assert_eq!(read_type(&mut d), MsgType::SpdAdd);
}

#[test]
fn pinit_fails_clearly_without_a_daemon_or_a_plugin() {
    let dir = temp_dir("fail");
    let p = plugin(&dir);
    let control = dir.join("control.sock");
    p.control_listen(Some(&control)).unwrap();
    p.daemon_connect(Some(&dir.join("nobody-here.ctl"))).unwrap();
    let (code, _, err) = pinit(&control);
    assert_eq!(code, 1);
    assert!(err.contains("no keying daemon answers at"), "{err}");
    let (code, _, err) = pinit(&dir.join("no-such.sock"));
    assert_eq!(code, 1);
    assert!(err.contains("no plugin is listening"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_pinit")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
