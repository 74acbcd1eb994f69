//! The metadata cache and routing, against the fake cluster.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::Client;
use crate::fake_cluster::{FakeCluster, TOPIC};

fn config() -> ClientConfig {
    ClientConfig {
        metadata_backoff: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

/// The leader each partition routes to.
fn leaders(client: &Client, partitions: u32) -> Vec<u32> {
    (0..partitions)
        .map(|p| client.metadata().target(TOPIC, p).0)
        .collect()
}

#[test]
fn unspecified_hosts_take_the_host_that_described_them() {
    // (case, advertised, via, expected)
    let cases = [
        (0, "10.0.0.2:9740", "10.0.0.1:9740", "10.0.0.2:9740"),
        (1, "0.0.0.0:9741", "broker1:9740", "broker1:9741"),
        (2, "[::]:9741", "http://10.0.0.1:9740", "10.0.0.1:9741"),
        (3, "host-without-port", "a:1", "host-without-port"),
    ];
    for (case, advertised, via, want) in cases {
        assert_eq!(reachable(advertised, via), want, "case {case}");
    }
}

#[tokio::test]
async fn topics_route_to_their_leaders_and_unknown_leaders_to_the_default_node() {
    let fake = FakeCluster::start(3, vec![1, 2, 3, 0]).await;
    let client = Client::connect_with(&fake.bootstrap, config())
        .await
        .unwrap();
    let metadata = client.metadata();
    assert!(metadata.version(TOPIC).is_none(), "not loaded yet");
    assert_eq!(
        metadata.target(TOPIC, 0),
        (0, Arc::from(fake.address(1).as_str()))
    );
    client.describe_topic(TOPIC).await.unwrap();
    assert_eq!(leaders(&client, 4), [1, 2, 3, 0]);
    for p in 0..3 {
        let route = metadata.route(TOPIC, p).unwrap();
        assert_eq!(&*route.address, fake.address(p + 1), "partition {p}");
    }
    // No leader: the default node (the first bootstrap address).
    let route = metadata.route(TOPIC, 3).unwrap();
    assert_eq!(&*route.address, fake.address(1));
    // One connection per node, shared.
    assert_eq!(metadata.lock().channels.len(), 3);
    // A deleted topic's routes are dropped.
    metadata.forget(TOPIC);
    assert!(metadata.version(TOPIC).is_none());
    assert_eq!(metadata.target(TOPIC, 1).0, 0);
}

#[tokio::test]
async fn not_leader_naming_the_leader_moves_the_partition_without_a_call() {
    let fake = FakeCluster::start(3, vec![1, 2]).await;
    let client = Client::connect_with(&fake.bootstrap, config())
        .await
        .unwrap();
    client.describe_topic(TOPIC).await.unwrap();
    let metadata = client.metadata();
    let describes = fake.cluster.describes.load(Ordering::SeqCst);
    let before = metadata.version(TOPIC);
    let moved = Error::Status {
        reason: ErrorReason::NotLeader,
        message: String::new(),
        leader_id: 3,
        leader_address: fake.address(3),
        status: None,
    };
    // (case, error, refresh wanted, leader of partition 0 after)
    let anonymous = Error::local(ErrorReason::NotLeader, "no leader");
    let unavailable = Error::local(ErrorReason::Unavailable, "busy");
    let unknown = Error::local(ErrorReason::UnknownTopic, "gone");
    let cases: [(u32, &Error, bool, u32); 4] = [
        (0, &moved, false, 3),
        (1, &anonymous, true, 3),
        (2, &unavailable, true, 3),
        (3, &unknown, false, 3),
    ];
    for (case, error, refresh, leader) in cases {
        let address = fake.address(1);
        assert_eq!(
            metadata.note_error(TOPIC, 0, &address, error),
            refresh,
            "case {case}"
        );
        assert_eq!(leaders(&client, 2)[0], leader, "case {case}");
    }
    assert_ne!(metadata.version(TOPIC), before, "a move is a new version");
    assert_eq!(
        fake.cluster.describes.load(Ordering::SeqCst),
        describes,
        "no call made"
    );
    // A leader the cache cannot place is no move.
    assert!(!metadata.leader_moved(TOPIC, 1, 9, ""));
    assert!(!metadata.leader_moved(TOPIC, 7, 3, ""));
    assert_eq!(leaders(&client, 2), [3, 2]);
}

#[tokio::test]
async fn concurrent_refreshes_of_the_same_routes_make_one_call() {
    let fake = FakeCluster::start(2, vec![1, 2]).await;
    let client = Client::connect_with(&fake.bootstrap, config())
        .await
        .unwrap();
    client.describe_topic(TOPIC).await.unwrap();
    fake.cluster.move_leader(0, 2);
    let seen = client.metadata().version(TOPIC);
    let before = fake.cluster.describes.load(Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.metadata().refresh(TOPIC, seen).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(fake.cluster.describes.load(Ordering::SeqCst), before + 1);
    assert_eq!(leaders(&client, 2), [2, 2]);
    // A refresh of newer routes waits out the backoff, then calls.
    let started = Instant::now();
    let seen = client.metadata().version(TOPIC);
    client.metadata().refresh(TOPIC, seen).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(10));
    assert_eq!(fake.cluster.describes.load(Ordering::SeqCst), before + 2);
}

#[tokio::test]
async fn calls_any_node_serves_move_on_when_the_default_node_is_down() {
    let fake = FakeCluster::start(3, vec![2]).await;
    let client = Client::connect_with(&fake.bootstrap, config())
        .await
        .unwrap();
    assert_eq!(client.describe_cluster().await.unwrap().answered_by, 1);
    fake.node(1).down.store(true, Ordering::SeqCst);
    let answer = client.describe_cluster().await.unwrap();
    assert_eq!(answer.answered_by, 2);
    // Node 2 is the default now: no more tries on node 1.
    assert_eq!(
        &*client.metadata().default_route().unwrap().address,
        fake.address(2)
    );
    client.list_topics().await.unwrap();
    fake.node(2).down.store(true, Ordering::SeqCst);
    fake.node(3).down.store(true, Ordering::SeqCst);
    let error = client.describe_topic(TOPIC).await.unwrap_err();
    assert!(error.is_connection_error(), "{error}");
}

#[tokio::test]
async fn offset_lookups_go_to_leaders_and_follow_moves() {
    let fake = FakeCluster::start(3, vec![1, 2, 3]).await;
    let client = Client::connect_with(&fake.bootstrap, config())
        .await
        .unwrap();
    let queries: Vec<(u32, crate::OffsetSpec)> =
        (0..3).map(|p| (p, crate::OffsetSpec::Latest)).collect();
    assert_eq!(
        client.list_offsets_many(TOPIC, &queries).await.unwrap(),
        [0, 0, 0]
    );
    // Moved without telling: the lookup refreshes and asks again.
    fake.cluster.name_leader.store(false, Ordering::SeqCst);
    fake.cluster.move_leader(1, 3);
    assert_eq!(
        client.list_offsets_many(TOPIC, &queries).await.unwrap(),
        [0, 0, 0]
    );
    assert_eq!(leaders(&client, 3), [1, 3, 3]);
    // No leader at all: the lookup gives up with NOT_LEADER.
    fake.cluster.move_leader(0, 0);
    let error = client
        .list_offsets(TOPIC, 0, crate::OffsetSpec::Earliest)
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(ErrorReason::NotLeader));
}

#[tokio::test]
async fn a_paused_default_node_holds_metadata_calls_up_only_for_the_metadata_timeout() {
    let fake = FakeCluster::start(2, vec![2]).await;
    let config = ClientConfig {
        metadata_timeout: Duration::from_millis(200),
        ..config()
    };
    let client = Client::connect_with(&fake.bootstrap, config).await.unwrap();
    fake.node(1).paused.store(true, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(client.describe_cluster().await.unwrap().answered_by, 2);
    let took = started.elapsed();
    assert!(
        (Duration::from_millis(200)..Duration::from_secs(3)).contains(&took),
        "{took:?}"
    );
}
