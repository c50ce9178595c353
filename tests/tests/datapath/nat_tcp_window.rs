//! SNAT of a TCP connection under teardown: a remote RST or FIN closes the
//! translation only near the container's receive window. Out of it (an
//! off-path sender guessing) it is still delivered, translated, for the
//! container's stack to judge, but leaves the translation and its port alone.
//!
//! ```text
//!  CONTAINER:40000 ──SYN (wscale 7), ACK──> [dr_bridge_ingress] ──> UPLINK_ADDR:61000 ──> EXTERNAL:80
//!                                            records ack_out, window_out, wscale_out in NAT_FLOWS
//!  CONTAINER <── [dr_uplink_ingress] <── RST / FIN, seq in or out of NEXT ± 502 << 7
//!                 in: the flow closes, port 61000 reclaimable; out: delivered, counted, flow untouched
//!  [dr_uplink_xdp]: leaves every RST and FIN to TC
//!  maps: DATAPATH_CONFIG (one NAT port 61000, tcp_closed 0 s), NAT_FLOWS, NAT_REVERSE, ENDPOINTS (XDP test)
//! ```
use dr_common::nat::{State, Timeouts, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use etherparse::TcpOptionElement;

use super::*;

/// The only NAT port: a second flow to the same remote gets it only if the
/// first one's translation is dead.
const NAT_PORT: u16 = 61000;
const REMOTE_PORT: u16 = 80;
const CONTAINER_ISN: u32 = 1000;
const REMOTE_ISN: u32 = 5000;
/// The container's window field and the scale its SYN offers.
const WINDOW: u16 = 502;
const WSCALE: u8 = 7;
const SCALED_WINDOW: u32 = (WINDOW as u32) << WSCALE;
/// The remote's next sequence number, as the container acknowledged it.
const NEXT: u32 = REMOTE_ISN + 1;

/// A TCP segment with `flags`; a SYN from the container offers WSCALE.
fn segment(
    (src, dst): ([u8; 4], [u8; 4]),
    (src_port, dst_port): (u16, u16),
    ttl: u8,
    (seq, ack): (u32, u32),
    flags: u8,
) -> Vec<u8> {
    let mut tcp = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
        .ipv4(src, dst, ttl)
        .tcp(src_port, dst_port, seq, WINDOW);
    if flags & TCP_ACK != 0 {
        tcp = tcp.ack(ack);
    }
    if flags & TCP_SYN != 0 {
        tcp = tcp.syn();
        if flags & TCP_ACK == 0 {
            tcp = tcp
                .options(&[TcpOptionElement::WindowScale(WSCALE)])
                .unwrap();
        }
    }
    if flags & TCP_FIN != 0 {
        tcp = tcp.fin();
    }
    if flags & TCP_RST != 0 {
        tcp = tcp.rst();
    }
    let mut out = Vec::new();
    tcp.write(&mut out, &[]).unwrap();
    out
}

/// The container's segment as it leaves it, and as dr sends it out.
fn from_container(seq: u32, ack: u32, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let ports = (SRC_PORT, REMOTE_PORT);
    let sent = segment((CONTAINER, EXTERNAL), ports, 64, (seq, ack), flags);
    let out = (UPLINK_ADDR, EXTERNAL);
    let translated = segment(out, (NAT_PORT, ports.1), 63, (seq, ack), flags);
    (sent, translated)
}

/// The remote's segment as it arrives, and as dr delivers it to the container.
fn from_remote(seq: u32, flags: u8) -> (Vec<u8>, Vec<u8>) {
    let ack = CONTAINER_ISN + 1;
    let arrived = (EXTERNAL, UPLINK_ADDR);
    let sent = segment(arrived, (REMOTE_PORT, NAT_PORT), 50, (seq, ack), flags);
    let to = (EXTERNAL, CONTAINER);
    let delivered = segment(to, (REMOTE_PORT, SRC_PORT), 49, (seq, ack), flags);
    (sent, delivered)
}

impl Datapath {
    fn container_sends(&mut self, seq: u32, ack: u32, flags: u8) {
        let (sent, translated) = from_container(seq, ack, flags);
        assert_eq!(
            self.run(Hook::BridgeIngress, &sent),
            (TC_ACT_REDIRECT, translated)
        );
    }

    /// The remote's segment reaches the container, translated.
    fn remote_sends(&mut self, seq: u32, flags: u8) {
        let (sent, delivered) = from_remote(seq, flags);
        assert_eq!(
            self.run(Hook::UplinkIngress, &sent),
            (TC_ACT_REDIRECT, delivered),
            "seq {seq} flags {flags:#x}"
        );
    }

    fn connection_state(&self) -> State {
        self.translation(CONTAINER, EXTERNAL, 6, (SRC_PORT, REMOTE_PORT))
            .expect("the connection's translation")
            .current_state()
            .unwrap()
    }

    /// Whether another container's new connection to the same remote gets
    /// the only port (the first translation is dead) or is refused.
    fn port_reclaimable(&mut self) -> bool {
        let syn = segment(
            (OTHER_CONTAINER, EXTERNAL),
            (SRC_PORT, REMOTE_PORT),
            64,
            (1, 0),
            TCP_SYN,
        );
        let (verdict, _) = self.run(Hook::BridgeIngress, &syn);
        verdict == TC_ACT_REDIRECT
    }
}

/// A connection from CONTAINER through the only NAT port, established;
/// a closed translation is dead at once (tcp_closed 0 s).
fn established() -> Datapath {
    let cfg = DatapathConfig {
        nat_port_min: NAT_PORT.into(),
        nat_port_max: NAT_PORT.into(),
        nat_timeouts: Timeouts {
            tcp_closed: 0,
            ..Timeouts::default()
        },
        ..nat_config()
    };
    let mut dp = nat_datapath(cfg, DEFAULT_TABLE_SIZE);
    dp.container_sends(CONTAINER_ISN, 0, TCP_SYN);
    dp.remote_sends(REMOTE_ISN, TCP_SYN | TCP_ACK);
    dp.container_sends(CONTAINER_ISN + 1, NEXT, TCP_ACK);
    assert_eq!(dp.connection_state(), State::TcpEstablished);
    dp
}

#[test]
fn a_remote_rst_in_the_window_closes_the_translation_and_frees_its_port() {
    let mut dp = established();
    // Ahead of the last ACK by more than the window field, within the
    // window the SYN's scale makes of it: data in flight, then the RST.
    dp.remote_sends(NEXT + WINDOW as u32 * 100, TCP_RST);
    assert_eq!(dp.connection_state(), State::TcpClosed);
    assert_eq!(dp.counter(Counter::NatTeardownOutOfWindow).packets, 0);
    assert!(dp.port_reclaimable());
}

#[test]
fn a_remote_fin_in_the_window_half_closes_the_translation() {
    let mut dp = established();
    dp.remote_sends(NEXT, TCP_FIN | TCP_ACK);
    assert_eq!(dp.connection_state(), State::TcpFinIn);
    assert_eq!(dp.counter(Counter::NatTeardownOutOfWindow).packets, 0);
}

#[test]
fn remote_rsts_and_fins_out_of_the_window_are_delivered_but_close_nothing() {
    let mut dp = established();
    let guesses = [
        (NEXT.wrapping_add(1 << 31), TCP_RST),
        (NEXT + SCALED_WINDOW + 1, TCP_RST | TCP_ACK),
        (NEXT.wrapping_sub(SCALED_WINDOW + 1), TCP_RST),
        (NEXT.wrapping_add(1 << 31), TCP_FIN | TCP_ACK),
        (NEXT + SCALED_WINDOW + 1, TCP_FIN | TCP_ACK),
    ];
    for (i, (seq, flags)) in guesses.into_iter().enumerate() {
        dp.remote_sends(seq, flags);
        assert_eq!(dp.connection_state(), State::TcpEstablished, "guess {i}");
        assert_eq!(
            dp.counter(Counter::NatTeardownOutOfWindow).packets,
            i as u64 + 1
        );
    }
    assert!(!dp.port_reclaimable());
    assert_eq!(dp.counter(Counter::DropNatPortsExhausted).packets, 1);
    // The connection goes on, and closes when the remote really does.
    dp.container_sends(CONTAINER_ISN + 1, NEXT, TCP_ACK);
    dp.remote_sends(NEXT, TCP_RST);
    assert_eq!(dp.connection_state(), State::TcpClosed);
    assert!(dp.port_reclaimable());
}

#[test]
fn xdp_leaves_remote_rsts_and_fins_to_tc() {
    let mut dp = established();
    add_endpoint(&mut dp, CONTAINER);
    // An ACK takes the fast path.
    let (ack, _) = from_remote(NEXT, TCP_ACK);
    assert_eq!(dp.run_xdp(&ack).0, XDP_REDIRECT);
    for (seq, flags) in [
        (NEXT.wrapping_add(1 << 31), TCP_RST),
        (NEXT.wrapping_add(1 << 31), TCP_FIN | TCP_ACK),
        (NEXT, TCP_RST),
    ] {
        let (sent, _) = from_remote(seq, flags);
        assert_eq!(dp.run_xdp(&sent), (XDP_PASS, sent.clone()));
        assert_eq!(dp.connection_state(), State::TcpEstablished);
    }
    assert_eq!(dp.counter(Counter::NatTeardownOutOfWindow).packets, 0);
}

/// The window scale is found wherever the SYN's options put it: Linux's
/// layout, alone, where only the second or the third of the chunks the
/// datapath reads the options in sees it whole, at the very end of 40
/// bytes of options, and none at all.
#[test]
fn a_syn_offers_its_window_scale_wherever_its_options_put_it() {
    use TcpOptionElement::*;
    let nops = |n: usize| vec![Noop; n];
    let layouts: [(&str, Vec<TcpOptionElement>, u8); 6] = [
        (
            "linux",
            vec![
                MaximumSegmentSize(1460),
                SelectiveAcknowledgementPermitted,
                Timestamp(1, 0),
                Noop,
                WindowScale(9),
            ],
            9,
        ),
        ("alone", vec![WindowScale(3)], 3),
        (
            "at byte 18, whole in the second chunk only",
            [nops(18), vec![WindowScale(5)]].concat(),
            5,
        ),
        (
            "at byte 36, whole in the third chunk only",
            [nops(36), vec![WindowScale(6)]].concat(),
            6,
        ),
        (
            "at byte 37, the last",
            [nops(37), vec![WindowScale(8)]].concat(),
            8,
        ),
        (
            "none",
            vec![MaximumSegmentSize(1460), SelectiveAcknowledgementPermitted],
            0,
        ),
    ];
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    for (i, (layout, options, wscale)) in layouts.into_iter().enumerate() {
        let ports = (SRC_PORT + i as u16, REMOTE_PORT);
        let mut syn = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 1])
            .ipv4(CONTAINER, EXTERNAL, 64)
            .tcp(ports.0, ports.1, CONTAINER_ISN, WINDOW)
            .syn()
            .options(&options)
            .unwrap()
            .write(&mut syn, &[])
            .unwrap();
        assert_eq!(
            dp.run(Hook::BridgeIngress, &syn).0,
            TC_ACT_REDIRECT,
            "{layout}"
        );
        let flow = dp.translation(CONTAINER, EXTERNAL, 6, ports).expect(layout);
        assert_eq!(flow.wscale_out, wscale, "{layout}");
    }
}
