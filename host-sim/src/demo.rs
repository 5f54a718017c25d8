//! `host-sim demo`: every machine of a scenario in one process, each with its own plugin
//! instance, exchanging the flows the network model derives; prints the wire and the SA
//! tables, and fails when any packet does not arrive intact.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::args::DemoArgs;
use crate::config;
use crate::net::{Flow, FlowKind, Location, Network};
use crate::packet;
use crate::plugin::{
    self, Direction, OpenOutcome, PacketBuffer, PluginInstance, PluginLibrary, Verdict,
};

/// More hops than any sane scenario needs; past this a packet is in a routing loop.
const MAX_HOPS: u32 = 16;

/// Where a packet is in its journey, at which machine.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// About to go through machine n's outbound hook.
    Outbound(usize),
    /// Just left machine n onto the wire.
    Wire(usize),
    /// Arrived at machine n from the wire, about to go through its inbound hook.
    Inbound(usize),
    /// Accepted by machine n: delivered locally, behind it, or forwarded.
    Local(usize),
}

struct Demo {
    net: Network,
    instances: Vec<PluginInstance>,
    now_ms: u64,
    next_id: u16,
}

pub fn run(args: &DemoArgs) -> Result<bool, String> {
    let net = Network::derive(read_machines(&args.scenario)?)?;
    let lib_path = match &args.plugin {
        Some(p) => p.clone(),
        None => plugin::default_library_path()?,
    };
    let lib = PluginLibrary::load(&lib_path)?;
    println!("plugin {} from {}", lib.version(), lib_path.display());
    print_layout(&net);

    if let Some(dir) = &args.log_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let now_ms = epoch_ms();
    let mut demo = Demo {
        instances: open_all(&net, &lib, args, now_ms)?,
        net,
        now_ms,
        next_id: 1,
    };
    demo.connect_dialup()?;

    let (flows, notes) = demo.net.flows();
    for note in notes {
        println!("note: {note}");
    }
    let total = flows.len() * 2;
    let mut intact = 0;
    for flow in &flows {
        intact += demo.exchange(flow);
    }
    println!();
    println!("delivered {intact} of {total} packets intact");
    for (m, instance) in demo.net.machines.iter().zip(&demo.instances) {
        println!();
        println!("--- {}: SA table ---", m.name);
        match instance.dump(false) {
            Ok(table) => print!(
                "{table}{}",
                if table.ends_with('\n') || table.is_empty() {
                    ""
                } else {
                    "\n"
                }
            ),
            Err(status) => println!("(dump failed: {status})"),
        }
    }
    Ok(total > 0 && intact == total)
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The scenario's machines: its sub-folders holding an ipsec.cfg, by name.
fn read_machines(
    scenario: &Path,
) -> Result<Vec<(String, PathBuf, Vec<config::BundleCfg>)>, String> {
    let entries = std::fs::read_dir(scenario)
        .map_err(|e| format!("cannot read scenario {}: {e}", scenario.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("ipsec.cfg").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(format!(
            "{}: no sub-folder holds an ipsec.cfg",
            scenario.display()
        ));
    }
    dirs.into_iter()
        .map(|dir| {
            let cfg = dir.join("ipsec.cfg");
            let text = std::fs::read_to_string(&cfg)
                .map_err(|e| format!("cannot read {}: {e}", cfg.display()))?;
            let name = dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            Ok((name, dir, config::parse(&text, &cfg)?))
        })
        .collect()
}

fn print_layout(net: &Network) {
    println!("machines:");
    for m in &net.machines {
        let addrs: Vec<String> = m.addrs.iter().map(|a| a.to_string()).collect();
        let mut line = format!("  {:<12} {}", m.name, addrs.join(", "));
        if m.dialup.is_some() {
            line.push_str(" (dial-up)");
        }
        if !m.lan.is_empty() {
            let lans: Vec<String> = m.lan.iter().map(|c| c.to_string()).collect();
            line.push_str(&format!(" gateway for {}", lans.join(", ")));
        }
        println!("{line}");
    }
}

fn open_all(
    net: &Network,
    lib: &Arc<PluginLibrary>,
    args: &DemoArgs,
    now_ms: u64,
) -> Result<Vec<PluginInstance>, String> {
    net.machines
        .iter()
        .map(|m| {
            let log = args
                .log_dir
                .as_ref()
                .map(|d| d.join(format!("{}.log", m.name)));
            let (instance, outcome) =
                PluginInstance::open(lib, &m.dir, log.as_deref(), args.debug, now_ms)
                    .map_err(|e| format!("{}: {e}", m.name))?;
            print_lines(&m.name, &instance);
            if outcome == OpenOutcome::Partial {
                println!(
                    "warning: {}: some bundles have config errors and are not active",
                    m.name
                );
            }
            Ok(instance)
        })
        .collect()
}

fn print_lines(name: &str, instance: &PluginInstance) {
    for line in instance.take_lines() {
        println!("    {name}: {line}");
    }
}

impl Demo {
    fn connect_dialup(&mut self) -> Result<(), String> {
        for (m, instance) in self.net.machines.iter().zip(&self.instances) {
            if let Some(addr) = m.dialup {
                println!("{}: connect {addr}", m.name);
                instance
                    .connect(addr)
                    .map_err(|s| format!("{}: connect {addr}: {s}", m.name))?;
                print_lines(&m.name, instance);
            }
        }
        Ok(())
    }

    fn name(&self, n: usize) -> &str {
        &self.net.machines[n].name
    }

    fn next_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        id
    }

    /// Sends a flow's request and, if it arrived, its reply: the number intact (0..=2).
    fn exchange(&mut self, flow: &Flow) -> usize {
        let id = self.next_id();
        let (request, reply) = match flow.kind {
            FlowKind::IcmpEcho => (
                packet::icmp_echo(flow.src, flow.dst, false, id, id),
                packet::icmp_echo(flow.dst, flow.src, true, id, id),
            ),
            FlowKind::Udp => (
                packet::udp(flow.src, flow.dst, flow.sport, flow.dport, 1000, id),
                packet::udp(flow.dst, flow.src, flow.dport, flow.sport, 1000, id),
            ),
            FlowKind::Tcp => (
                packet::tcp(flow.src, flow.dst, flow.sport, flow.dport, 300, id),
                packet::tcp(flow.dst, flow.src, flow.dport, flow.sport, 300, id),
            ),
            FlowKind::Other(proto) => (
                packet::other(flow.src, flow.dst, proto, 100, id),
                packet::other(flow.dst, flow.src, proto, 100, id),
            ),
        };
        println!();
        println!(
            "{}[{}]: {}",
            self.name(flow.machine),
            flow.bundle,
            packet::describe(&request)
        );
        if !self.send(request) {
            return 0;
        }
        println!("  reply: {}", packet::describe(&reply));
        1 + usize::from(self.send(reply))
    }

    fn hook(
        &mut self,
        n: usize,
        direction: Direction,
        bytes: &[u8],
        queue: &mut VecDeque<(Step, Vec<u8>)>,
    ) -> (Verdict, Vec<u8>) {
        self.now_ms += 1;
        let instance = &self.instances[n];
        instance.set_clock_ms(self.now_ms);
        let mut buffer = PacketBuffer::new(bytes);
        let verdict = match direction {
            Direction::Outbound => instance.outbound(&mut buffer),
            Direction::Inbound => instance.inbound(&mut buffer),
        };
        print_lines(&self.net.machines[n].name, instance);
        for (dir, emitted) in instance.take_emitted() {
            println!(
                "  {} emitted {:?}: {}",
                self.net.machines[n].name,
                dir,
                packet::describe(&emitted)
            );
            let step = match dir {
                Direction::Outbound => Step::Wire(n),
                Direction::Inbound => Step::Local(n),
            };
            queue.push_back((step, emitted));
        }
        (verdict, buffer.bytes().to_vec())
    }

    /// Carries one packet from its source to its destination; true when it arrived there
    /// byte for byte as sent.
    fn send(&mut self, sent: Vec<u8>) -> bool {
        let Some((src, dst)) = packet::addresses(&sent) else {
            return false;
        };
        let Some(origin) = self.net.locate(src) else {
            println!("  NOT DELIVERED: no machine sends for {src}");
            return false;
        };
        let mut queue = VecDeque::from([(Step::Outbound(origin.machine()), sent.clone())]);
        let mut hops = 0;
        let mut failure = String::from("lost");
        while let Some((step, bytes)) = queue.pop_front() {
            match step {
                Step::Outbound(n) | Step::Inbound(n) => {
                    let (direction, next) = match step {
                        Step::Outbound(_) => (Direction::Outbound, Step::Wire(n)),
                        _ => (Direction::Inbound, Step::Local(n)),
                    };
                    match self.hook(n, direction, &bytes, &mut queue) {
                        (Verdict::Pass | Verdict::Transformed, out) => queue.push_back((next, out)),
                        (verdict, _) => {
                            failure = format!("{verdict:?} by {} {direction:?}", self.name(n))
                                .to_lowercase();
                        }
                    }
                }
                Step::Wire(from) => {
                    hops += 1;
                    let to =
                        packet::addresses(&bytes).and_then(|(_, d)| self.net.next_hop(from, d));
                    let to_name = to.map_or("?", |t| self.name(t));
                    println!(
                        "  {} -> {}  {}",
                        self.name(from),
                        to_name,
                        packet::describe(&bytes)
                    );
                    match to {
                        _ if hops > MAX_HOPS => {
                            println!("  NOT DELIVERED: more than {MAX_HOPS} hops, a routing loop");
                            return false;
                        }
                        Some(to) => queue.push_back((Step::Inbound(to), bytes)),
                        None => {
                            failure = "its outer destination is no machine of this scenario".into()
                        }
                    }
                }
                Step::Local(n) => {
                    let here = packet::addresses(&bytes)
                        .map(|(_, d)| d)
                        .and_then(|d| self.net.locate(d));
                    match here {
                        Some(Location::Machine(m) | Location::BehindGateway(m)) if m == n => {
                            let place = match here {
                                Some(Location::Machine(_)) => self.name(n).to_string(),
                                _ => format!("{dst} behind {}", self.name(n)),
                            };
                            if bytes == sent {
                                println!("  delivered to {place} intact");
                                return true;
                            }
                            failure =
                                format!("arrived at {place} altered: {}", packet::describe(&bytes));
                        }
                        // Not for this machine or its subnets: it forwards.
                        _ => queue.push_back((Step::Outbound(n), bytes)),
                    }
                }
            }
        }
        println!("  NOT DELIVERED: {failure}");
        false
    }
}
