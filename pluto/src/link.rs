//! The daemon's half of the plugin link (docs/daemon-link.md), as pure translations
//! between the core's events and link messages; the socket side is `daemon.rs`.
//!
//! The core picks its inbound SPIs itself (an `SpiAllocator`, counting up from a random
//! start at or above 0x1000) because Quick Mode must answer at once. Each inbound SPI is
//! then reserved in the plugin with a GETSPI whose SPIRANGE is exactly that SPI (PF_KEY's
//! way of asking for a given SPI), immediately followed by the UPDATE that completes it;
//! the link is an ordered stream, so no reply needs awaiting in between.

use std::net::Ipv4Addr;

use ipsec_plugin::config::{Bundle, DirectionKeys};
use ipsec_plugin::ipc::{
    Address, Errno, KeyMaterial, Lifetime, Message, MsgType, SaExt, SaState, SaType, SpiRange, SA_FLAG_PFS,
    SA_FLAG_UDP_ENCAP,
};

use crate::event::{ChildSa, FailureKind, SpiSet};

/// Which side of an SA an address ext names.
struct Ends {
    src: Address,
    dst: Address,
}

fn ends(child: &ChildSa, inbound: bool) -> Ends {
    let (local_port, remote_port) = child.udp_encap.map_or((0, 0), |e| (e.local_port, e.remote_port));
    let local = Address { port: local_port, ..Address::host(child.local) };
    let remote = Address { port: remote_port, ..Address::host(child.remote) };
    if inbound {
        Ends { src: remote, dst: local }
    } else {
        Ends { src: local, dst: remote }
    }
}

/// When the plugin reports the soft lifetime: after the initiator's rekey (at the margin
/// plus fuzz before the end) and the responder's (half of that), so that it is only a
/// backstop for a daemon that lost its timers, never a second rekey. A margin as long as
/// the lifetime makes the core rekey at half the lifetime; the backstop is then at three
/// quarters.
pub fn soft_lifetime_secs(lifetime_secs: u64, rekeymargin_secs: u64) -> u64 {
    if rekeymargin_secs >= lifetime_secs {
        (lifetime_secs - lifetime_secs / 4).max(1)
    } else {
        lifetime_secs - rekeymargin_secs / 4
    }
}

/// Which directions of a child SA bundle to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directions {
    Both,
    /// A responder's inbound SAs, ahead of Quick Mode message 2.
    Inbound,
    /// The rest once message 3 has come.
    Outbound,
}

/// GETSPI, UPDATE and ADD messages that install `child` in the plugin, in the order the
/// link requires: every inbound SA (reserved, then completed) before any outbound one, and
/// within a direction IPComp before AH before ESP (the plugin switches a direction over
/// once its last mandatory SA arrives).
pub fn install_messages(child: &ChildSa, bundle: &Bundle, which: Directions, seq: u32, pid: u32) -> Vec<Message> {
    let mut out = Vec::new();
    let rekeymargin = match &bundle.keying {
        ipsec_plugin::config::Keying::Ike(ike) => ike.rekeymargin_secs,
        ipsec_plugin::config::Keying::Manual(_) => 0,
    };
    let hard = child.lifetime.as_secs().max(1);
    let lifetimes = (
        Lifetime { addtime: hard, ..Lifetime::default() },
        Lifetime { addtime: soft_lifetime_secs(hard, rekeymargin), ..Lifetime::default() },
    );
    let mut flags = if child.pfs { SA_FLAG_PFS } else { 0 };
    if child.udp_encap.is_some() {
        flags |= SA_FLAG_UDP_ENCAP;
    }
    for (inbound, keys) in [(true, &child.keys.inbound), (false, &child.keys.outbound)] {
        let wanted = match which {
            Directions::Both => true,
            Directions::Inbound => inbound,
            Directions::Outbound => !inbound,
        };
        if !wanted {
            continue;
        }
        for sa in direction_sas(child, keys, bundle.replay_window, flags, inbound) {
            let e = ends(child, inbound);
            if inbound {
                let mut getspi = Message::new(MsgType::GetSpi, sa.sa_type, seq, pid);
                getspi.ext.bundle = Some(child.conn.clone());
                getspi.ext.address_src = Some(e.src);
                getspi.ext.address_dst = Some(e.dst);
                getspi.ext.spirange = Some(SpiRange { min: sa.ext.spi, max: sa.ext.spi });
                out.push(getspi);
            }
            let kind = if inbound { MsgType::Update } else { MsgType::Add };
            let mut msg = Message::new(kind, sa.sa_type, seq, pid);
            msg.ext.sa = Some(sa.ext);
            msg.ext.address_src = Some(e.src);
            msg.ext.address_dst = Some(e.dst);
            msg.ext.bundle = Some(child.conn.clone());
            msg.ext.key_encrypt = sa.key_encrypt;
            msg.ext.key_auth = sa.key_auth;
            msg.ext.lifetime_hard = Some(lifetimes.0);
            msg.ext.lifetime_soft = Some(lifetimes.1);
            out.push(msg);
        }
    }
    out
}

