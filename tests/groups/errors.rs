//! Fencing and refusals over raw GroupService calls, and the CLI's errors.

use runnel_proto::v1::group_service_client::GroupServiceClient;
use runnel_proto::v1::{
    CommitOffsetsRequest, DeleteGroupRequest, DescribeGroupRequest, ErrorReason,
    FetchOffsetsRequest, HeartbeatRequest, HeartbeatResponse, OffsetCommit, ResetOffsetsRequest,
    TopicPartitions,
};
use std::time::Duration;
use tonic::transport::Channel;

use crate::support::grpc::{assert_failed_with, channel};
use crate::support::{BrokerOptions, start_with_topic, with_deadline};

fn join(group: &str, topic: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        group: group.into(),
        member_epoch: 0,
        subscribed_topics: vec![topic.into()],
        session_timeout_ms: 30_000,
        ..HeartbeatRequest::default()
    }
}

async fn beat(g: &mut GroupServiceClient<Channel>, last: &HeartbeatResponse) -> HeartbeatResponse {
    g.heartbeat(HeartbeatRequest {
        group: "fence".into(),
        member_id: last.member_id.clone(),
        member_epoch: last.member_epoch,
        owned: last.assignment.clone(),
        session_timeout_ms: 30_000,
        ..HeartbeatRequest::default()
    })
    .await
    .expect("heartbeat")
    .into_inner()
}

