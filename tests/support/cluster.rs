//! A local cluster of real `runnel broker` processes for the fault tests:
//! N nodes on ports chosen before they start (every node's `--peers` names
//! them all), each with its own temporary data directory, and optionally a
//! fault-injecting proxy ([`super::proxy::Link`]) on every node-to-node link.
//!
//! The cluster holds every place of the concurrency cap
//! ([`super::broker::MAX_LOAD_UNITS`]): a cluster test runs alone in its
//! test binary. Nodes are [`Broker`]s started without their own place, so
//! kill -9, SIGSTOP/SIGCONT, SIGTERM and restart work as for one broker;
//! a node restarts on the same port (the others' `--peers` name it).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::{DescribeTopicRequest, TopicDescription};
use tonic::transport::{Channel, Endpoint};

use super::broker::{MAX_LOAD_UNITS, Permit};
use super::cli::{CliOutput, run_cli_env};
use super::grpc::Clients;
use super::proxy::Link;
use super::{Broker, BrokerOptions, eventually};

/// Options of [`Cluster::start`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=nodes).
    pub nodes: u32,
    /// `--flush` of every node.
    pub flush: String,
    /// Put a [`Link`] proxy on every directed node-to-node link, so that
    /// the test can cut and heal links ([`Cluster::isolate`]).
    pub proxies: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            flush: "always".into(),
            proxies: false,
        }
    }
}

/// One node: its broker process (stopped or running) and fixed port.
struct Node {
    broker: Broker,
    addr: SocketAddr,
    paused: bool,
}

/// A running cluster; every node is killed (SIGKILL) when it is dropped.
pub struct Cluster {
    nodes: BTreeMap<u32, Node>,
    links: Vec<Link>,
    _permit: Permit,
}

/// Where the nodes of a cluster listen, by id: what spawned tasks (a
/// producer following the leader) need to reach them.
#[derive(Clone, Debug)]
pub struct Addrs(pub BTreeMap<u32, SocketAddr>);

