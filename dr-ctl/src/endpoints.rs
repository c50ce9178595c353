//! Which local containers get a slot in `ENDPOINTS`: a slot is its
//! address's low bits ([`endpoint_slot`]), so containers may share one.
use std::collections::HashMap;

use dr_common::{endpoint_slot, Endpoint, MAX_ENDPOINTS};

/// The slots' new contents for the containers `wanted`, given the slots'
/// contents `current` (`MAX_ENDPOINTS` of them). A container keeps the slot
/// it holds (its entry updated); of those that share a free slot, the
/// first in `wanted` gets it; the others are left out (delivered through
/// docker0).
pub fn placement(current: &[Option<Endpoint>], wanted: &[Endpoint]) -> Vec<Option<Endpoint>> {
    let mut target = vec![None; MAX_ENDPOINTS as usize];
    let slot = |e: &Endpoint| endpoint_slot(e.addr) as usize;
    let holds = |e: &Endpoint| current[slot(e)].is_some_and(|c| c.addr == e.addr);
    for ep in wanted.iter().filter(|e| holds(e)) {
        target[slot(ep)] = Some(*ep);
    }
    for ep in wanted.iter().filter(|e| !holds(e)) {
        target[slot(ep)].get_or_insert(*ep);
    }
    target
}

/// How many of the containers `wanted` another container's entry keeps out
/// of their slot, given the entries `stored`.
pub fn crowded_out(wanted: &[Endpoint], stored: &[Endpoint]) -> usize {
    let holders: HashMap<u32, u32> = stored
        .iter()
        .map(|e| (endpoint_slot(e.addr), e.addr))
        .collect();
    wanted
        .iter()
        .filter(|e| {
            holders
                .get(&endpoint_slot(e.addr))
                .is_some_and(|&a| a != e.addr)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ep(addr: [u8; 4], ifindex: u32) -> Endpoint {
        Endpoint {
            addr: u32::from(Ipv4Addr::from(addr)).to_be(),
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            xdp_ready: 0,
            _pad: 0,
        }
    }

    fn stored(slots: &[Option<Endpoint>]) -> Vec<Endpoint> {
        slots.iter().flatten().copied().collect()
    }

    #[test]
    fn a_container_goes_to_its_addresses_low_bits() {
        let empty = vec![None; MAX_ENDPOINTS as usize];
        let (a, b) = (ep([10, 0, 128, 2], 7), ep([10, 0, 129, 3], 8));
        let slots = placement(&empty, &[a, b]);
        // The low 12 bits: 0x8002 -> 0x002, 0x8103 -> 0x103.
        assert_eq!(slots[0x002], Some(a));
        assert_eq!(slots[0x103], Some(b));
        assert_eq!(stored(&slots), vec![a, b]);
        assert_eq!(crowded_out(&[a, b], &stored(&slots)), 0);
        // Nothing wanted: every slot empties.
        assert!(stored(&placement(&slots, &[])).is_empty());
    }

    #[test]
    fn a_shared_slot_stays_with_its_holder() {
        let empty = vec![None; MAX_ENDPOINTS as usize];
        // 10.0.0.5 and 10.0.16.5 share a slot (4096 addresses apart).
        let (first, second) = (ep([10, 0, 0, 5], 7), ep([10, 0, 16, 5], 8));
        let slots = placement(&empty, &[second, first]);
        assert_eq!(stored(&slots), vec![second]);
        assert_eq!(crowded_out(&[second, first], &stored(&slots)), 1);
        // The holder keeps it whatever the order, and its entry is updated.
        let moved = ep([10, 0, 16, 5], 9);
        assert_eq!(stored(&placement(&slots, &[first, moved])), vec![moved]);
        // Gone, it leaves the slot to the other.
        assert_eq!(stored(&placement(&slots, &[first])), vec![first]);
    }
}
