//! XDP on the uplink: the fast path for traffic from peers to local
//! containers, for replies to SNAT translations and for requests to
//! published ports dr translates. It delivers straight into
//! the container's veth when it knows the container (`ENDPOINTS`), and leaves
//! everything else to the TC programs (`XDP_PASS`), which handle all cases.
use aya_ebpf::{macros::xdp, programs::XdpContext};
use dr_common::{
    checksum,
    nat::{rewritten_l4_checksum, FlowKey, IPPROTO_ICMP, PUBLISHED_BY_DR, TCP_FIN, TCP_RST},
    Counter, DatapathConfig, Endpoint,
};
use network_types::{eth::EthHdr, icmp::Icmpv4Hdr, ip::Ipv4Hdr};

use crate::{
    clock::now,
    dry_run::{dry_run, record_delivery},
    inbound::record_inbound,
    maps::{config, endpoint, peer_for, peer_traffic, ENDPOINT_PORTS},
    nat::{
        layout, live_reply, published_target, reply_key, touch_reply, LiveReply, ICMP_ECHO_REPLY,
    },
    packet::{
        decrement_ttl, dst_addr, is_fragment, l4_offset, parse_frame, src_addr, Frame, FrameBytes,
        LinearFrame,
    },
    verdict::Verdict,
};

#[xdp]
pub fn dr_uplink_xdp(ctx: XdpContext) -> u32 {
    let frame = LinearFrame {
        data: ctx.data(),
        data_end: ctx.data_end(),
    };
    deliver(frame).xdp_action(frame.len() as u64)
}

/// Everything XDP does not deliver itself: TC's.
const TO_TC: Verdict = Verdict::Pass(Counter::XdpPass);

/// Peer traffic, SNAT replies and published ports' requests for known local
/// containers go straight to them; everything else is TC's.
#[inline(always)]
fn deliver(frame: LinearFrame) -> Verdict {
    let Some(cfg) = config() else {
        return TO_TC;
    };
    let Frame::Ipv4(ip) = parse_frame(frame.data, frame.data_end, frame.len()) else {
        return TO_TC;
    };
    if dst_addr(ip) == cfg.uplink_addr {
        return deliver_reply(frame, cfg, ip);
    }
    deliver_from_peer(frame, cfg, ip)
}

/// The endpoint of local container `addr` if XDP may redirect into its
/// port (`Endpoint::xdp_ready`); for any other, TC delivers.
#[inline(always)]
fn xdp_endpoint(addr: u32) -> Option<Endpoint> {
    endpoint(addr).filter(|e| e.xdp_ready != 0)
}

/// Sets the MACs of a frame from docker0 to `endpoint` and redirects it
/// into the endpoint's veth, to be counted under `counter`.
#[inline(always)]
fn redirect_to(
    frame: LinearFrame,
    cfg: &DatapathConfig,
    endpoint: &Endpoint,
    counter: Counter,
) -> Verdict {
    let Some(eth) = frame.ptr::<EthHdr>(0) else {
        return TO_TC;
    };
    // SAFETY: bounds checked by ptr_at; the frame's bytes have no alignment.
    unsafe {
        let macs = eth as *mut u8;
        write_mac(macs, endpoint.mac);
        write_mac(macs.add(6), cfg.bridge_mac);
    }
    if dry_run() {
        record_delivery(endpoint.ifindex);
    }
    // The port was there a moment ago (`endpoint`); should it vanish now,
    // the frame is lost like any frame in flight to a deleted device.
    match ENDPOINT_PORTS.redirect(endpoint.ifindex, 0) {
        Ok(_) => Verdict::Redirect(counter),
        Err(_) => Verdict::Drop(counter),
    }
}

/// Writes `mac` at `to`: a word and a half-word. Assigning the array was a
/// call to a memmove subprogram, twice on every frame XDP delivers.
///
/// # Safety
/// `to` points at 6 writable bytes.
#[inline(always)]
unsafe fn write_mac(to: *mut u8, mac: [u8; 6]) {
    let [a, b, c, d, e, f] = mac;
    core::ptr::write_unaligned(to as *mut u32, u32::from_ne_bytes([a, b, c, d]));
    core::ptr::write_unaligned(to.add(4) as *mut u16, u16::from_ne_bytes([e, f]));
}

