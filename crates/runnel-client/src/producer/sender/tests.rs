//! The per-partition order rules of the sender, on its request selection
//! and answer handling alone: routes are set by hand, requests are "sent"
//! without a network, answers are made up.

use runnel_proto::v1::{PartitionResult, ProduceResponse};

use super::*;
use crate::producer::ProducerConfig;

/// Node 1's address.
const A: &str = "127.0.0.1:1";
/// Node 2's address.
const B: &str = "127.0.0.1:2";
const BACKOFF: Duration = Duration::from_millis(100);

/// A sender for topic "t", partitions 0 and 1 led by node 1, 2 by node 2.
fn sender() -> Sender {
    let client = Client::for_tests();
    client
        .metadata()
        .set_routes("t", vec![1, 1, 2], &[(1, A), (2, B)]);
    let config = ProducerConfig {
        retry_backoff: BACKOFF,
        ..ProducerConfig::default()
    };
    Sender::new(client, Arc::new(Shared::new(config, 0)))
}

/// Queues batch `id` of partition `partition`.
fn queue(s: &mut Sender, partition: u32, id: u64) {
    s.requeue(vec![Batch {
        topic: Arc::from("t"),
        partition,
        bytes: Bytes::from_static(b"batch"),
        completion: BatchCompletion::new(partition),
        buffered: 0,
        id,
        attempts: 0,
        not_before: None,
    }]);
}

/// A request "sent": its sequence, node and (partition, batch id)s.
type Sent = (u64, &'static str, Vec<(u32, u64)>);

/// "Sends" the next request.
fn send(s: &mut Sender, now: Instant) -> Option<Sent> {
    let selection = s.select(now)?;
    let node = if &*selection.address == A { A } else { B };
    let batches = s.take(&selection);
    let ids = batches.iter().map(|b| (b.partition, b.id)).collect();
    let sequence = s.next_sequence;
    s.next_sequence += 1;
    s.sent(sequence, selection.address, batches);
    Some((sequence, node, ids))
}

/// Answers request `sequence`: every partition stored, or failed with `error`.
fn answer(s: &mut Sender, sequence: u64, error: Option<runnel_proto::v1::Error>) {
    let partitions: Vec<u32> = s.in_flight[&sequence]
        .batches
        .iter()
        .map(|b| b.partition)
        .collect();
    let results = partitions
        .into_iter()
        .map(|partition| PartitionResult {
            partition,
            base_offset: error.is_none().then_some(0),
            record_count: 1,
            error: error.clone(),
        })
        .collect();
    s.on_response(ProduceStreamResponse {
        sequence,
        response: Some(ProduceResponse { results }),
        error: None,
    });
}

fn not_leader(leader_id: u32, leader_address: &str) -> Option<runnel_proto::v1::Error> {
    Some(runnel_proto::v1::Error {
        reason: ErrorReason::NotLeader as i32,
        message: "not the leader".into(),
        leader_id,
        leader_address: leader_address.into(),
    })
}

#[tokio::test]
async fn a_partition_is_pipelined_in_order_to_its_leader_and_others_go_to_theirs() {
    let mut s = sender();
    let now = Instant::now();
    for (partition, id) in [(0, 0), (1, 1), (0, 2), (2, 3), (0, 4)] {
        queue(&mut s, partition, id);
    }
    // One batch per partition per request; one request per topic and node.
    assert_eq!(send(&mut s, now).unwrap().2, [(0, 0), (1, 1)]);
    let sent: Vec<(&str, Vec<(u32, u64)>)> = std::iter::from_fn(|| send(&mut s, now))
        .map(|(_, node, ids)| (node, ids))
        .collect();
    assert_eq!(
        sent,
        [(A, vec![(0, 2)]), (B, vec![(2, 3)]), (A, vec![(0, 4)])]
    );
}

#[tokio::test]
async fn a_retried_batch_holds_back_its_partition_and_then_goes_alone() {
    let mut s = sender();
    let now = Instant::now();
    queue(&mut s, 0, 0);
    queue(&mut s, 0, 1);
    let (first, _, _) = send(&mut s, now).unwrap();
    let (second, _, _) = send(&mut s, now).unwrap();
    // The first fails for a moment, the second (already in flight) lands:
    // the reordering the docs admit with more than one in flight.
    let busy = Some(runnel_proto::v1::Error {
        reason: ErrorReason::Unavailable as i32,
        message: "busy".into(),
        ..Default::default()
    });
    answer(&mut s, first, busy);
    answer(&mut s, second, None);
    s.refreshing.clear(); // the metadata refresh it started is not awaited here
    queue(&mut s, 0, 2);
    // Batch 0 waits out its backoff and holds batch 2 back meanwhile...
    assert!(send(&mut s, now).is_none());
    let later = Instant::now() + BACKOFF;
    let (retried, _, ids) = send(&mut s, later).unwrap();
    assert_eq!(ids, [(0, 0)]);
    // ...then goes alone: batch 2 waits until it is answered.
    assert!(send(&mut s, later).is_none());
    answer(&mut s, retried, None);
    assert_eq!(send(&mut s, later).unwrap().2, [(0, 2)]);
}

#[tokio::test]
async fn a_moved_partition_waits_for_its_batches_in_flight_to_the_old_leader() {
    let mut s = sender();
    let now = Instant::now();
    queue(&mut s, 0, 0);
    let (first, node, _) = send(&mut s, now).unwrap();
    assert_eq!(node, A);
    s.client
        .metadata()
        .set_routes("t", vec![2, 1, 2], &[(1, A), (2, B)]);
    queue(&mut s, 0, 1);
    assert!(
        send(&mut s, now).is_none(),
        "batch 0 is still in flight to A"
    );
    answer(&mut s, first, None);
    assert_eq!(send(&mut s, now).unwrap().1, B);
}

#[tokio::test]
async fn not_leader_naming_the_leader_resends_everything_in_order_there_at_once() {
    let mut s = sender();
    let now = Instant::now();
    for id in 0..3 {
        queue(&mut s, 0, id);
    }
    let sequences: Vec<u64> = (0..3).map(|_| send(&mut s, now).unwrap().0).collect();
    for sequence in sequences {
        answer(&mut s, sequence, not_leader(2, B));
    }
    assert!(s.refreshing.is_empty(), "the named leader needs no refresh");
    // At once (no backoff), on B, the first alone until it is answered...
    let (retried, node, ids) = send(&mut s, now).unwrap();
    assert_eq!((node, ids), (B, vec![(0, 0)]));
    assert!(send(&mut s, now).is_none());
    answer(&mut s, retried, None);
    // ...then the rest pipelined, in order.
    let rest: Vec<Vec<(u32, u64)>> = std::iter::from_fn(|| send(&mut s, now))
        .map(|(_, _, ids)| ids)
        .collect();
    assert_eq!(rest, [vec![(0, 1)], vec![(0, 2)]]);
}
