//! `pluto`: the keying daemon process. See `pluto --help` and docs/pluto.md.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use pluto::daemon::{self, Options};
use pluto::log::PlutoLog;

const USAGE: &str = "usage: pluto [--nofork] [--stderrlog] [--logfile PATH] [--debug] [--ikeport N]
             [--natt-port N] [--nonat_traversal] [--secretsfile PATH] [--ctlbase PATH]
             [--ikekeylog PATH]
       pluto --help | --version";

const HELP: &str = "pluto: the Pluto-compatible IKEv1 keying daemon of the IPsec plugin.

It negotiates the SAs of the plugin's `keying = ike` bundles with Main Mode (pre-shared
keys from isecrets.cfg) and Quick Mode, and hands them to the plugin over the daemon link
<ctlbase>.ctl, which only its owner may use.

  --nofork            stay in the foreground (default: detach once the sockets are open)
  --stderrlog         log to standard error instead of the log file
  --logfile PATH      the log file (default: /var/log/pluto.log)
  --debug             also log DBG lines (every message in and out)
  --ikeport N         the UDP port IKE is spoken on (default 500)
  --natt-port N       the port IKE floats to behind NAT, and ESP-in-UDP uses (default 4500)
  --nonat_traversal   neither offer nor accept NAT traversal
  --secretsfile PATH  pre-shared keys (default: /etc/ipsec-plugin/isecrets.cfg)
  --ctlbase PATH      the link socket is PATH.ctl, the pid file PATH.pid
                      (default: /run/ipsec-plugin/pluto)
  --ikekeylog PATH    append each ISAKMP SA's initiator cookie and encryption key to
                      PATH (mode 0600) as Wireshark's ikev1_decryption_table wants them,
                      to read IKE exchanges in captures; the file holds keys: debug only

Exit status: 0 on a clean stop, 1 when it cannot start (the reason is on stderr and in
the log), 2 on a bad command line.";

struct Args {
    options: Options,
    fork: bool,
    stderr_log: bool,
    log_file: PathBuf,
    debug: bool,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        options: Options {
            ike_port: 500,
            nat_t_port: 4500,
            nat_traversal: true,
            secrets_file: PathBuf::from("/etc/ipsec-plugin/isecrets.cfg"),
            ctl_base: PathBuf::from("/run/ipsec-plugin/pluto"),
            ike_key_log: None,
        },
        fork: true,
        stderr_log: false,
        log_file: PathBuf::from("/var/log/pluto.log"),
        debug: false,
    };
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline.clone().or_else(|| argv.next()).ok_or_else(|| format!("{name} needs a value"))
        };
        let port = |name: &str, v: String| -> Result<u16, String> {
            v.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| format!("{name}: '{v}' is not a port (1-65535)"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                out(&format!("{HELP}\n\n{USAGE}\n"));
                return Ok(None);
            }
            "-V" | "--version" => {
                out(&format!("pluto {}\n", env!("CARGO_PKG_VERSION")));
                return Ok(None);
            }
            "--nofork" => args.fork = false,
            "--stderrlog" => args.stderr_log = true,
            "--debug" => args.debug = true,
            "--nonat_traversal" => args.options.nat_traversal = false,
            "--logfile" => args.log_file = value(&flag)?.into(),
            "--secretsfile" => args.options.secrets_file = value(&flag)?.into(),
            "--ctlbase" => args.options.ctl_base = value(&flag)?.into(),
            "--ikekeylog" => args.options.ike_key_log = Some(value(&flag)?.into()),
            "--ikeport" => args.options.ike_port = port(&flag, value(&flag)?)?,
            "--natt-port" => args.options.nat_t_port = port(&flag, value(&flag)?)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Some(args))
}

/// Detaching the way a service manager expects, without fork(): the same program runs
/// again in the foreground in its own session, and this one returns once the child's
/// socket answers (or the child has failed, whose reason is then in the log).
fn detach(args: &Args) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("pluto: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    let mut child_args: Vec<String> = std::env::args().skip(1).collect();
    child_args.push("--nofork".into());
    let mut command = Command::new(exe);
    command.args(child_args).stdin(Stdio::null()).stdout(Stdio::null());
    if !args.stderr_log {
        command.stderr(Stdio::null());
    }
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pluto: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let socket = args.options.ctl_socket();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("pluto: the daemon exited at once ({status}); see the log");
            return ExitCode::from(1);
        }
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("pluto: the daemon did not open {} within 10 s", socket.display());
    ExitCode::from(1)
}

/// Standard output, where a closed pipe (`pluto --help | head`) is no reason to panic.
fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pluto: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.fork {
        return detach(&args);
    }
    let log = if args.stderr_log {
        PlutoLog::stderr(args.debug)
    } else {
        match PlutoLog::file(&args.log_file, args.debug) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pluto: cannot open the log {}: {e}", args.log_file.display());
                return ExitCode::from(1);
            }
        }
    };
    match daemon::run(args.options, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pluto: {e}");
            ExitCode::from(1)
        }
    }
}
