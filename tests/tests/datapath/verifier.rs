//! The verifier's work for each program. The kernel gives up at a million
//! instructions processed, and `up` waits for all of them: about a second
//! per 800,000 here. A new flow's 32 port candidates are walked one by one,
//! so whatever the loop's body adds counts 32 times: on December 6 the
//! programs that translate went from 186,000 to 850,000 on 6.18 (1.1 s each
//! to load) without a test noticing; a benchmark timing `apply` did. A
//! change that helps one kernel can hurt another (a non-inlined call per
//! candidate: 488,000 on 6.18, 849,000 on Debian 12's 6.1), so this runs in
//! the 6.1 VM too (`cargo xtask test`).
use aya::programs::Program;

use super::*;

/// At most 60% of the kernel's limit: room for the verifier of another
/// kernel version to walk some paths twice.
const BUDGET: u32 = 600_000;

#[test]
fn every_program_verifies_well_within_the_kernels_limit() {
    let mut dp = nat_datapath(nat_config(), DEFAULT_TABLE_SIZE);
    let mut counts = Vec::new();
    for (name, program) in dp.ebpf.programs_mut() {
        // Loaded here unless the harness did (the sweeper, the clock sampler).
        if program.info().is_err() {
            let loaded = match program {
                Program::SchedClassifier(p) => datapath::load_retrying(|| p.load()),
                Program::Xdp(p) => datapath::load_retrying(|| p.load()),
                _ => panic!("{name}: a program type this test does not load"),
            };
            loaded.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
        let info = program
            .info()
            .unwrap_or_else(|e| panic!("{name} is not loaded: {e}"));
        let verified = info
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("the kernel reports no verified instructions for {name}"));
        counts.push((name.to_string(), verified));
    }
    eprintln!("verified instructions: {counts:?}");
    assert!(counts.len() >= 8, "programs loaded: {counts:?}");
    for (name, verified) in counts {
        assert!(
            verified <= BUDGET,
            "{name}: {verified} instructions verified, budget {BUDGET}"
        );
    }
}
