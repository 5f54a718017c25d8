//! `ipsecdump [--socket PATH] [--json]`: the live SA table of a running plugin, read
//! through its control socket (`docs/control.md`).
//! `ipsecdump --config DIR [--json]`: the bundle table an ipsec.cfg configures, with the
//! same layout the running plugin dumps, so an administrator can check a file before
//! loading it.


use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use ipsec_plugin::{config, control, control_client, dump, spd::Spd, stats::Counters};

const USAGE: &str = "usage: ipsecdump [--socket PATH] [--json]
       ipsecdump --config DIR|FILE [--json]

Prints the SA bundle table in file order (the order of processing): each bundle's
selectors and SAs with their protocol, SPIs, algorithms, mode, keying, state, sequence
number, replay window, packets, bytes, drops by reason and age, then the global drop
counters. Key material is never shown.

Live (the default): asks the running plugin through its control socket, which only the
user the plugin runs as may use.
  --socket PATH   the control socket (default: $IPSEC_CONTROL, else
                  /run/ipsec-plugin/control.sock)

Offline: the table an ipsec.cfg configures, without a running plugin. Configuration
errors and warnings go to standard error, as file:line: key: message.
  --config PATH   ipsec.cfg, or the directory holding it

  --json          machine-readable output
  --help          this text

Exit status: 0 success; 1 cannot connect to the plugin (or the ipsec.cfg has errors);
2 usage; 3 the plugin's answer was not understood (protocol error).";

#[derive(Debug, PartialEq)]
enum Source {
    Live { socket: PathBuf },
    Offline { config: PathBuf },
}

#[derive(Debug)]
struct Args {
    source: Source,
    json: bool,
}

/// `env_socket` is `$IPSEC_CONTROL`, which `--socket` overrides.
fn parse_args(args: impl Iterator<Item = String>, env_socket: Option<String>) -> Result<Option<Args>, String> {
    let mut config = None;
    let mut socket = None;
    let mut json = false;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--json" => json = true,
            "--config" => config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?)),
            "--socket" => socket = Some(PathBuf::from(args.next().ok_or("--socket needs a path")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let source = match (config, socket) {
        (Some(_), Some(_)) => return Err("--config (offline) and --socket (live) exclude each other".into()),
        (Some(config), None) => Source::Offline { config },
        (None, Some(socket)) => Source::Live { socket },
        (None, None) => Source::Live {
            socket: env_socket.filter(|s| !s.is_empty()).map_or_else(|| PathBuf::from(control::DEFAULT_PATH), PathBuf::from),
        },
    };
    Ok(Some(Args { source, json }))
}

fn print_live(socket: &std::path::Path, json: bool) -> ExitCode {
    match control_client::dump(socket, json) {
        Ok(table) => {
            // A reader that went away (`| head`) is not an error of ours.
            let _ = std::io::stdout().lock().write_all(&table);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ipsecdump: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}

/// Standard output; a reader that went away (`| head`) is not an error of ours, and
/// must not become a panic the way `print!` makes it one.
fn out(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1), std::env::var("IPSEC_CONTROL").ok()) {
        Ok(Some(a)) => a,
        Ok(None) => {
            out(&format!("{USAGE}\n"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ipsecdump: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let config = match args.source {
        Source::Live { socket } => return print_live(&socket, args.json),
        Source::Offline { config } => config,
    };
    let file = if config.is_dir() { config.join("ipsec.cfg") } else { config };
    let cfg = match config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ipsecdump: cannot read {}: {e}", file.display());
            return ExitCode::from(1);
        }
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    for e in &cfg.errors {
        eprintln!("error: {e}");
    }
    let (spd, activation) = Spd::build(&cfg.bundles, &cfg.failed, None, 0, |_| None);
    for e in &activation {
        eprintln!("error: [{}] not activated: {}", e.bundle, e.message);
    }
    let global = Counters::default();
    if args.json {
        out(&dump::json(&spd, &global, 0));
    } else {
        out(&dump::text(&spd, &global, 0));
    }
    if cfg.errors.is_empty() && activation.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<Args>, String> {
        parse_args(v.iter().map(|s| s.to_string()), None)
    }

    fn live_at(path: &str) -> Source {
        Source::Live { socket: PathBuf::from(path) }
    }

    #[test]
    fn arguments() {
        assert!(args(&["--help"]).unwrap().is_none());
        let a = args(&["--config", "x", "--json"]).unwrap().unwrap();
        assert_eq!(a.source, Source::Offline { config: PathBuf::from("x") });
        assert!(a.json);
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--socket"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--socket", "s", "--config", "x"]).is_err());
    }

    #[test]
    fn live_socket_path_precedence() {
        let a = args(&[]).unwrap().unwrap();
        assert_eq!(a.source, live_at("/run/ipsec-plugin/control.sock"));
        assert!(!a.json);
        let env = |v: &[&str], e: &str| parse_args(v.iter().map(|s| s.to_string()), Some(e.into())).unwrap().unwrap().source;
        assert_eq!(env(&[], "/tmp/env.sock"), live_at("/tmp/env.sock"));
        assert_eq!(env(&[], ""), live_at("/run/ipsec-plugin/control.sock"));
        assert_eq!(env(&["--socket", "/tmp/arg.sock"], "/tmp/env.sock"), live_at("/tmp/arg.sock"));
        assert_eq!(env(&["--config", "x"], "/tmp/env.sock"), Source::Offline { config: PathBuf::from("x") });
        assert!(USAGE.contains(control::DEFAULT_PATH));
    }
}
