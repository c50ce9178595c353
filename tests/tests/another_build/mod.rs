//! Making `up` swap the programs in place as another build's would: shared
//! by the restart and kernel tests.
use dr_common::NodeState;
use dr_ctl::node;
use dr_tests::Host;

/// Makes dr-ctl's node state say that the attached programs came from
/// another build, so that the next `up` replaces them.
pub fn pretend(host: &Host) {
    let pins = format!("/sys/fs/bpf/dr/netns-{}", host.ns.inode().unwrap());
    let pins = std::path::Path::new(&pins);
    let state = node::state::read(pins).unwrap().expect("a node state");
    let other = NodeState {
        object_hash: 0,
        ..state
    };
    node::state::write(pins, &other).unwrap();
}
