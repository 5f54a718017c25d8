//! host-sim: a host application that loads the IPsec plugin through its C ABI only
//! (libloading, include/ipsec_plugin.h mirrored in `abi`), as a C dialer or router would.
//! See `host-sim --help` and docs/host-sim.md.
#![deny(unsafe_code)]

mod abi;
mod args;
mod config;
mod demo;
mod net;
mod packet;
mod pcap;
mod plugin;
mod replay;
mod sys;
mod tun;

use std::process::ExitCode;

use args::{Command, UsageError};

fn main() -> ExitCode {
    let command = match args::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(UsageError(msg)) => {
            eprintln!("host-sim: {msg}\n{}\nTry `host-sim --help`.", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help(text) => {
            println!("{text}");
            if text == args::HELP {
                println!("\n{}", args::USAGE);
            }
            Ok(true)
        }
        Command::Version => {
            println!("host-sim {}", env!("CARGO_PKG_VERSION"));
            Ok(true)
        }
        Command::Demo(demo_args) => demo::run(&demo_args),
        Command::Tun(tun_args) => tun::run(&tun_args),
        Command::Replay(replay_args) => replay::run(&replay_args).map(|counts| {
            if counts.skipped > 0 {
                eprintln!("skipped {} frames that are not IPv4", counts.skipped);
            }
            if counts.emitted > 0 {
                eprintln!(
                    "wrote {} packets the plugin emitted on its own",
                    counts.emitted
                );
            }
            println!(
                "passed {}, transformed {}, dropped {}",
                counts.passed, counts.transformed, counts.dropped
            );
            true
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("host-sim: {msg}");
            ExitCode::FAILURE
        }
    }
}