fn commit(member: &HeartbeatResponse, epoch: i32, partition: u32) -> CommitOffsetsRequest {
    CommitOffsetsRequest {
        group: "fence".into(),
        member_id: member.member_id.clone(),
        member_epoch: epoch,
        offsets: vec![OffsetCommit {
            topic: "t".into(),
            partition,
            offset: 0,
        }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_generations_are_fenced_and_bad_requests_named() {
    let (broker, _c) = start_with_topic(BrokerOptions::default(), "t", 4).await;
    with_deadline(Duration::from_secs(120), async {
        let mut g = GroupServiceClient::new(channel(broker.grpc_addr()).await);
        let a1 = g
            .heartbeat(join("fence", "t"))
            .await
            .expect("join A")
            .into_inner();
        assert!(!a1.member_id.is_empty() && a1.member_epoch > 0, "{a1:?}");
        assert_eq!(a1.assignment[0].partitions, vec![0, 1, 2, 3], "{a1:?}");
        let _b = g
            .heartbeat(join("fence", "t"))
            .await
            .expect("join B")
            .into_inner();
        let a2 = beat(&mut g, &a1).await;
        let _c = g
            .heartbeat(join("fence", "t"))
            .await
            .expect("join C")
            .into_inner();
        let a3 = beat(&mut g, &a2).await;
        assert!(a1.member_epoch < a2.member_epoch && a2.member_epoch < a3.member_epoch);
        // (case, request, expected)
        let cases = [
            (
                1,
                commit(&a3, a1.member_epoch, 0),
                Some(ErrorReason::StaleMemberEpoch),
            ),
            (2, commit(&a3, a3.member_epoch, 0), None),
            (3, commit(&a3, a2.member_epoch, 0), None),
            (
                4,
                CommitOffsetsRequest {
                    member_id: "ghost".into(),
                    ..commit(&a3, 1, 0)
                },
                Some(ErrorReason::UnknownMember),
            ),
            (
                5,
                CommitOffsetsRequest {
                    member_id: String::new(),
                    ..commit(&a3, 0, 0)
                },
                Some(ErrorReason::GroupNotEmpty),
            ),
            (
                6,
                commit(&a3, a3.member_epoch, 9),
                Some(ErrorReason::UnknownPartition),
            ),
            (
                7,
                CommitOffsetsRequest {
                    group: "bad name".into(),
                    ..commit(&a3, 1, 0)
                },
                Some(ErrorReason::InvalidArgument),
            ),
        ];
        for (case, request, expected) in cases {
            let result = g.commit_offsets(request).await;
            match expected {
                None => assert!(result.is_ok(), "case {case}: {result:?}"),
                Some(reason) => {
                    let status = assert_failed_with(result, reason);
                    assert!(!status.message().is_empty(), "case {case}");
                }
            }
        }
        // A heartbeat two epochs back is fenced.
        let status = assert_failed_with(
            g.heartbeat(HeartbeatRequest {
                group: "fence".into(),
                member_id: a1.member_id.clone(),
                member_epoch: a1.member_epoch,
                ..HeartbeatRequest::default()
            })
            .await,
            ErrorReason::FencedMemberEpoch,
        );
        assert!(status.message().contains("rejoin"), "{status:?}");
        assert_failed_with(
            g.heartbeat(join("fence", "nope")).await,
            ErrorReason::UnknownTopic,
        );
        assert_failed_with(
            g.describe_group(DescribeGroupRequest {
                group: "never".into(),
            })
            .await,
            ErrorReason::UnknownGroup,
        );
        assert_failed_with(
            g.delete_group(DeleteGroupRequest {
                group: "fence".into(),
            })
            .await,
            ErrorReason::GroupNotEmpty,
        );
        assert_failed_with(
            g.reset_offsets(ResetOffsetsRequest {
                group: "other".into(),
                offsets: vec![OffsetCommit {
                    topic: "nope".into(),
                    partition: 0,
                    offset: 0,
                }],
            })
            .await,
            ErrorReason::UnknownTopic,
        );
        // The commit of case 2 is there.
        let offsets = g
            .fetch_offsets(FetchOffsetsRequest {
                group: "fence".into(),
                partitions: vec![],
            })
            .await
            .expect("fetch offsets")
            .into_inner()
            .offsets;
        assert_eq!(offsets.len(), 1, "{offsets:?}");

        // The CLI names what is wrong.
        let out = broker.cli(&["group", "describe", "never"], "");
        assert!(!out.status.success(), "{out}");
        assert!(
            out.stderr.contains("group \"never\" does not exist"),
            "{out}"
        );
        let out = broker.cli(&["consume", "nope", "--group", "g"], "");
        assert!(!out.status.success(), "{out}");
        assert!(
            out.stderr.contains("topic \"nope\" does not exist"),
            "{out}"
        );
        let out = broker.cli(&["group", "delete", "never"], "");
        assert!(
            !out.status.success() && out.stderr.contains("UNKNOWN_GROUP"),
            "{out}"
        );
    })
    .await;
}

#[test]
fn every_group_help_exits_0_and_names_its_flags() {
    // (case, argv, must contain)
    let cases: [(u32, &[&str], &[&str]); 7] = [
        (
            1,
            &["group", "--help"],
            &["list", "describe", "delete", "reset-offsets", "Examples"],
        ),
        (2, &["group", "list", "--help"], &["--output", "json"]),
        (
            3,
            &["group", "describe", "--help"],
            &["\"members\"", "\"lag\"", "UNKNOWN_GROUP"],
        ),
        (4, &["group", "delete", "--help"], &["GROUP_NOT_EMPTY"]),
        (
            5,
            &["group", "reset-offsets", "--help"],
            &[
                "--topic",
                "--to-earliest",
                "--to-latest",
                "--to-offset",
                "--to-time",
            ],
        ),
        (
            6,
            &["consume", "--help"],
            &[
                "--group",
                "--session-timeout-ms",
                "--auto-commit-ms",
                "--assignor",
            ],
        ),
        (7, &["--help"], &["group"]),
    ];
    for (case, argv, wanted) in cases {
        let out = crate::support::run_cli(argv, "");
        assert!(out.status.success(), "case {case}: {out}");
        for w in wanted {
            assert!(
                out.stdout.contains(w),
                "case {case}: {w:?} missing from\n{}",
                out.stdout
            );
        }
    }
}

/// The whole member protocol over raw gRPC, as a client in another
/// language runs it: join, fetch committed offsets, heartbeat with owned
/// partitions (a moving partition is handed over only once released),
/// commit, leave.
#[tokio::test(flavor = "multi_thread")]
async fn a_thin_grpc_client_is_a_full_member() {
    let (broker, mut c) = start_with_topic(BrokerOptions::default(), "thin", 4).await;
    with_deadline(Duration::from_secs(120), async {
        let mut g = GroupServiceClient::new(channel(broker.grpc_addr()).await);
        let hb = |member: &HeartbeatResponse, owned: Vec<TopicPartitions>| HeartbeatRequest {
            group: "thin-g".into(),
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            owned,
            session_timeout_ms: 30_000,
            ..HeartbeatRequest::default()
        };
        let a = g
            .heartbeat(join("thin-g", "thin"))
            .await
            .expect("join A")
            .into_inner();
        assert_eq!(a.assignment[0].partitions, vec![0, 1, 2, 3]);
        let offsets = g
            .fetch_offsets(FetchOffsetsRequest {
                group: "thin-g".into(),
                partitions: a.assignment.clone(),
            })
            .await
            .expect("fetch offsets")
            .into_inner();
        assert!(
            offsets.offsets.is_empty(),
            "a new group has no offsets: {offsets:?}"
        );
        let a = g
            .heartbeat(hb(&a, a.assignment.clone()))
            .await
            .expect("beat A")
            .into_inner();
        let b = g
            .heartbeat(join("thin-g", "thin"))
            .await
            .expect("join B")
            .into_inner();
        assert!(b.assignment.is_empty(), "A still owns everything: {b:?}");
        // A hears it keeps two; it has not released the others yet.
        let a = g
            .heartbeat(hb(&a, a.assignment.clone()))
            .await
            .expect("beat A")
            .into_inner();
        let kept = a.assignment[0].partitions.clone();
        assert_eq!(kept.len(), 2, "{a:?}");
        let b = g
            .heartbeat(hb(&b, vec![]))
            .await
            .expect("beat B")
            .into_inner();
        assert!(b.assignment.is_empty(), "not released yet: {b:?}");
        // A commits and releases; B gets the other two.
        c.produce_ok(
            "thin",
            kept[0],
            vec![runnel_proto::v1::Record {
                value: b"x".to_vec().into(),
                ..Default::default()
            }],
        )
        .await;
        g.commit_offsets(CommitOffsetsRequest {
            group: "thin-g".into(),
            member_id: a.member_id.clone(),
            member_epoch: a.member_epoch,
            offsets: vec![OffsetCommit {
                topic: "thin".into(),
                partition: kept[0],
                offset: 1,
            }],
        })
        .await
        .expect("commit");
        let a = g
            .heartbeat(hb(&a, a.assignment.clone()))
            .await
            .expect("beat A")
            .into_inner();
        let b = g
            .heartbeat(hb(&b, vec![]))
            .await
            .expect("beat B")
            .into_inner();
        let mut others = b.assignment[0].partitions.clone();
        others.extend(&kept);
        others.sort_unstable();
        assert_eq!(others, vec![0, 1, 2, 3], "A: {a:?} B: {b:?}");
        // A leaves: B gets everything at its next heartbeat.
        let left = g
            .heartbeat(HeartbeatRequest {
                member_epoch: -1,
                ..hb(&a, vec![])
            })
            .await
            .expect("leave")
            .into_inner();
        assert_eq!(left.member_epoch, -1);
        let b = g
            .heartbeat(hb(&b, b.assignment.clone()))
            .await
            .expect("beat B")
            .into_inner();
        assert_eq!(b.assignment[0].partitions, vec![0, 1, 2, 3], "{b:?}");
        let d = g
            .describe_group(DescribeGroupRequest {
                group: "thin-g".into(),
            })
            .await
            .expect("describe")
            .into_inner();
        assert_eq!(d.members.len(), 1, "{d:?}");
        assert_eq!(d.offsets[0].committed, 1, "{d:?}");
        assert_eq!(d.offsets[0].lag, Some(0), "{d:?}");
    })
    .await;
}
