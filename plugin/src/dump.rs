//! The SA bundle table as text (for people, in the spirit of `setkey -D` and `ipsec look`)
//! and as JSON (for scripts). Key material is never printed.

use std::fmt::Write;

use crate::config::Keying;
use crate::sad::Sa;
use crate::spd::{BundlePolicy, SaSet, Spd};
use crate::stats::Counters;

fn keying(b: &BundlePolicy) -> &'static str {
    match b.config.keying {
        Keying::Manual(_) => "manual",
        Keying::Ike(_) => "ike",
    }
}

fn protocol(b: &BundlePolicy) -> String {
    match b.config.protocol {
        None => "any".into(),
        Some(1) => "icmp".into(),
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(p) => p.to_string(),
    }
}

fn port(p: Option<u16>) -> String {
    p.map_or_else(|| "any".into(), |p| p.to_string())
}

/// Outbound SAs first, then inbound, then superseded inbound ones, each in the order they
/// are applied outbound.
fn sas(b: &BundlePolicy) -> impl Iterator<Item = (&Sa, bool)> {
    let current = b.outbound.iter().chain(b.inbound.iter()).flat_map(SaSet::iter).map(|a| (&**a, false));
    current.chain(b.retired.iter().flat_map(SaSet::iter).map(|a| (&**a, true)))
}

fn drops(c: &Counters) -> String {
    c.nonzero_drops().map(|(r, n)| format!("{}={n}", r.name())).collect::<Vec<_>>().join(" ")
}

fn age_secs(sa: &Sa, now_ms: u64) -> u64 {
    now_ms.saturating_sub(sa.created_ms) / 1000
}

pub fn text(spd: &Spd, global: &Counters, now_ms: u64) -> String {
    let mut s = String::new();
    if spd.bundles.is_empty() {
        s.push_str("no active bundles\n");
    }
    for b in &spd.bundles {
        let local = b.local.map_or_else(|| "0.0.0.0 (dynamic)".to_string(), |a| a.to_string());
        let remote = match b.peer {
            Some(peer) if b.is_road_warrior() => format!("{peer} (road warrior)"),
            Some(peer) => peer.to_string(),
            None => "0.0.0.0 (any peer)".to_string(),
        };
        let _ = writeln!(
            s,
            "[{}] {} {} <-> {}  keying {}  state {}  (line {})",
            b.name(),
            if b.is_tunnel() { "tunnel" } else { "transport" },
            local,
            remote,
            keying(b),
            b.state().name(),
            b.config.line
        );
        match &b.selector {
            Some(sel) => {
                let _ = writeln!(
                    s,
                    "  selector {} <-> {}  protocol {}  ports {} <-> {}",
                    sel.local,
                    sel.remote,
                    protocol(b),
                    port(sel.local_port),
                    port(sel.remote_port)
                );
            }
            None if b.local.is_none() => s.push_str("  selector (waits for the host's address)\n"),
            None => s.push_str("  selector (waits for a road-warrior peer)\n"),
        }
        if let Some(former) = b.former_peer {
            let _ = writeln!(s, "  former peer {former}: its traffic is dropped, not sent in clear");
        }
        for (sa, superseded) in sas(b) {
            let dir = if superseded { "old" } else if sa.inbound { "in " } else { "out" };
            let id = if sa.proto == crate::sad::SaProto::IpComp { format!("cpi 0x{:04x}", sa.spi) } else { format!("spi 0x{:08x}", sa.spi) };
            let seq = if sa.proto == crate::sad::SaProto::IpComp {
                // IPComp has no sequence numbers; its packet count is what there is to see.
                String::new()
            } else if sa.inbound {
                let w = sa.replay();
                if w.size() == 0 {
                    format!("replay off, top {}", w.top())
                } else {
                    format!("replay {} top {}", w.size(), w.top())
                }
            } else {
                format!("seq {}", sa.last_seq())
            };
            let encap = sa.udp_ports_now().map_or_else(String::new, |p| format!("  udp {} <-> {}", p.local, p.remote));
            let _ = writeln!(
                s,
                "  {:<6} {} {}  {:<14} {}{}  packets {} bytes {} age {}s",
                sa.proto.name(),
                dir,
                id,
                sa.transform.description(),
                seq,
                encap,
                sa.counters.packets(),
                sa.counters.bytes(),
                age_secs(sa, now_ms)
            );
            if sa.counters.total_drops() != 0 {
                let _ = writeln!(s, "         drops {}", drops(&sa.counters));
            }
        }
        if b.counters.total_drops() != 0 {
            let _ = writeln!(s, "  bundle drops {}", drops(&b.counters));
        }
    }
    let g = drops(global);
    let _ = writeln!(s, "global drops {}", if g.is_empty() { "none".to_string() } else { g });
    s
}

