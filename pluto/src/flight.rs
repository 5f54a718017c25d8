//! The last message an exchange sent and the last one it received, with Pluto's rules:
//! resend after 10 s, 20 s, 40 s (each timeout doubles) and give up after the third
//! retransmission's timeout; when the peer repeats the message we last received, resend
//! our answer to it — only if we answered it: repeating a message that was not a reply
//! (say the initiator's message 5 when message 6 comes twice) would set off an endless
//! echo between two endpoints that both follow this rule.

use std::net::SocketAddrV4;
use std::time::Instant;

use crate::ctx::Ctx;

#[derive(Debug, Default)]
pub(crate) struct Flight {
    bytes: Vec<u8>,
    route: Option<(SocketAddrV4, SocketAddrV4)>,
    deadline: Option<Instant>,
    retransmits: u32,
    /// Counts messages sent, to tell whether handling a message produced an answer.
    generation: u64,
    last_received: Vec<u8>,
    answered_last: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timeout {
    NotYet,
    Retransmitted,
    /// Every retransmission went unanswered.
    Exhausted,
}

impl Flight {
    /// Sends a new message; `await_reply` arms the retransmission timer (final messages,
    /// like Main Mode 6 or Quick Mode 3, are only resent when the peer repeats itself).
    pub fn send(
        &mut self,
        ctx: &mut Ctx<'_>,
        from: SocketAddrV4,
        to: SocketAddrV4,
        bytes: Vec<u8>,
        await_reply: bool,
    ) {
        ctx.send(from, to, bytes.clone());
        self.generation += 1;
        self.bytes = bytes;
        self.route = Some((from, to));
        self.retransmits = 0;
        self.deadline = await_reply.then(|| ctx.now + ctx.settings.retransmit_base);
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a message the exchange accepted; `generation_before` is `generation()`
    /// from before handling it, so an answer sent meanwhile is known to answer it.
    pub fn received(&mut self, datagram: &[u8], generation_before: u64) {
        self.last_received = datagram.to_vec();
        self.answered_last = self.generation != generation_before;
    }

    /// True (after resending our answer, if any) when `datagram` repeats the last
    /// message received.
    pub fn on_repeat(&self, ctx: &mut Ctx<'_>, datagram: &[u8]) -> bool {
        if self.last_received.is_empty() || datagram != self.last_received {
            return false;
        }
        if self.answered_last {
            self.resend(ctx);
        }
        true
    }

    fn resend(&self, ctx: &mut Ctx<'_>) {
        if let Some((from, to)) = self.route {
            ctx.send(from, to, self.bytes.clone());
        }
    }

    /// The peer moved (a NAT-T float or a new NAT mapping): retransmissions follow it.
    pub fn reroute(&mut self, from: SocketAddrV4, to: SocketAddrV4) {
        if self.route.is_some() {
            self.route = Some((from, to));
        }
    }

    /// The reply came: no more retransmissions.
    pub fn stop(&mut self) {
        self.deadline = None;
    }

    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    pub fn on_timeout(&mut self, ctx: &mut Ctx<'_>) -> Timeout {
        match self.deadline {
            Some(d) if d <= ctx.now => {}
            _ => return Timeout::NotYet,
        }
        if self.retransmits >= ctx.settings.max_retransmits {
            self.deadline = None;
            return Timeout::Exhausted;
        }
        self.retransmits += 1;
        self.resend(ctx);
        self.deadline =
            Some(ctx.now + ctx.settings.retransmit_base * (1u32 << self.retransmits.min(16)));
        Timeout::Retransmitted
    }

    pub fn retransmits(&self) -> u32 {
        self.retransmits
    }
}
