//! `cargo xtask demo`: three emulated hosts, two containers each, dr between them.
use std::path::Path;

use anyhow::Result;
use dr_tests::{
    cluster::{EXTERNAL_ADDR, ROUTER_ADDR},
    traffic, Cluster, Host,
};

fn banner(text: &str) {
    println!("\n=== {text}");
}

/// Runs dr-ctl on `host`, showing the command and its output.
fn dr(host: &Host, args: &[&str]) -> Result<()> {
    println!("[host {}]$ dr-ctl {}", host.id, args.join(" "));
    print!("{}", host.dr(args)?);
    Ok(())
}

pub fn run(dr_ctl: &Path) -> Result<()> {
    dr_tests::require_root();
    banner("Emulated cluster: 3 hosts on 192.168.91.0/24 (network namespaces, one L2 segment),");
    println!("a router at {ROUTER_ADDR} and behind it an external server {EXTERNAL_ADDR}");
    let mut cluster = Cluster::new("drdemo", 3, dr_ctl)?;
    cluster.add_external()?;
    let prefix = cluster.prefix.clone();
    for host in &mut cluster.hosts {
        banner(&format!(
            "Host {} ({}): dr-ctl up, then two containers on docker0",
            host.id, host.uplink_addr
        ));
        let args = host.up_args();
        dr(host, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        for _ in 0..2 {
            let c = host.add_container(&prefix)?;
            println!("container {} on docker0", c.addr);
        }
    }
    banner("Peers: every host learns the other hosts' container subnets (BPF map, not routes)");
    for host in &cluster.hosts {
        for peer in cluster.hosts.iter().filter(|p| p.id != host.id) {
            dr(
                host,
                &[
                    "peer",
                    "add",
                    &peer.subnet(),
                    "via",
                    &peer.uplink_addr.to_string(),
                ],
            )?;
        }
    }
    let (h0, h1, h2) = (&cluster.hosts[0], &cluster.hosts[1], &cluster.hosts[2]);
    banner(&format!(
        "Host {}'s kernel routing table has no route for peer subnets",
        h0.id
    ));
    print!("{}", h0.ns.ip(&["route", "show"])?);
    print!(
        "net.ipv4.ip_forward = {}",
        h0.ns.exec("sysctl", &["-n", "net.ipv4.ip_forward"])?
    );

    banner("Container-to-container ping across hosts");
    for (from, to) in [(h0, h1), (h1, h2), (h2, h0)] {
        let (a, b) = (&from.containers[0], &to.containers[1]);
        traffic::ping(&a.ns, b.addr, 3)?;
        println!(
            "{} (host {}) -> {} (host {}): 3/3 replies",
            a.addr, from.id, b.addr, to.id
        );
    }

    banner("TCP transfer across hosts (64 MiB, every byte checked)");
    let (a, b) = (&h0.containers[0], &h2.containers[0]);
    let bytes = 64 << 20;
    let (elapsed, _) = traffic::tcp_transfer(&a.ns, &b.ns, b.addr, bytes)?;
    println!(
        "{} -> {}: {} MiB in {:.2} s ({:.2} Gbit/s)",
        a.addr,
        b.addr,
        bytes >> 20,
        elapsed.as_secs_f64(),
        bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
    );
    let seen = traffic::udp_exchange(&h1.containers[0].ns, &b.ns, b.addr, 5)?;
    println!("UDP: 5 request/response exchanges, server saw source {seen}");

    banner("Containers reach the outside through dr's SNAT (no iptables MASQUERADE rule)");
    let ext = cluster.external.as_ref().expect("added above");
    traffic::ping(&h0.containers[1].ns, EXTERNAL_ADDR, 2)?;
    println!(
        "{} (host {}) -> {EXTERNAL_ADDR}: 2/2 replies",
        h0.containers[1].addr, h0.id
    );
    let (_, seen) = traffic::tcp_transfer(&h0.containers[0].ns, ext, EXTERNAL_ADDR, 8 << 20)?;
    println!(
        "TCP {} -> {EXTERNAL_ADDR}: the external server saw {seen}",
        h0.containers[0].addr
    );
    let seen = traffic::udp_exchange(&h0.containers[1].ns, ext, EXTERNAL_ADDR, 3)?;
    println!(
        "UDP {} -> {EXTERNAL_ADDR}: the external server saw {seen}",
        h0.containers[1].addr
    );
    println!(
        "iptables nat rules on host {}: {}",
        h0.id,
        h0.ns
            .exec("iptables", &["-t", "nat", "-S"])
            .map_or("none".into(), |r| r
                .lines()
                .filter(|l| l.starts_with("-A"))
                .count()
                .to_string())
    );
    dr(h0, &["nat", "list"])?;

    banner("The hosts' own processes reach containers on other hosts (no route, no forwarding)");
    let target = &h1.containers[1];
    traffic::ping(&h0.ns, target.addr, 2)?;
    println!(
        "host {} -> {} (host {}): 2/2 replies",
        h0.id, target.addr, h1.id
    );
    let (_, seen) = traffic::tcp_transfer(&h0.ns, &target.ns, target.addr, 1 << 20)?;
    println!(
        "TCP host {} -> {}: the container saw {seen}",
        h0.id, target.addr
    );

    banner(&format!(
        "A published port on host {} (Docker's DNAT for `docker run -p 8080:...`) answers outside clients",
        h1.id
    ));
    let server = &h1.containers[0];
    let sink = traffic::TestServer::tcp_sink(&server.ns, server.addr, 1)?;
    h1.publish("tcp", 8080, sink.addr)?;
    // dr-sync.timer does this every 10 s on an installed host.
    dr(h1, &["sync"])?;
    let published = std::net::SocketAddr::from((h1.uplink_addr, 8080));
    traffic::tcp_send(ext, 0, published, 1 << 20)?;
    let seen = sink.finish()?;
    println!(
        "TCP {EXTERNAL_ADDR} -> {published} -> {}: the container saw {}; dr translated it both ways ({} packets in, {} out), no conntrack",
        server.addr,
        seen[0],
        h1.counter("published_in")?,
        h1.counter("published_out")?
    );

    banner(&format!("dr-ctl status on host {}", h0.id));
    dr(h0, &["status"])?;

    banner("Cleaning up: dr-ctl down on every host, namespaces removed");
    for host in &cluster.hosts {
        dr(host, &["down"])?;
    }
    drop(cluster);
    println!("\ndemo complete");
    Ok(())
}
