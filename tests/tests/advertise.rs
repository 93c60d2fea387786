//! Which address an edge hands to clients (README "Which address an edge advertises"): an edge
//! listening on a wildcard address advertises the local address of its link to the control plane,
//! so an edge on another host is never advertised as 127.0.0.1; `--advertise-host` wins.
//!
//! "Another host" is a network namespace this test creates, joined to the test's namespace by a
//! veth pair on a private /30: the edge runs inside it (`ip netns exec`) and dials the fake control
//! plane on the far end of the pair, so its link's local address is the namespace's, not loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use roomcast_proto::link::Register;
use roomcast_tests::edge::{edge_args, edge_binary};
use roomcast_tests::process::ChildProcess;
use roomcast_tests::{for_each_driver, LinkPeer, WAIT};

/// A network namespace with a veth pair to the test's namespace; removed on drop.
struct OtherHost {
    name: String,
    host_side: String,
    /// Our end of the pair (where the control plane listens).
    control_ip: Ipv4Addr,
    /// The namespace's end (where the edge's link comes from).
    edge_ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e} (iproute2 is needed)", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl OtherHost {
    fn create(tag: &str) -> OtherHost {
        // Unique per process and scenario, so parallel test runs never share a name or a subnet.
        let pid = std::process::id();
        let n = (pid % 16_000) as u16 + if tag == "epoll" { 16_000 } else { 0 };
        let name = format!("rc-adv-{pid}-{tag}");
        let host_side = format!("rca{n}");
        let edge_side = format!("rcb{n}");
        let base = u32::from(Ipv4Addr::new(10, 213, 0, 0)) + u32::from(n) * 4;
        let control_ip = Ipv4Addr::from(base + 1);
        let edge_ip = Ipv4Addr::from(base + 2);
        let other = OtherHost {
            name: name.clone(),
            host_side: host_side.clone(),
            control_ip,
            edge_ip,
        };
        ip(&["netns", "add", &name]);
        ip(&[
            "link", "add", &host_side, "type", "veth", "peer", "name", &edge_side,
        ]);
        ip(&["link", "set", &edge_side, "netns", &name]);
        ip(&[
            "addr",
            "add",
            &format!("{control_ip}/30"),
            "dev",
            &host_side,
        ]);
        ip(&["link", "set", &host_side, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        inside(&["addr", "add", &format!("{edge_ip}/30"), "dev", &edge_side]);
        inside(&["link", "set", &edge_side, "up"]);
        inside(&["link", "set", "lo", "up"]);
        other
    }

    /// Starts the edge inside the namespace, linked to `control`, and waits for its register.
    async fn start_edge(
        &self,
        io: &str,
        control: &mut LinkPeer,
        extra: &[&str],
    ) -> (Register, ChildProcess) {
        let any = "0.0.0.0:0";
        let mut extra = extra.to_vec();
        extra.extend_from_slice(&["--admin-listen", any]);
        let args = edge_args(
            io,
            &control.addr().to_string(),
            "far-edge",
            any,
            any,
            &extra,
        );
        let mut command = vec!["netns".to_string(), "exec".into(), self.name.clone()];
        command.push(edge_binary().display().to_string());
        command.extend(args);
        let mut process = ChildProcess::spawn(Path::new("ip"), "edge-in-netns", io, &command);
        let register = tokio::select! {
            r = tokio::time::timeout(WAIT, control.accept_register()) => r.unwrap_or_else(|_| {
                panic!("no register frame within {WAIT:?}\n{}", process.log_tail())
            }),
            status = process.exited() => {
                panic!("the edge exited with {status}\n{}", process.log_tail())
            }
        };
        (register, process)
    }
}

impl Drop for OtherHost {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_side])
            .status();
    }
}

fn host_of(addr: &str) -> IpAddr {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr:?} is not ip:port: {e}"))
        .ip()
}

#[test]
fn a_wildcard_edge_on_another_host_advertises_its_link_address_and_advertise_host_wins() {
    for_each_driver(|io| async move {
        let other = OtherHost::create(io);
        let mut control = LinkPeer::bind_at(SocketAddr::from((other.control_ip, 0))).await;

        let (register, mut edge) = other.start_edge(io, &mut control, &[]).await;
        let edge_ip = IpAddr::V4(other.edge_ip);
        assert_eq!(host_of(&register.ws_addr), edge_ip, "{register:?}");
        assert_eq!(host_of(&register.tcp_addr), edge_ip, "{register:?}");
        assert_eq!(host_of(&register.admin_addr), edge_ip, "{register:?}");
        // And the advertised address really reaches the edge from here.
        let ws = SocketAddr::from((
            other.edge_ip,
            register.ws_addr.parse::<SocketAddr>().unwrap().port(),
        ));
        tokio::net::TcpStream::connect(ws)
            .await
            .unwrap_or_else(|e| panic!("dial the advertised {ws}: {e}"));
        edge.kill();

        let (register, mut edge) = other
            .start_edge(
                io,
                &mut control,
                &["--advertise-host", "edge-7.example.net"],
            )
            .await;
        assert!(
            register.ws_addr.starts_with("edge-7.example.net:"),
            "{register:?}"
        );
        assert!(
            register.admin_addr.starts_with("edge-7.example.net:"),
            "{register:?}"
        );
        edge.kill();
    });
}
