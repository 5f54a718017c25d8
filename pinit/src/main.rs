//! `pinit`: asks the running plugin, through its control socket, to (re)initialize the
//! keying daemon — after the daemon was restarted, say. The plugin also notices a restarted
//! daemon by itself; `pinit` makes it happen now and says how it went.
//!
//! Exit status: 0 initialized; 1 no plugin to ask, or the plugin could not reach a daemon;
//! 2 usage; 3 the plugin answered something unexpected.

use std::path::PathBuf;
use std::process::ExitCode;

use ipsec_plugin::control::DEFAULT_PATH;
use ipsec_plugin::control_client::{self, ClientError};

const USAGE: &str = "usage: pinit [--socket PATH]

Asks the running IPsec plugin to (re)initialize the keying daemon (pluto): the plugin
sends it REGISTER and its keying = ike bundles again, as when it loads. Run it after
restarting the daemon; the plugin also does this by itself once it notices the new
daemon.

  --socket PATH   the plugin's control socket (default: $IPSEC_CONTROL, or
                  /run/ipsec-plugin/control.sock)
  --help          this text

Exit status: 0 done; 1 no plugin listening, or no keying daemon reachable;
2 usage error; 3 unexpected answer.";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<PathBuf>, String> {
    let mut socket = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--socket" => socket = Some(PathBuf::from(args.next().ok_or("--socket needs a path")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let from_env = std::env::var_os("IPSEC_CONTROL").filter(|v| !v.is_empty()).map(PathBuf::from);
    Ok(Some(socket.or(from_env).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))))
}

fn main() -> ExitCode {
    let socket = match parse_args(std::env::args().skip(1)) {
        Ok(Some(s)) => s,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pinit: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match control_client::init(&socket) {
        Ok(answer) => {
            print!("pinit: {}", String::from_utf8_lossy(&answer));
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(why)) => {
            eprintln!("pinit: {why}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("pinit: {e}");
            ExitCode::from(e.exit_status())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Option<PathBuf>, String> {
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        assert_eq!(args(&["--help"]), Ok(None));
        assert_eq!(args(&["--socket", "/x"]), Ok(Some(PathBuf::from("/x"))));
        assert!(args(&["--socket"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
