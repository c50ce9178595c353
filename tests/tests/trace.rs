//! `dr-ctl trace` on emulated hosts with dr up: the verdict, counter,
//! rewritten headers and next hop of a synthetic packet, with nothing
//! counted, translated or sent.
use dr_tests::{cluster::EXTERNAL_ADDR, dr_ctl_path, require_root, Cluster, Host};
use serde_json::{json, Value};

/// `dr-ctl trace ARGS --json`: the programs' steps.
fn trace_steps(host: &Host, args: &[&str]) -> Vec<Value> {
    let out = host.dr(&[&["trace"], args, &["--json"]].concat()).unwrap();
    let report: Value = serde_json::from_str(&out).expect("trace --json parses");
    report["steps"].as_array().unwrap().clone()
}

/// [`trace_steps`] of a packet that takes one program.
fn trace(host: &Host, args: &[&str]) -> Value {
    let steps = trace_steps(host, args);
    assert_eq!(steps.len(), 1, "{steps:?}");
    steps[0].clone()
}

/// The rewritten fields of a step, as field -> [before, after].
fn rewritten(step: &Value) -> Value {
    step["rewritten"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                json!([c["before"], c["after"]]),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The counters a traced packet would have bumped, as they stand.
fn counters(host: &Host) -> Vec<u64> {
    let status = host.status().unwrap();
    [
        "to_peer",
        "from_peer",
        "nat_out",
        "nat_created",
        "drop_spoofed_source",
    ]
    .iter()
    .map(|name| status["counters"][name]["packets"].as_u64().unwrap())
    .collect()
}

#[test]
fn trace_explains_verdicts_without_counting_or_translating() {
    require_root();
    let c = Cluster::with_external("drtrace", &[], &dr_ctl_path()).expect("cluster with dr up");
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    let (container, peer_container) = (
        h0.containers[0].addr.to_string(),
        h1.containers[0].addr.to_string(),
    );
    let before = counters(h0);

    // To a container on the peer host: out of the uplink toward that host.
    let step = trace(
        h0,
        &[
            &format!("{container}:40000"),
            &format!("{peer_container}:80"),
            "tcp",
        ],
    );
    assert_eq!(step["program"], "dr_bridge_ingress");
    assert_eq!(step["verdict"], "redirect");
    assert_eq!(step["counters"], json!(["to_peer"]));
    assert_eq!(step["redirect"]["interface"], "eth0");
    assert_eq!(step["redirect"]["next_hop"], h1.uplink_addr.to_string());
    assert_eq!(rewritten(&step), json!({"ttl": ["64", "63"]}));

    // To an external server: translated to the uplink's address.
    let step = trace(h0, &[&container, &format!("{EXTERNAL_ADDR}:443"), "tcp"]);
    assert_eq!(step["verdict"], "redirect");
    assert_eq!(step["counters"], json!(["nat_out", "nat_created"]));
    assert_eq!(step["new_translation"], true);
    assert_eq!(step["redirect"]["interface"], "eth0");
    assert_eq!(step["redirect"]["next_hop"], Value::Null);
    let changes = rewritten(&step);
    assert_eq!(
        changes["src_addr"],
        json!([container, h0.uplink_addr.to_string()])
    );
    assert_eq!(changes["ttl"], json!(["64", "63"]));
    let port: u16 = changes["src_port"][1].as_str().unwrap().parse().unwrap();
    assert!(port >= 10000, "translated port {port}");

    // A source that is no local container's: dropped, and why.
    let step = trace(h0, &["10.0.200.5", &peer_container, "icmp"]);
    assert_eq!(step["verdict"], "drop");
    assert_eq!(step["counters"], json!(["drop_spoofed_source"]));
    assert_eq!(step["rewritten"], json!([]));

    // From the peer, on the wire: delivered to docker0.
    let step = trace(
        h1,
        &["--from", "uplink", &container, &peer_container, "udp"],
    );
    assert_eq!(step["program"], "dr_uplink_ingress");
    assert_eq!(step["verdict"], "redirect");
    assert_eq!(step["counters"], json!(["from_peer"]));
    assert_eq!(step["redirect"]["interface"], "docker0");
    assert_eq!(step["redirect"]["into_container"], false);
    // Once the peer host has learned its containers: straight into the
    // container, through its docker0 port.
    c.sync_endpoints().unwrap();
    let args = ["--from", "uplink", &container, &peer_container, "udp"];
    let step = trace(h1, &args);
    assert_eq!(step["verdict"], "redirect");
    assert_eq!(step["counters"], json!(["from_peer"]));
    assert_eq!(step["redirect"]["into_container"], true);
    let port = step["redirect"]["interface"].as_str().unwrap();
    assert!(port.starts_with("veth"), "{step}");
    let text = h1.dr(&[&["trace"][..], &args].concat()).unwrap();
    assert!(
        text.contains(&format!("into the container behind {port}")),
        "{text}"
    );

    // The host's own packet for a peer container: to the peer host's MAC.
    let h0_addr = h0.uplink_addr.to_string();
    let step = trace(h0, &["--from", "host", &h0_addr, &peer_container, "icmp"]);
    assert_eq!(step["program"], "dr_uplink_egress");
    assert_eq!(step["counters"], json!(["host_to_peer"]));
    // bpf_fib_lookup answers only where the uplink forwards: here it does
    // not, and the packet is handed to the kernel to resolve the peer host
    // ...
    assert_eq!(step["verdict"], "redirect");
    assert_eq!(step["redirect"]["next_hop"], h1.uplink_addr.to_string());
    // ... where it does and the peer host is known, the frame is rewritten
    // to its MAC and leaves by the same device.
    h0.ns
        .exec("sysctl", &["-q", "-w", "net.ipv4.conf.eth0.forwarding=1"])
        .unwrap();
    h0.ns
        .exec("ping", &["-c", "1", "-W", "2", &h1.uplink_addr.to_string()])
        .unwrap();
    let step = trace(h0, &["--from", "host", &h0_addr, &peer_container, "icmp"]);
    assert_eq!(step["verdict"], "pass", "{step}");
    assert_eq!(step["counters"], json!(["host_to_peer"]));
    let peer_mac = h1.ns.exec("cat", &["/sys/class/net/eth0/address"]).unwrap();
    assert_eq!(rewritten(&step)["dst_mac"][1], peer_mac.trim(), "{step}");

    // The text form says the same.
    let text = h0.dr(&["trace", &container, &peer_container]).unwrap();
    assert!(
        text.contains("dr_bridge_ingress: redirect (to_peer)")
            && text.contains("out of eth0 (ifindex "),
        "{text}"
    );

    assert_eq!(counters(h0), before, "trace moved a counter");
    assert_eq!(
        h0.nat_list().unwrap(),
        Vec::<Value>::new(),
        "trace made a translation"
    );
}

#[test]
fn from_the_uplink_xdp_runs_first() {
    require_root();
    let c =
        Cluster::with_external("drtracex", &["--xdp"], &dr_ctl_path()).expect("cluster with dr up");
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    let (container, peer_container) = (
        h0.containers[0].addr.to_string(),
        h1.containers[0].addr.to_string(),
    );
    // A known container: XDP delivers into its veth, TC never sees it.
    let steps = trace_steps(h1, &["--from", "uplink", &container, &peer_container]);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0]["program"], "dr_uplink_xdp");
    assert_eq!(steps[0]["verdict"], "redirect");
    assert_eq!(steps[0]["counters"], json!(["from_peer", "xdp_redirect"]));
    assert_eq!(steps[0]["redirect"]["into_container"], true);
    let veth = steps[0]["redirect"]["interface"].as_str().unwrap();
    let master = h1
        .ns
        .exec("cat", &[&format!("/sys/class/net/{veth}/master/ifindex")]);
    let docker0 = h1.ns.exec("cat", &["/sys/class/net/docker0/ifindex"]);
    assert_eq!(
        master.unwrap(),
        docker0.unwrap(),
        "{veth} is a docker0 port"
    );
    // Not from a peer: XDP passes it to TC, which passes it to the stack.
    let steps = trace_steps(h1, &["--from", "uplink", "203.0.113.10", &peer_container]);
    let verdicts: Vec<_> = steps
        .iter()
        .map(|s| {
            (
                s["program"].clone(),
                s["verdict"].clone(),
                s["counters"].clone(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            (json!("dr_uplink_xdp"), json!("pass"), json!(["xdp_pass"])),
            (json!("dr_uplink_ingress"), json!("pass"), json!(["passed"])),
        ]
    );
}

#[test]
fn trace_checks_its_input_and_needs_dr_up() {
    require_root();
    let c = Cluster::new("drtracebad", 2, &dr_ctl_path()).expect("cluster");
    c.hosts[0].up().unwrap();
    let (h0, h1) = (&c.hosts[0], &c.hosts[1]);
    for (args, code, expect) in [
        ("trace 10.0.128.300 10.0.129.2", 2, "not an IPv4 address"),
        ("trace 10.0.128.2:0 10.0.129.2", 2, "not a port"),
        ("trace 10.0.128.2:http 10.0.129.2", 2, "not a port"),
        ("trace 10.0.128.2 10.0.129.2 sctp", 2, "sctp"),
        ("trace 10.0.128.2 10.0.129.2 --from eth0", 2, "eth0"),
        (
            "trace 10.0.128.2:5 10.0.129.2 icmp",
            1,
            "ports are for tcp and udp",
        ),
    ] {
        let args: Vec<&str> = args.split_whitespace().collect();
        let out = h0.dr_output(&args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
    // dr is not up on the other host: "not up", exit code 3.
    let out = h1
        .dr_output(&["trace", "10.0.129.2", "10.0.128.2"])
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
