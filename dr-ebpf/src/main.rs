//! dr's datapath: TC programs on docker0 and the uplink (ingress and
//! egress) and on the containers' docker0 ports (ingress), and an XDP
//! program on the uplink.
//! See ARCHITECTURE.md for the packet's way through them.
#![no_std]
#![no_main]

mod bridge;
mod bridge_egress;
mod clock;
mod clock_sample;
mod dry_run;
mod fib;
mod inbound;
mod maps;
mod mark;
mod mtu;
mod nat;
mod nat_sweep;
mod packet;
mod port;
mod redirect;
mod route;
mod uplink;
mod uplink_egress;
mod verdict;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// The kernel only offers some helpers to GPL-compatible programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
