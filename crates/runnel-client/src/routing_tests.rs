//! Producers and consumers against a fake three-node cluster whose leaders
//! move (and whose nodes go down) while they run: nothing acknowledged is
//! lost or duplicated, partition order holds, requests go to leaders.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::fake_cluster::{FakeCluster, TOPIC};
use crate::{
    Client, ClientConfig, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig,
    ProducerRecord, StartPosition,
};

/// How leadership changes mid-test.
#[derive(Clone, Copy, Debug)]
enum Move {
    /// NOT_LEADER names the new leader.
    Named,
    /// NOT_LEADER names nobody: the client refreshes its metadata.
    Anonymous,
    /// The old leader goes down (every call to it fails as unreachable).
    Down,
}

fn client_config() -> ClientConfig {
    ClientConfig {
        metadata_backoff: Duration::from_millis(10),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn producer_config() -> ProducerConfig {
    ProducerConfig {
        linger: Duration::from_millis(1),
        batch_bytes: 300,
        retry_backoff: Duration::from_millis(5),
        retry_backoff_max: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        ..ProducerConfig::default()
    }
}

/// A fake cluster of three nodes leading partitions 0, 1, 2 of [`TOPIC`],
/// a client bootstrapped with every node, and a producer.
async fn start(config: ProducerConfig) -> (FakeCluster, Client, Producer) {
    start_led_by(vec![1, 2, 3], config).await
}

/// As [`start`], partition `i` led by node `leaders[i]`.
async fn start_led_by(
    leaders: Vec<u32>,
    config: ProducerConfig,
) -> (FakeCluster, Client, Producer) {
    let fake = FakeCluster::start(3, leaders).await;
    let client = Client::connect_with(&fake.bootstrap, client_config())
        .await
        .unwrap();
    let producer = Producer::new(&client, config).await.unwrap();
    (fake, client, producer)
}

/// Moves partition `partition` from `from` to `to` the way `how` says.
fn move_leader(fake: &FakeCluster, how: Move, partition: u32, from: u32, to: u32) {
    fake.cluster
        .name_leader
        .store(matches!(how, Move::Named), Ordering::SeqCst);
    fake.cluster.move_leader(partition, to);
    if matches!(how, Move::Down) {
        fake.node(from).down.store(true, Ordering::SeqCst);
    }
}

/// A cluster led by `leaders` holding 60 acknowledged records in each of
/// its 3 partitions: the cluster, a client, what was sent, and how many.
async fn filled(leaders: Vec<u32>) -> (FakeCluster, Client, HashMap<u32, Vec<Vec<u8>>>, usize) {
    let (fake, client, producer) = start_led_by(leaders, producer_config()).await;
    let (mut sent, mut futures) = (HashMap::new(), Vec::new());
    send_round(&producer, 0, 60, &mut sent, &mut futures).await;
    producer.close().await.unwrap();
    let total = sent.values().map(Vec::len).sum();
    (fake, client, sent, total)
}

/// A consumer of every partition of [`TOPIC`] from its earliest offset.
async fn from_earliest(client: &Client, config: ConsumerConfig) -> Consumer {
    Consumer::new(client, TOPIC, None, StartPosition::Earliest, config)
        .await
        .unwrap()
}

/// Sends `n` records per partition of 3, numbered, checking nothing yet.
async fn send_round(
    producer: &Producer,
    round: usize,
    n: usize,
    sent: &mut HashMap<u32, Vec<Vec<u8>>>,
    futures: &mut Vec<(u32, Vec<u8>, DeliveryFuture)>,
) {
    for i in 0..n {
        for p in 0..3u32 {
            let value = format!("p{p}-r{round}-{i}").into_bytes();
            let f = producer
                .send(ProducerRecord::new(TOPIC, value.clone()).partition(p))
                .await
                .unwrap();
            sent.entry(p).or_default().push(value.clone());
            futures.push((p, value, f));
        }
    }
}

#[tokio::test]
async fn a_producer_follows_leader_moves_without_losing_or_duplicating_records() {
    for (case, how) in [Move::Named, Move::Anonymous, Move::Down]
        .into_iter()
        .enumerate()
    {
        let (fake, _client, producer) = start(producer_config()).await;
        let describes = fake.cluster.describes.load(Ordering::SeqCst);
        let mut sent = HashMap::new();
        let mut futures = Vec::new();
        send_round(&producer, 0, 50, &mut sent, &mut futures).await;
        // The pipeline runs: batches are in flight or queued when leaders move.
        (&mut futures[0].2).await.unwrap();
        move_leader(&fake, how, 0, 1, 2);
        send_round(&producer, 1, 50, &mut sent, &mut futures).await;
        move_leader(&fake, Move::Named, 1, 2, 3);
        send_round(&producer, 2, 50, &mut sent, &mut futures).await;
        producer.flush().await.unwrap();
        // A named leader is used as named; otherwise metadata is re-read.
        let refreshed = fake.cluster.describes.load(Ordering::SeqCst) > describes + 1;
        assert_eq!(refreshed, !matches!(how, Move::Named), "case {case}");
        // Every record acknowledged, at the offset that holds it.
        let stored: Vec<Vec<Vec<u8>>> = (0..3).map(|p| fake.cluster.values(p)).collect();
        for (p, value, f) in futures {
            let meta = f.await.unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert_eq!(meta.partition, p, "case {case}");
            let offset = meta.offset.unwrap() as usize;
            assert_eq!(stored[p as usize][offset], value, "case {case}");
        }
        // Each partition holds exactly what was sent, once, in order.
        for p in 0..3u32 {
            assert_eq!(stored[p as usize], sent[&p], "case {case}: partition {p}");
        }
        // One produce stream per node; the moved partitions' new leaders
        // took their writes.
        for node in &fake.nodes {
            assert_eq!(node.stats.streams.load(Ordering::SeqCst), 1, "case {case}");
        }
        assert!(fake.node(3).stats.appended.load(Ordering::SeqCst) > 0);
        let not_leader: u32 = fake
            .nodes
            .iter()
            .map(|n| n.stats.not_leader.load(Ordering::SeqCst))
            .sum();
        let appended: u32 = fake
            .nodes
            .iter()
            .map(|n| n.stats.appended.load(Ordering::SeqCst))
            .sum();
        // Redirects only around the moves, not for every batch.
        assert!(
            (1..=4 * producer_config().max_in_flight as u32).contains(&not_leader),
            "case {case}: {not_leader} NOT_LEADER answers for {appended} batches"
        );
        producer.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_consumer_follows_leader_moves_and_keeps_its_positions() {
    for (case, how) in [Move::Named, Move::Anonymous, Move::Down]
        .into_iter()
        .enumerate()
    {
        let (fake, client, sent, total) = filled(vec![1, 2, 3]).await;
        let mut consumer = from_earliest(
            &client,
            ConsumerConfig {
                max_wait: Duration::from_millis(20),
                retry_backoff: Duration::from_millis(5),
                retry_timeout: Duration::from_secs(5),
                ..ConsumerConfig::default()
            },
        )
        .await;
        let mut got: HashMap<u32, Vec<(u64, Vec<u8>)>> = HashMap::new();
        let mut read = 0;
        let mut polls = 0;
        while read < total {
            polls += 1;
            assert!(polls < 2000, "case {case}: stuck after {read} records");
            let records = consumer
                .poll()
                .await
                .unwrap_or_else(|e| panic!("case {case}: {e}"));
            read += records.len();
            for r in records {
                got.entry(r.partition)
                    .or_default()
                    .push((r.offset, r.value.to_vec()));
            }
            if polls == 2 {
                move_leader(&fake, how, 0, 1, 2);
            }
            if polls == 4 {
                move_leader(&fake, Move::Named, 1, 2, 3);
            }
        }
        for p in 0..3u32 {
            let offsets: Vec<u64> = got[&p].iter().map(|(o, _)| *o).collect();
            let want: Vec<u64> = (0..sent[&p].len() as u64).collect();
            assert_eq!(
                offsets, want,
                "case {case}: partition {p} read once, in order"
            );
            let values: Vec<Vec<u8>> = got[&p].iter().map(|(_, v)| v.clone()).collect();
            assert_eq!(values, sent[&p], "case {case}: partition {p}");
            assert_eq!(consumer.position(p), Some(sent[&p].len() as u64));
        }
        // Partition 0 ended on node 2, partition 1 on node 3: they served it.
        assert!(fake.node(3).stats.fetched.load(Ordering::SeqCst) > 0);
        assert!(fake.node(2).stats.fetched.load(Ordering::SeqCst) > 0);
    }
}

#[tokio::test]
async fn with_one_request_in_flight_retries_keep_partition_order() {
    let (fake, _client, producer) = start(ProducerConfig {
        max_in_flight: 1,
        ..producer_config()
    })
    .await;
    let (mut sent, mut futures) = (HashMap::new(), Vec::new());
    send_round(&producer, 0, 20, &mut sent, &mut futures).await;
    (&mut futures[0].2).await.unwrap();
    // Transient failures of whatever is sent next, then a leader move.
    fake.cluster.refuse.store(3, Ordering::SeqCst);
    send_round(&producer, 1, 20, &mut sent, &mut futures).await;
    move_leader(&fake, Move::Anonymous, 2, 3, 1);
    fake.cluster.refuse.store(2, Ordering::SeqCst);
    send_round(&producer, 2, 20, &mut sent, &mut futures).await;
    producer.flush().await.unwrap();
    for (_, _, f) in futures {
        f.await.unwrap();
    }
    for p in 0..3u32 {
        assert_eq!(fake.cluster.values(p), sent[&p], "partition {p}");
    }
    producer.close().await.unwrap();
}

#[tokio::test]
async fn a_producer_starts_using_added_partitions_once_its_routes_age() {
    let fake = FakeCluster::start(3, vec![1, 2, 3]).await;
    let client = Client::connect_with(
        &fake.bootstrap,
        ClientConfig {
            metadata_max_age: Duration::from_millis(200),
            ..client_config()
        },
    )
    .await
    .unwrap();
    let producer = Producer::new(&client, producer_config()).await.unwrap();
    let send = |i: usize| {
        let producer = &producer;
        async move {
            producer
                .send(ProducerRecord::new(TOPIC, format!("v{i}").into_bytes()))
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    for i in 0..30 {
        send(i).await;
    }
    // Another client grows the topic: this producer's routes say 3.
    let admin = Client::connect_with(&fake.bootstrap, client_config())
        .await
        .unwrap();
    admin.create_partitions(TOPIC, 5).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut i = 30;
    while fake.cluster.values(3).is_empty() || fake.cluster.values(4).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "unkeyed records never reached the added partitions"
        );
        send(i).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    producer.close().await.unwrap();
}

#[tokio::test]
async fn a_spent_response_budget_does_not_starve_the_last_partitions() {
    for fetches_per_node in [1, 2] {
        // One node leads all three partitions: one fetch asks for all.
        let (_fake, client, sent, total) = filled(vec![1, 1, 1]).await;
        let mut consumer = from_earliest(
            &client,
            ConsumerConfig {
                // One byte: each response carries one partition's batches.
                max_bytes: 1,
                max_wait: Duration::from_millis(20),
                fetches_per_node,
                ..ConsumerConfig::default()
            },
        )
        .await;
        let mut got: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut first_served: Vec<u32> = Vec::new();
        let (mut read, mut polls) = (0, 0);
        while read < total {
            polls += 1;
            assert!(polls < 2000, "stuck after {read} records");
            for r in consumer.poll().await.unwrap() {
                read += 1;
                if !got.contains_key(&r.partition) {
                    first_served.push(r.partition);
                }
                got.entry(r.partition).or_default().push(r.offset);
            }
            if polls == 3 {
                // Every partition has far more than one response's worth,
                // yet each was served within the first three polls.
                assert_eq!(
                    got.len(),
                    3,
                    "{fetches_per_node} per node: served {first_served:?} in 3 polls"
                );
            }
        }
        for p in 0..3u32 {
            let want: Vec<u64> = (0..sent[&p].len() as u64).collect();
            assert_eq!(got[&p], want, "partition {p} read once, in order");
        }
    }
}
