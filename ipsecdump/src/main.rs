//! `ipsecdump --config DIR [--json]`: the bundle table an ipsec.cfg configures, with the
//! same layout the running plugin dumps, so an administrator can check a file before
//! loading it. Exit status: 0 clean, 1 when the file has errors (they are printed).

use std::path::PathBuf;
use std::process::ExitCode;

use ipsec_plugin::{config, dump, spd::Spd, stats::Counters};

const USAGE: &str = "usage: ipsecdump --config DIR|FILE [--json]

Prints the SA bundle table configured by ipsec.cfg, in file order (the order of
processing), with each bundle's selectors and SAs; key material is never shown.
Configuration errors and warnings go to standard error, as file:line: key: message.

  --config PATH   ipsec.cfg, or the directory holding it
  --json          machine-readable output
  --help          this text

The live table of a running plugin is read through its control socket, which the
plugin does not offer yet; --config is required in this version.";

struct Args {
    config: PathBuf,
    json: bool,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = None;
    let mut json = false;
    let mut args = args;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--help" | "-h" => return Ok(None),
            "--json" => json = true,
            "--config" => config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?)),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let config = config.ok_or("--config DIR is required")?;
    Ok(Some(Args { config, json }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ipsecdump: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let file = if args.config.is_dir() { args.config.join("ipsec.cfg") } else { args.config.clone() };
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
    let (spd, activation) = Spd::build(&cfg.bundles, None, 0, |_| None);
    for e in &activation {
        eprintln!("error: [{}] not activated: {}", e.bundle, e.message);
    }
    let global = Counters::default();
    if args.json {
        print!("{}", dump::json(&spd, &global, 0));
    } else {
        print!("{}", dump::text(&spd, &global, 0));
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
        parse_args(v.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        assert!(args(&["--help"]).unwrap().is_none());
        let a = args(&["--config", "x", "--json"]).unwrap().unwrap();
        assert_eq!(a.config, PathBuf::from("x"));
        assert!(a.json);
        assert!(args(&[]).is_err());
        assert!(args(&["--config"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }
}