struct LinkSa {
    sa_type: SaType,
    ext: SaExt,
    key_encrypt: Option<KeyMaterial>,
    key_auth: Option<KeyMaterial>,
}

fn key(bytes: &[u8]) -> Option<KeyMaterial> {
    (!bytes.is_empty()).then(|| KeyMaterial::from_slice(bytes))
}

fn direction_sas(child: &ChildSa, keys: &DirectionKeys, replay_window: u32, flags: u32, inbound: bool) -> Vec<LinkSa> {
    let window = if inbound { replay_window } else { 0 };
    let mut sas = Vec::new();
    if let Some(cpi) = keys.ipcomp_cpi {
        // UDP encapsulation concerns ESP only (RFC 3948).
        let ext = SaExt::ipcomp(cpi, flags & !SA_FLAG_UDP_ENCAP);
        sas.push(LinkSa { sa_type: SaType::IpComp, ext, key_encrypt: None, key_auth: None });
    }
    if let (Some(ah), Some(alg)) = (&keys.ah, child.ah) {
        let ext = SaExt::ah(ah.spi, alg, window, flags & !SA_FLAG_UDP_ENCAP);
        sas.push(LinkSa { sa_type: SaType::Ah, ext, key_encrypt: None, key_auth: key(&ah.key) });
    }
    if let (Some(esp), Some(t)) = (&keys.esp, child.esp) {
        let ext = SaExt::esp(esp.spi, t, window, flags);
        sas.push(LinkSa { sa_type: SaType::Esp, ext, key_encrypt: key(&esp.enc_key), key_auth: key(&esp.auth_key) });
    }
    sas
}

/// DELETE messages for both directions of a child SA bundle.
pub fn delete_messages(conn: &str, local: Ipv4Addr, peer: Ipv4Addr, inbound: &SpiSet, outbound: &SpiSet, seq: u32, pid: u32) -> Vec<Message> {
    let mut out = Vec::new();
    for (spis, src, dst) in [(inbound, peer, local), (outbound, local, peer)] {
        let each = [
            (SaType::Esp, spis.esp),
            (SaType::Ah, spis.ah),
            (SaType::IpComp, spis.ipcomp.map(u32::from)),
        ];
        for (sa_type, spi) in each {
            let Some(spi) = spi else { continue };
            let mut msg = Message::new(MsgType::Delete, sa_type, seq, pid);
            msg.ext.sa = Some(SaExt::bare(spi, SaState::Mature));
            msg.ext.address_src = Some(Address::host(src));
            msg.ext.address_dst = Some(Address::host(dst));
            msg.ext.bundle = Some(conn.to_owned());
            out.push(msg);
        }
    }
    out
}