/// Escapes a string for JSON (bundle names are the only free text).
fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

fn json_drops(c: &Counters) -> String {
    let items: Vec<String> = c.nonzero_drops().map(|(r, n)| format!("{}:{n}", json_str(r.name()))).collect();
    format!("{{{}}}", items.join(","))
}

pub fn json(spd: &Spd, global: &Counters, now_ms: u64) -> String {
    let mut bundles = Vec::new();
    for b in &spd.bundles {
        let mut sa_items = Vec::new();
        for (sa, superseded) in sas(b) {
            let (window, seq) = if sa.inbound {
                let w = sa.replay();
                (w.size().to_string(), u64::from(w.top()))
            } else {
                ("null".to_string(), sa.last_seq())
            };
            let encap = sa
                .udp_encap
                .map_or_else(|| "null".to_string(), |p| format!("{{\"local_port\":{},\"remote_port\":{}}}", p.local, p.remote));
            sa_items.push(format!(
                "{{\"protocol\":{},\"direction\":{},\"superseded\":{superseded},\"spi\":{},\"transform\":{},\"seq\":{},\"replay_window\":{},\"udp_encap\":{},\"packets\":{},\"bytes\":{},\"age_secs\":{},\"drops\":{}}}",
                json_str(sa.proto.name()),
                json_str(if sa.inbound { "in" } else { "out" }),
                sa.spi,
                json_str(&sa.transform.description()),
                seq,
                window,
                encap,
                sa.counters.packets(),
                sa.counters.bytes(),
                age_secs(sa, now_ms),
                json_drops(&sa.counters)
            ));
        }
        let selector = match &b.selector {
            Some(sel) => format!(
                "{{\"local\":{},\"remote\":{},\"protocol\":{},\"local_port\":{},\"remote_port\":{}}}",
                json_str(&sel.local.to_string()),
                json_str(&sel.remote.to_string()),
                json_str(&protocol(b)),
                json_str(&port(sel.local_port)),
                json_str(&port(sel.remote_port))
            ),
            None => "null".to_string(),
        };
        let addr = |a: Option<std::net::Ipv4Addr>| a.map_or_else(|| "null".to_string(), |a| json_str(&a.to_string()));
        bundles.push(format!(
            "{{\"name\":{},\"line\":{},\"mode\":{},\"local\":{},\"remote\":{},\"road_warrior\":{},\"former_peer\":{},\"keying\":{},\"state\":{},\"selector\":{},\"sas\":[{}],\"drops\":{}}}",
            json_str(b.name()),
            b.config.line,
            json_str(if b.is_tunnel() { "tunnel" } else { "transport" }),
            addr(b.local),
            addr(b.peer),
            b.is_road_warrior(),
            addr(b.former_peer),
            json_str(keying(b)),
            json_str(b.state().name()),
            selector,
            sa_items.join(","),
            json_drops(&b.counters)
        ));
    }
    format!("{{\"bundles\":[{}],\"global_drops\":{}}}\n", bundles.join(","), json_drops(global))
}
