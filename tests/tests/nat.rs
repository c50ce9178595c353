//! SNAT to external networks through the real dr-ctl in emulated hosts.
use dr_tests::{cluster::EXTERNAL_ADDR, dr_ctl_path, require_root, traffic, Cluster};

fn cluster(tag: &str) -> Cluster {
    require_root();
    let mut c = Cluster::new(tag, 2, &dr_ctl_path()).expect("cluster");
    c.add_external().expect("external network");
    c.up_all(2).expect("dr up on all hosts");
    c
}

#[test]
fn smoke() {
    let c = cluster("drnat");
    let h0 = &c.hosts[0];
    let ext = c.external.as_ref().unwrap();
    let r = traffic::ping(&h0.containers[0].ns, EXTERNAL_ADDR, 2);
    println!("{}", h0.dr(&["status"]).unwrap());
    println!("{}", h0.dr(&["nat", "list"]).unwrap());
    r.unwrap();
    let seen = traffic::udp_exchange(&h0.containers[0].ns, ext, EXTERNAL_ADDR, 3).unwrap();
    println!("udp seen {seen}");
    traffic::tcp_transfer(&h0.containers[1].ns, ext, EXTERNAL_ADDR, 1 << 20).unwrap();
    println!("{}", h0.dr(&["nat", "list"]).unwrap());
}