impl Cluster {
    /// Picks free ports, starts every node (ids 1..=nodes) and waits for
    /// each one's ready line. Call it from the test's own thread, inside a
    /// multi-threaded runtime when `proxies` is on (the proxies are tasks).
    pub async fn start(opts: ClusterOptions) -> Cluster {
        let permit = Permit::acquire(MAX_LOAD_UNITS);
        let ids: Vec<u32> = (1..=opts.nodes).collect();
        let ports = free_ports(ids.len());
        let addrs: BTreeMap<u32, SocketAddr> = ids
            .iter()
            .zip(&ports)
            .map(|(&id, &port)| (id, SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let mut links = Vec::new();
        // peers[i][j]: where node i is told node j lives.
        let mut peers: BTreeMap<u32, BTreeMap<u32, SocketAddr>> = BTreeMap::new();
        for &i in &ids {
            for &j in &ids {
                let addr = if i != j && opts.proxies {
                    let link = Link::start(i, j, addrs[&j]).await;
                    let a = link.addr();
                    links.push(link);
                    a
                } else {
                    addrs[&j]
                };
                peers.entry(i).or_default().insert(j, addr);
            }
        }
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let peer_list: Vec<String> =
                peers[&id].iter().map(|(j, a)| format!("{j}={a}")).collect();
            let broker = Broker::start_unmetered(BrokerOptions {
                flush: opts.flush.clone(),
                bare: true,
                extra_args: vec![
                    "--id".into(),
                    id.to_string(),
                    "--listen".into(),
                    addrs[&id].to_string(),
                    "--metrics-listen".into(),
                    "127.0.0.1:0".into(),
                    "--data-dir".into(),
                    "{data_dir}".into(),
                    "--flush".into(),
                    opts.flush.clone(),
                    "--peers".into(),
                    peer_list.join(","),
                ],
                ..Default::default()
            });
            assert_eq!(broker.id(), id, "node {id} printed another id");
            assert_eq!(
                broker.grpc_addr(),
                addrs[&id],
                "node {id} listens elsewhere"
            );
            nodes.insert(
                id,
                Node {
                    broker,
                    addr: addrs[&id],
                    paused: false,
                },
            );
        }
        Cluster {
            nodes,
            links,
            _permit: permit,
        }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.keys().copied().collect()
    }

    /// Ids of nodes running and not paused.
    pub fn live_ids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.broker.is_running() && !n.paused)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Smallest number of nodes that is a majority.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn node(&self, id: u32) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u32) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The broker process of node `id`.
    pub fn broker(&self, id: u32) -> &Broker {
        &self.node(id).broker
    }

    /// The client address of node `id` (its real listen address).
    pub fn addr(&self, id: u32) -> SocketAddr {
        self.node(id).addr
    }

    /// Every node's client address.
    pub fn addrs(&self) -> Addrs {
        Addrs(self.nodes.iter().map(|(&id, n)| (id, n.addr)).collect())
    }

    /// `HOST:PORT,...` of every node, for `--bootstrap`.
    pub fn bootstrap(&self) -> String {
        let all: Vec<String> = self.nodes.values().map(|n| n.addr.to_string()).collect();
        all.join(",")
    }

    /// gRPC clients connected to node `id`.
    pub async fn clients(&self, id: u32) -> Clients {
        Clients::connect(self.addr(id)).await
    }

    /// kill -9 node `id` (reaped; its data directory stays).
    pub fn kill9(&mut self, id: u32) {
        let node = self.node_mut(id);
        node.broker.kill9();
        node.paused = false;
    }

    /// SIGTERM node `id` and wait (bounded) for exit status 0.
    pub async fn terminate_ok(&mut self, id: u32) {
        let node = self.node_mut(id);
        if node.paused {
            node.broker.resume();
            node.paused = false;
        }
        node.broker.terminate_ok().await;
    }

    /// Starts a stopped node again on its port and data directory.
    pub fn restart(&mut self, id: u32) {
        self.node_mut(id).broker.restart();
    }

    /// SIGSTOP node `id`.
    pub fn pause(&mut self, id: u32) {
        let node = self.node_mut(id);
        node.broker.pause();
        node.paused = true;
    }

    /// SIGCONT node `id`.
    pub fn resume(&mut self, id: u32) {
        let node = self.node_mut(id);
        node.broker.resume();
        node.paused = false;
    }

    /// Cuts every link to and from node `id` (both directions), leaving
    /// the other nodes connected. Needs `proxies`.
    pub fn isolate(&self, id: u32) {
        assert!(
            !self.links.is_empty(),
            "isolate() needs ClusterOptions::proxies"
        );
        for link in self.links.iter().filter(|l| l.from == id || l.to == id) {
            link.cut();
        }
    }

    /// Heals every cut link.
    pub fn heal(&self) {
        for link in &self.links {
            link.heal();
        }
    }

    /// Runs `runnel ARGS` with RUNNEL_BOOTSTRAP naming node `id` only.
    pub fn cli(&self, id: u32, args: &[&str], stdin: &str) -> CliOutput {
        let addr = self.addr(id).to_string();
        run_cli_env(args, stdin, &[("RUNNEL_BOOTSTRAP", addr.as_str())])
    }

    /// Like [`Cluster::cli`] but asserts exit status 0; returns stdout.
    pub fn cli_ok(&self, id: u32, args: &[&str], stdin: &str) -> String {
        let out = self.cli(id, args, stdin);
        assert!(
            out.status.success(),
            "runnel {args:?} on node {id} failed: {out}\n{}",
            self.stderr_tails(30)
        );
        out.stdout
    }

    /// Creates `topic` through node `via`, retrying while the controller
    /// is still electing its leader (UNAVAILABLE), and waits until every
    /// live node describes it with a leader for every partition.
    pub async fn create_topic(&self, via: u32, topic: &str, partitions: u32, rf: u32) {
        let (p, r) = (partitions.to_string(), rf.to_string());
        let args = [
            "topic",
            "create",
            topic,
            "--partitions",
            &p,
            "--replication-factor",
            &r,
        ];
        let mut attempts = 0;
        eventually(Duration::from_secs(60), "topic create to succeed", || {
            attempts += 1;
            let out = self.cli(via, &args, "");
            // After a failed attempt whose outcome was unknown, the topic
            // may exist already: that is success too.
            let done =
                out.status.success() || (attempts > 1 && out.stderr.contains("already exists"));
            let retriable = out.stderr.contains("UNAVAILABLE") || out.stderr.contains("retry");
            assert!(
                done || retriable,
                "topic create {topic} on node {via}: {out}\n{}",
                self.stderr_tails(30)
            );
            async move { done.then_some(()) }
        })
        .await;
        for part in 0..partitions {
            self.leader(topic, part, Duration::from_secs(60)).await;
        }
    }

    /// DescribeTopic on node `id`, bounded by 2 s; `None` on any failure.
    pub async fn describe_on(&self, id: u32, topic: &str) -> Option<TopicDescription> {
        describe_at(self.addr(id), topic).await
    }

    /// Waits until a majority of nodes agree that some live node leads
    /// `topic`/`partition` and that node says so itself; returns its id.
    pub async fn leader(&self, topic: &str, partition: u32, limit: Duration) -> u32 {
        self.leader_where(topic, partition, limit, |_| true).await
    }

    /// [`Cluster::leader`] for a leader accepted by `ok` (e.g. not the
    /// node just killed).
    pub async fn leader_where(
        &self,
        topic: &str,
        partition: u32,
        limit: Duration,
        ok: impl Fn(u32) -> bool,
    ) -> u32 {
        let addrs = self.live_addrs();
        let majority = self.majority();
        let what = format!("an agreed leader of {topic}/{partition}");
        let started = Instant::now();
        let found = tokio::time::timeout(
            limit,
            eventually(limit + Duration::from_secs(1), &what, || {
                let addrs = addrs.clone();
                let ok = &ok;
                async move {
                    agreed_leader(&addrs, topic, partition, majority)
                        .await
                        .filter(|&l| ok(l))
                }
            }),
        )
        .await;
        match found {
            Ok(id) => id,
            Err(_) => panic!(
                "no agreed leader of {topic}/{partition} within {:?}\n{}",
                started.elapsed(),
                self.stderr_tails(30)
            ),
        }
    }

    fn live_addrs(&self) -> Addrs {
        Addrs(
            self.live_ids()
                .into_iter()
                .map(|id| (id, self.addr(id)))
                .collect(),
        )
    }

    /// The last `n` stderr lines of every node, for failure messages.
    pub fn stderr_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for (id, node) in &self.nodes {
            let text = node.broker.stderr();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(n);
            out.push_str(&format!("--- node {id}: last {n} stderr lines ---\n"));
            for line in &lines[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Every stderr line of every node containing `needle`, prefixed with
    /// the node id.
    pub fn grep_stderr(&self, needle: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (id, node) in &self.nodes {
            for line in node.broker.stderr().lines() {
                if line.contains(needle) {
                    out.push(format!("node {id}: {line}"));
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each Broker prints its own stderr tail when the test panicked and
        // is killed by pid.
        self.heal();
    }
}

/// DescribeTopic at `addr` over a fresh channel, bounded by 2 s; `None` on
/// any failure (node down or paused, topic unknown there yet).
pub async fn describe_at(addr: SocketAddr, topic: &str) -> Option<TopicDescription> {
    let call = async {
        let ch = probe_channel(addr);
        let mut admin = AdminServiceClient::new(ch);
        admin
            .describe_topic(DescribeTopicRequest { name: topic.into() })
            .await
            .ok()?
            .into_inner()
            .topic
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

/// A lazily connecting channel with short timeouts, for probes.
pub fn probe_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy()
}

/// One round of asking every node in `addrs` who leads `topic`/`partition`:
/// the node that says it leads, when at least `majority` nodes (itself
/// included) name it. `None` when there is no such node now.
pub async fn agreed_leader(
    addrs: &Addrs,
    topic: &str,
    partition: u32,
    majority: usize,
) -> Option<u32> {
    let mut probes = tokio::task::JoinSet::new();
    for (&id, &addr) in &addrs.0 {
        let topic = topic.to_string();
        probes.spawn(async move {
            let d = describe_at(addr, &topic).await?;
            let p = d.partitions.into_iter().find(|p| p.id == partition)?;
            Some((id, p.leader))
        });
    }
    let mut votes: BTreeMap<u32, usize> = BTreeMap::new();
    let mut claims = Vec::new();
    // Answers are taken as they come: a paused node (which answers only
    // after the 2 s bound) does not delay a majority that has agreed.
    while let Some(answer) = probes.join_next().await {
        let Ok(Some((id, leader))) = answer else {
            continue;
        };
        if leader != 0 {
            *votes.entry(leader).or_default() += 1;
            if leader == id {
                claims.push(id);
            }
        }
        let agreed = claims
            .iter()
            .copied()
            .find(|id| votes.get(id).copied().unwrap_or(0) >= majority);
        if agreed.is_some() {
            probes.abort_all();
            return agreed;
        }
    }
    None
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago, below the
/// kernel's ephemeral range (32768+) so that no outgoing connection takes
/// one of them while its node is down between a kill and a restart.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id())
        ^ (super::now_ms() as u64).rotate_left(17)
        ^ NEXT.fetch_add(0x9e37_79b9, Ordering::Relaxed);
    let mut x = seed | 1;
    let mut ports = Vec::new();
    for _ in 0..10_000 {
        if ports.len() == n {
            break;
        }
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20_000 + (x % 12_000) as u16;
        if ports.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "cannot find {n} free ports in 20000..32000");
    ports
}