/// What a packet to the uplink's address is delivered as, and the state it
/// updates once it is sure to be delivered.
enum ToContainer {
    /// A reply to a live SNAT translation.
    Reply(LiveReply),
    /// A request to a published port dr translates; the key of its answers.
    Published(FlowKey),
}

/// A reply to a translated TCP/UDP flow or ping, or a request to a
/// published port dr translates, translated with checksums fixed
/// arithmetically (frames from the wire carry complete checksums). ICMP
/// errors, TCP RSTs and FINs, and anything unknown are TC's.
#[inline(always)]
fn deliver_reply(frame: LinearFrame, cfg: &DatapathConfig, ip: &mut Ipv4Hdr) -> Verdict {
    let proto = ip.proto;
    if is_fragment(ip) || ip.ttl <= 1 {
        return TO_TC;
    }
    let Some(layout) = layout(proto) else {
        return TO_TC;
    };
    let Some((rkey, flags)) = reply_key(&frame, ip) else {
        return TO_TC;
    };
    let l4 = l4_offset(ip);
    // A RST or FIN is checked against the container's window before it may
    // close the translation: TC's (rare, and one place for that check).
    if flags & (TCP_RST | TCP_FIN) != 0 {
        return TO_TC;
    }
    // The whole header read for its type: see LinearFrame::read.
    if proto == IPPROTO_ICMP
        && frame.read::<Icmpv4Hdr>(l4).map(|h| h.type_) != Some(ICMP_ECHO_REPLY)
    {
        return TO_TC;
    }
    let now = now(cfg);
    let (origin, delivery, counter) = match live_reply(cfg, &rkey, flags, now) {
        Some(reply) => (
            reply.reverse.origin,
            ToContainer::Reply(reply),
            Counter::NatIn,
        ),
        None => match published_target(cfg, &rkey) {
            Some((target, answer)) => {
                (target, ToContainer::Published(answer), Counter::PublishedIn)
            }
            None => return TO_TC,
        },
    };
    let Some(endpoint) = xdp_endpoint(origin.addr) else {
        return TO_TC;
    };
    let (Some(port), Some(check)) = (
        frame.ptr::<[u8; 2]>(l4 + layout.reply_port),
        frame.ptr::<[u8; 2]>(l4 + layout.check),
    ) else {
        return TO_TC;
    };
    match delivery {
        ToContainer::Reply(reply) => touch_reply(reply, flags, now),
        ToContainer::Published(answer) => {
            record_inbound(&answer, PUBLISHED_BY_DR, rkey.nat_port, now)
        }
    }
    decrement_ttl(ip);
    ip.dst_addr = origin.addr.to_ne_bytes();
    ip.check = checksum::replace_u32(u16::from_ne_bytes(ip.check), cfg.uplink_addr, origin.addr)
        .to_ne_bytes();
    let nat_port = rkey.nat_port;
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        *port = origin.port.to_ne_bytes();
        let old = u16::from_ne_bytes(*check);
        let addrs = (cfg.uplink_addr, origin.addr);
        *check = rewritten_l4_checksum(proto, old, addrs, (nat_port, origin.port)).to_ne_bytes();
    }
    redirect_to(frame, cfg, &endpoint, counter)
}

/// Traffic from a peer subnet to a local container.
#[inline(always)]
fn deliver_from_peer(frame: LinearFrame, cfg: &DatapathConfig, ip: &mut Ipv4Hdr) -> Verdict {
    let dst = dst_addr(ip);
    if !cfg.is_container(dst) {
        return TO_TC;
    }
    let Some(peer) = peer_for(cfg, src_addr(ip)) else {
        return TO_TC;
    };
    let Some(endpoint) = xdp_endpoint(dst) else {
        return TO_TC;
    };
    // An expiring TTL is TC's to drop and count.
    if ip.ttl <= 1 {
        return TO_TC;
    }
    decrement_ttl(ip);
    if let Some(traffic) = peer_traffic(peer) {
        traffic.from_peer.add(frame.len() as u64);
    }
    redirect_to(frame, cfg, &endpoint, Counter::FromPeer)
}
