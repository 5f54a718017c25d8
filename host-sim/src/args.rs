//! Command-line parsing, by hand: three subcommands with a handful of options do not need
//! a dependency. Every mistake is a `UsageError` (exit status 2), never a panic.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub const USAGE: &str = "\
usage:
  host-sim demo <scenario-dir> [--plugin PATH] [--log-dir DIR] [--debug]
  host-sim replay --config DIR --direction in|out --input IN.pcap --output OUT.pcap
                  [--local A.B.C.D] [--log PATH] [--keys FILE] [--plugin PATH] [--debug]
  host-sim tun --config DIR --tun NAME --outer-if IFACE [--local A.B.C.D] [--mtu N]
               [--tun-mtu N] [--keys FILE] [--control PATH] [--log PATH] [--plugin PATH]
               [--debug]
  host-sim <command> --help
  host-sim --version";

pub const HELP: &str = "\
host-sim: a host application that loads the IPsec plugin (libipsec_plugin.so) through
its C ABI only, the way a C dialer or router does.

commands:
  demo     run every machine of a cfg-samples scenario and send traffic between them
  replay   run the packets of a pcap file through one plugin instance
  tun      a real host: plaintext on a TUN interface, protected packets on the network

The plugin is the one named by --plugin, else libipsec_plugin.so beside the host-sim
executable (where `cargo build` puts both), else in deps/ below it.

Exit status: 0 success, 1 failure (see the message), 2 bad command line.";

pub const DEMO_HELP: &str = "\
usage: host-sim demo <scenario-dir> [--plugin PATH] [--log-dir DIR] [--debug]

Every sub-folder of <scenario-dir> that holds an ipsec.cfg is a machine with its own
plugin instance. host-sim derives the network from the configs (docs/host-sim.md), sends
an ICMP echo, a UDP datagram and a TCP segment for every bundle and a reply to each,
prints every packet on the wire and each machine's SA table.

options:
  --plugin PATH   the plugin library to load
  --log-dir DIR   write each machine's log to DIR/<machine>.log instead of ipsec.log
                  beside its ipsec.cfg
  --debug         open the plugins with IPSEC_OPEN_DEBUG (packet-level log lines)

Exit status 0 only when every packet arrived intact.";

pub const REPLAY_HELP: &str = "\
usage: host-sim replay --config DIR --direction in|out --input IN.pcap --output OUT.pcap
                       [--local A.B.C.D] [--log PATH] [--keys FILE] [--plugin PATH] [--debug]

Runs each IPv4 packet of IN.pcap through the inbound (in) or outbound (out) hook of one
plugin instance configured from DIR/ipsec.cfg, and writes the packets it passes or
transforms to OUT.pcap (link type RAW, 101). The pcap timestamps are the plugin's clock.
Input link types: RAW (101, 12, 14), IPV4 (228), Ethernet (1, with or without an 802.1Q
tag), Linux cooked (113); frames that are not IPv4 are skipped. Ends with one line:
  passed N, transformed N, dropped N
where held packets (waiting for keys) count as dropped.

options:
  --config DIR      directory of ipsec.cfg (or the file itself)
  --direction in|out
  --input FILE      classic pcap (not pcapng), either byte order, us or ns timestamps
  --output FILE     written as little-endian us pcap
  --local A.B.C.D   report this local address (connect) before the first packet
  --log PATH        the log file (default: ipsec.log in DIR)
  --keys FILE       keys for keying = ike bundles: [bundle] sections of manual-key
                    lines (esp_spi_out = 0x1001 ...), installed before the first packet
  --plugin PATH     the plugin library to load
  --debug           open the plugin with IPSEC_OPEN_DEBUG";

pub const TUN_HELP: &str = "\
usage: host-sim tun --config DIR --tun NAME --outer-if IFACE [--local A.B.C.D] [--mtu N]
                    [--tun-mtu N] [--keys FILE] [--control PATH] [--daemon PATH]
                    [--log PATH] [--plugin PATH] [--debug]

