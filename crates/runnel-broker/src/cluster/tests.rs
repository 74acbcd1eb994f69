use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use runnel_proto::v1::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::TcpListenerStream;

use super::transport::{Envelope, Inbound, RaftSvc, Transport};
use crate::service::ShutdownSignal;

/// A node's receiving side on a free port; messages come out of the
/// returned channel. Stops when the returned sender is set.
async fn receiver(
    node_id: u32,
    peers: Vec<u32>,
    listener: TcpListener,
) -> (mpsc::UnboundedReceiver<Inbound>, watch::Sender<bool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop) = ShutdownSignal::new();
    let svc = RaftSvc::new(
        node_id,
        peers,
        Arc::new(move |m| tx.send(m).is_ok()),
        stop.clone(),
    );
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(RaftServiceServer::new(svc))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.wait())
            .await;
    });
    (rx, stop_tx)
}

fn env(group: u64, n: u8) -> Envelope {
    Envelope {
        group,
        message: Bytes::from(vec![n; 3]),
        // Carried as sent (a leader's heartbeat), or empty.
        leader_in_sync: if n % 2 == 0 { vec![1, 2] } else { Vec::new() },
    }
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Inbound>, n: usize) -> Vec<Envelope> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("messages within 10 s")
            .expect("receiver open");
        assert_eq!(m.from, 1);
        got.extend(m.messages);
    }
    got
}

#[tokio::test]
async fn messages_arrive_in_order_and_survive_a_peer_restart() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut rx, stop_b) = receiver(2, vec![1, 3], listener).await;

    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let (_stop_tx, stop) = ShutdownSignal::new();
    let peers = BTreeMap::from([(1, "unused".into()), (2, addr.to_string())]);
    let transport = Transport::start(
        1,
        &peers,
        Arc::new(move |_| {
            d.fetch_add(1, Ordering::Relaxed);
        }),
        stop,
    );
    for i in 0..100u8 {
        transport.send(2, vec![env(u64::from(i % 3), i)]);
    }
    let got = recv_n(&mut rx, 100).await;
    let want: Vec<_> = (0..100u8).map(|i| env(u64::from(i % 3), i)).collect();
    assert_eq!(got, want, "in order, nothing lost while the peer is up");

    // The peer goes away: sends are dropped (and reported), never block.
    stop_b.send(true).unwrap();
    drop(rx);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..10u8 {
        transport.send(2, vec![env(9, i)]);
    }
    // It comes back on the same port: the stream is re-established.
    let listener = TcpListener::bind(addr).await.unwrap();
    let (mut rx, _stop_b) = receiver(2, vec![1], listener).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        transport.send(2, vec![env(7, 7)]);
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Some(m)) => {
                assert!(m.messages.iter().any(|e| e.group == 7 || e.group == 9));
                break;
            }
            _ => assert!(
                tokio::time::Instant::now() < deadline,
                "no reconnect within 20 s"
            ),
        }
    }
    assert!(dropped.load(Ordering::Relaxed) > 0, "dropping was reported");
}

#[tokio::test]
async fn a_stream_from_a_stranger_or_to_the_wrong_node_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut rx, _stop) = receiver(2, vec![3], listener).await;
    // Node 1 is not one of node 2's peers.
    let (_s, stop) = ShutdownSignal::new();
    let t = Transport::start(
        1,
        &BTreeMap::from([(2, addr.to_string())]),
        Arc::new(|_| {}),
        stop,
    );
    t.send(2, vec![env(1, 1)]);
    // Node 3 believes it talks to node 4 at this address.
    let (_s, stop) = ShutdownSignal::new();
    let t3 = Transport::start(
        3,
        &BTreeMap::from([(4, addr.to_string())]),
        Arc::new(|_| {}),
        stop,
    );
    t3.send(4, vec![env(1, 1)]);
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), rx.recv())
            .await
            .is_err(),
        "nothing delivered"
    );
}
