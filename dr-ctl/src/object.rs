//! The embedded eBPF object (its own module: `migrate` reads its maps'
//! layouts, and loading goes through `migrate`).

/// The embedded eBPF object, built from `dr-ebpf` by build.rs.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dr"));

/// FNV-1a hash of the embedded object: tells `up` whether the attached
/// programs came from another build.
pub fn hash() -> u64 {
    EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}