A long-running host (one per machine, as root): creates the TUN interface NAME and routes
the remote selectors of DIR/ipsec.cfg's bundles into it, so that the machine's own and
forwarded traffic for them goes through the plugin's outbound hook and leaves on IFACE as
raw IPv4 (ESP, AH, IPComp, or ESP in UDP 4500 for udp_encap bundles and NAT-T). ESP, AH,
IPComp and ESP-in-UDP packets that arrive go through the inbound hook, and what it returns goes into the
TUN. Prints `ready ...` on stdout when up; then reads commands on stdin, one per line,
each answered by lines ending in `ok ...` or `error ...`:

  connect A.B.C.D   the host has this address now (bundles with local = 0.0.0.0 use it)
  link-down         the dynamic address is gone
  reload            re-read ipsec.cfg (bundles, routes, MTU)
  dump [json]       the SA table
  stats             host-sim's own packet counters
  quit              exit (so do end of input, SIGTERM and SIGINT); the TUN goes away

options:
  --config DIR      directory of ipsec.cfg (or the file itself)
  --tun NAME        the TUN interface to create (at most 15 bytes)
  --outer-if IFACE  the interface protected packets leave on
  --local A.B.C.D   connect with this address at start
  --mtu N           the link MTU (default: IFACE's MTU); the TUN gets N minus the
                    plugin's worst-case overhead
  --tun-mtu N       give the TUN this MTU instead (the plugin then answers DF packets
                    that do not fit with ICMP fragmentation needed)
  --keys FILE       keys for keying = ike bundles, as for replay
  --control PATH    serve the live SA table on PATH (ipsecdump --socket PATH)
  --daemon PATH     the keying daemon's link socket for keying = ike bundles (default:
                    /run/ipsec-plugin/pluto.ctl; pluto --ctlbase P listens at P.ctl)
  --log PATH        the log file (default: ipsec.log in DIR)
  --plugin PATH     the plugin library to load
  --debug           open the plugin with IPSEC_OPEN_DEBUG";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help(&'static str),
    Version,
    Demo(DemoArgs),
    Replay(ReplayArgs),
    Tun(TunArgs),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunArgs {
    pub config: PathBuf,
    pub tun: String,
    pub outer_if: String,
    pub local: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
    pub tun_mtu: Option<u32>,
    pub keys: Option<PathBuf>,
    pub control: Option<PathBuf>,
    /// The keying daemon's socket (None: the plugin's default).
    pub daemon: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub plugin: Option<PathBuf>,
    pub debug: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoArgs {
    pub scenario: PathBuf,
    pub log_dir: Option<PathBuf>,
    pub plugin: Option<PathBuf>,
    pub debug: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayDirection {
    In,
    Out,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayArgs {
    pub config: PathBuf,
    pub direction: ReplayDirection,
    pub input: PathBuf,
    pub output: PathBuf,
    pub local: Option<Ipv4Addr>,
    pub log: Option<PathBuf>,
    pub keys: Option<PathBuf>,
    pub plugin: Option<PathBuf>,
    pub debug: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Splits `--name=value` / `--name value` / positionals, one at a time.
struct Args {
    rest: std::vec::IntoIter<OsString>,
}

enum Arg {
    Flag(String, Option<OsString>),
    Positional(OsString),
}

impl Args {
    fn next(&mut self) -> Option<Arg> {
        let arg = self.rest.next()?;
        match arg.to_str() {
            Some(s) if s.starts_with('-') && s.len() > 1 => Some(match s.split_once('=') {
                Some((name, value)) => Arg::Flag(name.to_string(), Some(value.into())),
                None => Arg::Flag(s.to_string(), None),
            }),
            _ => Some(Arg::Positional(arg)),
        }
    }

    fn value(&mut self, name: &str, inline: Option<OsString>) -> Result<OsString, UsageError> {
        inline
            .or_else(|| self.rest.next())
            .ok_or_else(|| UsageError(format!("{name} needs a value")))
    }
}

fn no_value(name: &str, inline: Option<OsString>) -> Result<(), UsageError> {
    match inline {
        Some(_) => Err(UsageError(format!("{name} takes no value"))),
        None => Ok(()),
    }
}

fn text(name: &str, value: OsString) -> Result<String, UsageError> {
    value
        .into_string()
        .map_err(|_| UsageError(format!("{name}: value is not UTF-8")))
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, UsageError> {
    let mut args = Args {
        rest: args.into_iter().collect::<Vec<_>>().into_iter(),
    };
    match args.next() {
        None => Err(UsageError("a command is required".into())),
        Some(Arg::Flag(f, _)) if f == "-h" || f == "--help" => Ok(Command::Help(HELP)),
        Some(Arg::Flag(f, _)) if f == "-V" || f == "--version" => Ok(Command::Version),
        Some(Arg::Flag(f, _)) => Err(UsageError(format!("unknown option {f}"))),
        Some(Arg::Positional(cmd)) => match cmd.to_str() {
            Some("demo") => parse_demo(args),
            Some("replay") => parse_replay(args),
            Some("tun") => parse_tun(args),
            Some("help") => Ok(Command::Help(HELP)),
            _ => Err(UsageError(format!(
                "unknown command {}",
                cmd.to_string_lossy()
            ))),
        },
    }
}

fn parse_demo(mut args: Args) -> Result<Command, UsageError> {
    let (mut scenario, mut log_dir, mut plugin, mut debug) = (None, None, None, false);
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag(f, _) if f == "-h" || f == "--help" => return Ok(Command::Help(DEMO_HELP)),
            Arg::Flag(f, v) if f == "--plugin" => plugin = Some(args.value(&f, v)?.into()),
            Arg::Flag(f, v) if f == "--log-dir" => log_dir = Some(args.value(&f, v)?.into()),
            Arg::Flag(f, v) if f == "--debug" => {
                no_value(&f, v)?;
                debug = true;
            }
            Arg::Flag(f, _) => return Err(UsageError(format!("demo: unknown option {f}"))),
            Arg::Positional(p) if scenario.is_none() => scenario = Some(PathBuf::from(p)),
            Arg::Positional(p) => {
                return Err(UsageError(format!(
                    "demo: unexpected argument {}",
                    p.to_string_lossy()
                )))
            }
        }
    }
    let scenario = scenario.ok_or_else(|| UsageError("demo: <scenario-dir> is required".into()))?;
    Ok(Command::Demo(DemoArgs {
        scenario,
        log_dir,
        plugin,
        debug,
    }))
}

fn parse_replay(mut args: Args) -> Result<Command, UsageError> {
    let (mut config, mut direction, mut input, mut output) = (None, None, None, None);
    let (mut local, mut log, mut keys, mut plugin, mut debug) = (None, None, None, None, false);
    while let Some(arg) = args.next() {
        let (f, v) = match arg {
            Arg::Flag(f, v) => (f, v),
            Arg::Positional(p) => {
                return Err(UsageError(format!(
                    "replay: unexpected argument {}",
                    p.to_string_lossy()
                )))
            }
        };
        match f.as_str() {
            "-h" | "--help" => return Ok(Command::Help(REPLAY_HELP)),
            "--config" => config = Some(args.value(&f, v)?.into()),
            "--input" => input = Some(args.value(&f, v)?.into()),
            "--output" => output = Some(args.value(&f, v)?.into()),
            "--log" => log = Some(args.value(&f, v)?.into()),
            "--keys" => keys = Some(args.value(&f, v)?.into()),
            "--plugin" => plugin = Some(args.value(&f, v)?.into()),
            "--debug" => {
                no_value(&f, v)?;
                debug = true;
            }
            "--direction" => {
                direction = Some(match text(&f, args.value(&f, v)?)?.as_str() {
                    "in" => ReplayDirection::In,
                    "out" => ReplayDirection::Out,
                    other => {
                        return Err(UsageError(format!(
                            "--direction must be in or out, not {other}"
                        )))
                    }
                })
            }
            "--local" => local = Some(ipv4(&f, args.value(&f, v)?)?),
            _ => return Err(UsageError(format!("replay: unknown option {f}"))),
        }
    }
    let required = |name: &str| UsageError(format!("replay: {name} is required"));
    Ok(Command::Replay(ReplayArgs {
        config: config.ok_or_else(|| required("--config"))?,
        direction: direction.ok_or_else(|| required("--direction"))?,
        input: input.ok_or_else(|| required("--input"))?,
        output: output.ok_or_else(|| required("--output"))?,
        local,
        log,
        keys,
        plugin,
        debug,
    }))
}

fn ipv4(name: &str, value: OsString) -> Result<Ipv4Addr, UsageError> {
    let value = text(name, value)?;
    value
        .parse()
        .map_err(|_| UsageError(format!("{name}: {value} is not an IPv4 address")))
}

/// An MTU: IPv4 needs at least 68 (RFC 791) and cannot carry more than 65535.
fn mtu(name: &str, value: OsString) -> Result<u32, UsageError> {
    let value = text(name, value)?;
    value
        .parse()
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| UsageError(format!("{name}: {value} is not an MTU (68-65535)")))
}

fn parse_tun(mut args: Args) -> Result<Command, UsageError> {
    let (mut config, mut tun, mut outer_if, mut local) = (None, None, None, None);
    let (mut link_mtu, mut tun_mtu, mut keys, mut control) = (None, None, None, None);
    let (mut log, mut plugin, mut debug, mut daemon) = (None, None, false, None);
    while let Some(arg) = args.next() {
        let (f, v) = match arg {
            Arg::Flag(f, v) => (f, v),
            Arg::Positional(p) => {
                return Err(UsageError(format!(
                    "tun: unexpected argument {}",
                    p.to_string_lossy()
                )))
            }
        };
        match f.as_str() {
            "-h" | "--help" => return Ok(Command::Help(TUN_HELP)),
            "--config" => config = Some(args.value(&f, v)?.into()),
            "--tun" => tun = Some(text(&f, args.value(&f, v)?)?),
            "--outer-if" => outer_if = Some(text(&f, args.value(&f, v)?)?),
            "--local" => local = Some(ipv4(&f, args.value(&f, v)?)?),
            "--mtu" => link_mtu = Some(mtu(&f, args.value(&f, v)?)?),
            "--tun-mtu" => tun_mtu = Some(mtu(&f, args.value(&f, v)?)?),
            "--keys" => keys = Some(args.value(&f, v)?.into()),
            "--control" => control = Some(args.value(&f, v)?.into()),
            "--daemon" => daemon = Some(args.value(&f, v)?.into()),
            "--log" => log = Some(args.value(&f, v)?.into()),
            "--plugin" => plugin = Some(args.value(&f, v)?.into()),
            "--debug" => {
                no_value(&f, v)?;
                debug = true;
            }
            _ => return Err(UsageError(format!("tun: unknown option {f}"))),
        }
    }
    let required = |name: &str| UsageError(format!("tun: {name} is required"));
    Ok(Command::Tun(TunArgs {
        config: config.ok_or_else(|| required("--config"))?,
        tun: tun.ok_or_else(|| required("--tun"))?,
        outer_if: outer_if.ok_or_else(|| required("--outer-if"))?,
        local,
        mtu: link_mtu,
        tun_mtu,
        keys,
        control,
        daemon,
        log,
        plugin,
        debug,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    fn error(args: &[&str]) -> String {
        match parse_str(args) {
            Err(UsageError(msg)) => msg,
            Ok(cmd) => panic!("{args:?} parsed as {cmd:?}"),
        }
    }

    #[test]
    fn parses_a_full_replay_command() {
        let cmd = parse_str(&[
            "replay",
            "--config",
            "cfg",
            "--direction=in",
            "--input",
            "in.pcap",
            "--output=out.pcap",
            "--local",
            "10.0.0.1",
            "--log",
            "x.log",
            "--keys",
            "k.txt",
            "--plugin",
            "lib.so",
            "--debug",
        ])
        .unwrap();
        assert_eq!(
            cmd,
            Command::Replay(ReplayArgs {
                config: "cfg".into(),
                direction: ReplayDirection::In,
                input: "in.pcap".into(),
                output: "out.pcap".into(),
                local: Some(Ipv4Addr::new(10, 0, 0, 1)),
                log: Some("x.log".into()),
                keys: Some("k.txt".into()),
                plugin: Some("lib.so".into()),
                debug: true,
            })
        );
    }

    #[test]
    fn parses_demo_and_help() {
        assert_eq!(
            parse_str(&["demo", "cfg-samples/net-net", "--log-dir", "/tmp/l"]).unwrap(),
            Command::Demo(DemoArgs {
                scenario: "cfg-samples/net-net".into(),
                log_dir: Some("/tmp/l".into()),
                plugin: None,
                debug: false,
            })
        );
        assert_eq!(parse_str(&["--help"]).unwrap(), Command::Help(HELP));
        assert_eq!(parse_str(&["-h"]).unwrap(), Command::Help(HELP));
        assert_eq!(
            parse_str(&["demo", "--help"]).unwrap(),
            Command::Help(DEMO_HELP)
        );
        assert_eq!(
            parse_str(&["replay", "--config", "x", "-h"]).unwrap(),
            Command::Help(REPLAY_HELP)
        );
        assert_eq!(parse_str(&["--version"]).unwrap(), Command::Version);
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        assert_eq!(error(&[]), "a command is required");
        assert_eq!(error(&["tunnel"]), "unknown command tunnel");
        assert_eq!(error(&["--frobnicate"]), "unknown option --frobnicate");
        assert_eq!(error(&["demo"]), "demo: <scenario-dir> is required");
        assert_eq!(error(&["demo", "a", "b"]), "demo: unexpected argument b");
        assert_eq!(error(&["demo", "a", "--plugin"]), "--plugin needs a value");
        assert_eq!(
            error(&["demo", "a", "--debug=yes"]),
            "--debug takes no value"
        );
        assert_eq!(
            error(&["demo", "a", "--keys", "k"]),
            "demo: unknown option --keys"
        );
        let base = [
            "replay",
            "--config",
            "c",
            "--direction",
            "out",
            "--input",
            "i",
            "--output",
            "o",
        ];
        assert!(parse_str(&base).is_ok());
        for missing in ["--config", "--direction", "--input", "--output"] {
            let i = base.iter().position(|a| *a == missing).unwrap();
            let args: Vec<&str> = base
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| *a)
                .collect();
            assert_eq!(error(&args), format!("replay: {missing} is required"));
        }
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [base, extra].concat()
        }
        assert_eq!(
            error(&with(&base, &["--direction", "up"])),
            "--direction must be in or out, not up"
        );
        assert_eq!(
            error(&with(&base, &["--local", "10.0.0.256"])),
            "--local: 10.0.0.256 is not an IPv4 address"
        );
        assert_eq!(
            error(&with(&base, &["extra.pcap"])),
            "replay: unexpected argument extra.pcap"
        );
        assert_eq!(error(&with(&base, &["--local"])), "--local needs a value");
    }

    #[test]
    fn parses_a_tun_command_and_its_mistakes() {
        let base = [
            "tun",
            "--config",
            "c",
            "--tun",
            "tun0",
            "--outer-if",
            "wan0",
        ];
        let cmd = parse_str(
            &[
                &base[..],
                &[
                    "--local=192.0.2.41",
                    "--mtu",
                    "1400",
                    "--tun-mtu",
                    "1400",
                    "--keys",
                    "k",
                    "--control",
                    "/run/s",
                    "--daemon",
                    "/run/p.ctl",
                    "--log",
                    "l",
                    "--plugin",
                    "p.so",
                    "--debug",
                ],
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(
            cmd,
            Command::Tun(TunArgs {
                config: "c".into(),
                tun: "tun0".into(),
                outer_if: "wan0".into(),
                local: Some(Ipv4Addr::new(192, 0, 2, 41)),
                mtu: Some(1400),
                tun_mtu: Some(1400),
                keys: Some("k".into()),
                control: Some("/run/s".into()),
                daemon: Some("/run/p.ctl".into()),
                log: Some("l".into()),
                plugin: Some("p.so".into()),
                debug: true,
            })
        );
        assert_eq!(
            parse_str(&["tun", "--help"]).unwrap(),
            Command::Help(TUN_HELP)
        );
        let Command::Tun(minimal) = parse_str(&base).unwrap() else {
            panic!("not a tun command")
        };
        assert_eq!(
            (minimal.local, minimal.mtu, minimal.control),
            (None, None, None)
        );
        for missing in ["--config", "--tun", "--outer-if"] {
            let i = base.iter().position(|a| *a == missing).unwrap();
            let args: Vec<&str> = base
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i && *j != i + 1)
                .map(|(_, a)| *a)
                .collect();
            assert_eq!(error(&args), format!("tun: {missing} is required"));
        }
        let with = |extra: &[&'static str]| error(&[&base[..], extra].concat());
        assert_eq!(with(&["--mtu", "67"]), "--mtu: 67 is not an MTU (68-65535)");
        assert_eq!(
            with(&["--tun-mtu", "65536"]),
            "--tun-mtu: 65536 is not an MTU (68-65535)"
        );
        assert_eq!(
            with(&["--mtu", "big"]),
            "--mtu: big is not an MTU (68-65535)"
        );
        assert_eq!(with(&["--local", "x"]), "--local: x is not an IPv4 address");
        assert_eq!(
            with(&["--direction", "in"]),
            "tun: unknown option --direction"
        );
        assert_eq!(with(&["extra"]), "tun: unexpected argument extra");
    }

    #[test]
    fn non_utf8_values_are_errors_not_panics() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        let args = ["replay", "--direction"]
            .into_iter()
            .map(OsString::from)
            .chain([bad.clone()]);
        assert_eq!(
            parse(args).unwrap_err().0,
            "--direction: value is not UTF-8"
        );
        // Paths need not be UTF-8.
        let args = ["demo"].into_iter().map(OsString::from).chain([bad]);
        assert!(matches!(parse(args), Ok(Command::Demo(_))));
    }
}