/// The errno an ACQUIRE failure report carries (docs/daemon-link.md: EACCES wrong PSK,
/// ETIMEDOUT keyingtries exhausted, ECONNREFUSED refused).
pub fn failure_errno(kind: FailureKind) -> Errno {
    match kind {
        FailureKind::Authentication => Errno::Access,
        FailureKind::Refused => Errno::Refused,
        FailureKind::TimedOut => Errno::TimedOut,
        FailureKind::Other => Errno::Invalid,
    }
}

/// ACQUIRE from the daemon: keying of `bundle` failed (answers the plugin's ACQUIRE `seq`).
pub fn failure_message(bundle: &str, seq: u32, pid: u32, errno: Errno) -> Message {
    let mut msg = Message::new(MsgType::Acquire, SaType::Unspec, seq, pid);
    msg.header.errno = Some(errno);
    msg.ext.bundle = Some(bundle.to_owned());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UdpEncap;
    use ipsec_plugin::config::{parse, EspKeys, Mode, SaKeys};
    use ipsec_plugin::crypto::EspTransform;
    use ipsec_plugin::ipc::Sender;
    use std::time::Duration;

    fn bundle() -> Bundle {
        let text = "[gw]\nlocal = 192.0.2.1\nremote = 192.0.2.2\nkeying = ike\nesp = aes128-sha1\nipcomp = deflate\nrekeymargin = 8m\nlifetime = 1h\n";
        let config = parse(text, "ipsec.cfg");
        assert!(config.errors.is_empty(), "{:?}", config.errors);
        config.bundles.into_iter().next().unwrap()
    }

    fn child(encap: Option<UdpEncap>) -> ChildSa {
        let dir = |spi: u32, b: u8| DirectionKeys {
            esp: Some(EspKeys { spi, enc_key: vec![b; 16], auth_key: vec![b + 1; 20] }),
            ah: None,
            ipcomp_cpi: Some(spi as u16),
        };
        ChildSa {
            conn: "gw".into(),
            exchange: None,
            local: "192.0.2.1".parse().unwrap(),
            remote: "192.0.2.2".parse().unwrap(),
            mode: Mode::Transport,
            local_selector: ipsec_plugin::config::Cidr::host("192.0.2.1".parse().unwrap()),
            remote_selector: ipsec_plugin::config::Cidr::host("192.0.2.2".parse().unwrap()),
            protocol: 0,
            local_port: 0,
            remote_port: 0,
            esp: EspTransform::from_name("aes128-sha1"),
            ah: None,
            ipcomp: true,
            keys: SaKeys { inbound: dir(0x1234, 1), outbound: dir(0x5678, 3) },
            lifetime: Duration::from_secs(3600),
            pfs: true,
            replaces: None,
            udp_encap: encap,
        }
    }

    #[test]
    fn install_reserves_then_completes_inbound_before_outbound() {
        let msgs = install_messages(&child(None), &bundle(), Directions::Both, 7, 99);
        let kinds: Vec<(MsgType, SaType)> = msgs.iter().map(|m| (m.header.msg_type, m.header.sa_type)).collect();
        use MsgType::*;
        use SaType::*;
        assert_eq!(
            kinds,
            [(GetSpi, IpComp), (Update, IpComp), (GetSpi, Esp), (Update, Esp), (Add, IpComp), (Add, Esp)]
        );
        for m in &msgs {
            // Every message is one the plugin accepts from a daemon.
            m.validate(Sender::Daemon).unwrap_or_else(|e| panic!("{:?}: {e}", m.header));
            assert_eq!((m.header.seq, m.header.pid), (7, 99));
        }
        let update = &msgs[3];
        let sa = update.ext.sa.unwrap();
        assert_eq!(sa.spi, 0x1234);
        assert_eq!(sa.flags, SA_FLAG_PFS);
        assert_eq!(update.ext.address_src.unwrap().addr, "192.0.2.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(update.ext.key_encrypt.as_ref().unwrap().as_bytes(), &[1; 16]);
        assert_eq!(update.ext.lifetime_hard.unwrap().addtime, 3600);
        assert_eq!(update.ext.lifetime_soft.unwrap().addtime, 3600 - 120);
        assert_eq!(msgs[2].ext.spirange, Some(SpiRange { min: 0x1234, max: 0x1234 }));
        let add = &msgs[5];
        assert_eq!(add.ext.sa.unwrap().spi, 0x5678);
        assert_eq!(add.ext.address_dst.unwrap().addr, "192.0.2.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(add.ext.sa.unwrap().replay_window, 0, "no replay window on outbound SAs");
    }

    #[test]
    fn udp_encapsulation_rides_on_esp_with_the_ports() {
        let encap = UdpEncap { local_port: 4500, remote_port: 31001 };
        let msgs = install_messages(&child(Some(encap)), &bundle(), Directions::Both, 1, 1);
        let esp_in = msgs.iter().find(|m| m.header.msg_type == MsgType::Update && m.header.sa_type == SaType::Esp).unwrap();
        assert_eq!(esp_in.ext.sa.unwrap().flags & SA_FLAG_UDP_ENCAP, SA_FLAG_UDP_ENCAP);
        assert_eq!(esp_in.ext.address_src.unwrap().port, 31001);
        assert_eq!(esp_in.ext.address_dst.unwrap().port, 4500);
        let comp = msgs.iter().find(|m| m.header.sa_type == SaType::IpComp && m.ext.sa.is_some()).unwrap();
        assert_eq!(comp.ext.sa.unwrap().flags & SA_FLAG_UDP_ENCAP, 0);
    }

    #[test]
    fn a_responder_installs_inbound_first_then_outbound() {
        let (c, b) = (child(None), bundle());
        let early = install_messages(&c, &b, Directions::Inbound, 3, 1);
        let late = install_messages(&c, &b, Directions::Outbound, 3, 1);
        let both = install_messages(&c, &b, Directions::Both, 3, 1);
        assert!(early.iter().all(|m| m.header.msg_type != MsgType::Add));
        assert!(late.iter().all(|m| m.header.msg_type == MsgType::Add));
        assert_eq!(early.len() + late.len(), both.len());
    }

    #[test]
    fn the_soft_lifetime_comes_after_both_ends_rekeyed() {
        assert_eq!(soft_lifetime_secs(3600, 540), 3600 - 135);
        // The default margin (9 min) on a one-minute SA: the core rekeys at 30 s.
        assert_eq!(soft_lifetime_secs(60, 540), 45);
        assert_eq!(soft_lifetime_secs(1, 540), 1);
        for (life, margin) in [(24, 8), (60, 59), (60, 60), (28800, 540)] {
            let soft = soft_lifetime_secs(life, margin);
            let responder_rekey = if margin < life { life - margin / 2 } else { life / 2 };
            assert!(soft >= responder_rekey && soft <= life, "{life} {margin}: {soft}");
        }
    }

    #[test]
    fn deletes_name_both_directions() {
        let c = child(None);
        let msgs = delete_messages("gw", c.local, c.remote, &c.inbound_spis(), &c.outbound_spis(), 3, 4);
        assert_eq!(msgs.len(), 4);
        for m in &msgs {
            m.validate(Sender::Daemon).unwrap();
        }
        assert_eq!(msgs[0].ext.address_src.unwrap().addr, c.remote);
        assert_eq!(msgs[2].ext.address_src.unwrap().addr, c.local);
    }

    #[test]
    fn failures_map_to_the_documented_errnos() {
        assert_eq!(failure_errno(FailureKind::Authentication), Errno::Access);
        assert_eq!(failure_errno(FailureKind::TimedOut), Errno::TimedOut);
        assert_eq!(failure_errno(FailureKind::Refused), Errno::Refused);
        let m = failure_message("gw", 5, 6, Errno::Access);
        m.validate(Sender::Daemon).unwrap();
    }
}
