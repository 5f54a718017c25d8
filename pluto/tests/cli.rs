//! The `pluto` program's command line and start-up failures: clear messages and exit
//! codes, never a panic. (Keying itself is tested on virtual time in src/tests.rs and
//! between namespaces in tests/netns.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn pluto(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pluto")).args(args).output().expect("pluto runs")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pluto-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn help_and_usage_errors() {
    let help = pluto(&["--help"]);
    assert!(help.status.success());
    assert!(text(&help).contains("--ctlbase"), "{}", text(&help));
    for bad in [&["--bogus"][..], &["--ikeport"], &["--ikeport", "0"], &["--ikeport", "70000"], &["--natt-port=x"]] {
        let o = pluto(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
        assert!(text(&o).contains("usage:"), "{bad:?}: {}", text(&o));
    }
}

fn start_args<'a>(dir: &'a Path, secrets: &'a str, port: &'a str, natt: &'a str) -> Vec<String> {
    vec![
        "--nofork".into(),
        "--stderrlog".into(),
        "--secretsfile".into(),
        dir.join(secrets).display().to_string(),
        "--ctlbase".into(),
        dir.join("pluto").display().to_string(),
        "--ikeport".into(),
        port.into(),
        "--natt-port".into(),
        natt.into(),
    ]
}

#[test]
fn a_missing_or_malformed_secrets_file_stops_the_start() {
    let dir = scratch("secrets");
    let o = Command::new(env!("CARGO_BIN_EXE_pluto")).args(start_args(&dir, "absent.cfg", "15500", "15501")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("absent.cfg"), "{}", text(&o));
    std::fs::write(dir.join("bad.cfg"), "192.0.2.1 192.0.2.2 : RSA {\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_pluto")).args(start_args(&dir, "bad.cfg", "15500", "15501")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("bad.cfg:1"), "names file and line: {}", text(&o));
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused_and_a_stale_socket_replaced() {
    let dir = scratch("twice");
    let secrets = dir.join("isecrets.cfg");
    std::fs::write(&secrets, "192.0.2.1 192.0.2.2 : PSK \"x\"\n").unwrap();
    // A stale socket file, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(dir.join("pluto.ctl")).unwrap());
    let mut first = Command::new(env!("CARGO_BIN_EXE_pluto"))
        .args(start_args(&dir, "isecrets.cfg", "15510", "15511"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(dir.join("pluto.ctl")).is_err() {
        assert!(Instant::now() < deadline, "the first daemon never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(dir.join("pluto.ctl")).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
    assert_eq!(mode.unwrap() & 0o777, 0o600, "only the owner may use the link");
    let second = Command::new(env!("CARGO_BIN_EXE_pluto")).args(start_args(&dir, "isecrets.cfg", "15520", "15521")).output().unwrap();
    let _ = first.kill();
    let _ = first.wait();
    assert_eq!(second.status.code(), Some(1), "{}", text(&second));
    assert!(text(&second).contains("another keying daemon is running"), "{}", text(&second));
}

#[test]
fn a_secrets_file_others_can_read_is_warned_about() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("perms");
    let secrets = dir.join("isecrets.cfg");
    std::fs::write(&secrets, "192.0.2.1 192.0.2.2 : PSK \"x\"\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pluto"))
        .args(start_args(&dir, "isecrets.cfg", "15530", "15531"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let started = line.contains("started");
        lines.push(line);
        if started {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("[WRN]") && l.contains("isecrets.cfg")),
        "{lines:?}"
    );
}
