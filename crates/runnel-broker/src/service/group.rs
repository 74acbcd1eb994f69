//! GroupService: consumer-group membership, offsets and administration,
//! over the coordinators of `crate::groups`. The protocol is documented in
//! `proto/runnel/v1/group.proto`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use runnel_groups::{Assignor, GroupRecord, Heartbeat, TopicPartition, offsets_partition};
use runnel_proto::v1::group_service_client::GroupServiceClient;
use runnel_proto::v1::group_service_server::GroupService;
use runnel_proto::v1::{
    CommitOffsetsRequest, CommitOffsetsResponse, CommittedOffset, DeleteGroupRequest,
    DeleteGroupResponse, DescribeGroupRequest, DescribeGroupResponse, FetchOffsetsRequest,
    FetchOffsetsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupMember,
    GroupOffset, GroupSummary, HeartbeatRequest, HeartbeatResponse, ListGroupsRequest,
    ListGroupsResponse, OffsetCommit, ResetOffsetsRequest, ResetOffsetsResponse, TopicPartitions,
};
use tonic::{Request, Response, Status};

use super::{NodeContext, now_ms};
use crate::error::{BrokerError, Result};
use crate::groups::{OFFSETS_PARTITIONS, check_partitions};

pub(crate) struct GroupSvc(pub(crate) Arc<NodeContext>);

/// Partitions grouped by topic, as the proto carries them.
fn to_proto(set: &BTreeSet<TopicPartition>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in set {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| TopicPartitions {
            topic: topic.to_string(),
            partitions,
        })
        .collect()
}

fn from_proto(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|&p| TopicPartition::new(t.topic.clone(), p))
        })
        .collect()
}

impl GroupSvc {
    async fn commit(
        &self,
        group: &str,
        member: Option<(&str, i32)>,
        offsets: &[OffsetCommit],
    ) -> Result<()> {
        let groups = &self.0.groups;
        check_partitions(
            groups,
            offsets.iter().map(|o| (o.topic.as_str(), o.partition)),
        )?;
        let mut loaded = groups.lock(group).await?;
        match member {
            Some((id, epoch)) => loaded.coordinator.check_commit(group, id, epoch)?,
            None => {
                if loaded.coordinator.contains(group) {
                    if let Err(e) = loaded.coordinator.check_empty(group) {
                        return Err(e.into());
                    }
                }
            }
        }
        let ts = now_ms();
        let records = offsets
            .iter()
            .map(|o| GroupRecord::OffsetCommit {
                group: group.to_string(),
                topic: o.topic.clone(),
                partition: o.partition,
                offset: o.offset,
                timestamp: ts,
            })
            .collect();
        loaded.append(group, records).await
    }

    /// The groups of the offsets partitions this node leads among `wanted`.
    async fn local_groups(&self, wanted: &BTreeSet<u32>) -> Result<Vec<GroupSummary>> {
        let mut out = Vec::new();
        for &p in wanted {
            let loaded = match self.0.groups.lock_partition(p, "").await {
                Ok(l) => l,
                Err(BrokerError::NotCoordinator { .. }) => continue,
                Err(e) => return Err(e),
            };
            out.extend(
                loaded
                    .coordinator
                    .list()
                    .into_iter()
                    .map(|(group, state, members)| GroupSummary {
                        group,
                        state: state.name().to_string(),
                        members: members as u32,
                    }),
            );
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl GroupService for GroupSvc {
    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let _t = self.0.metrics.time("Heartbeat");
        let req = request.into_inner();
        let groups = &self.0.groups;
        let assignor = match req.assignor.as_str() {
            "" => None,
            name => Some(Assignor::parse(name).ok_or_else(|| {
                BrokerError::InvalidArgument(format!(
                    "assignor {name:?} is unknown: use sticky, range or round-robin"
                ))
            })?),
        };
        let subscriptions: BTreeSet<String> = req.subscribed_topics.iter().cloned().collect();
        if req.member_epoch == runnel_groups::JOIN_EPOCH || !subscriptions.is_empty() {
            for t in &subscriptions {
                if groups.partition_count(t).is_none() {
                    return Err(BrokerError::UnknownTopic(t.clone()).into());
                }
            }
        }
        let mut loaded = groups.lock(&req.group).await?;
        let counts = |t: &str| groups.partition_count(t);
        let answer = loaded
            .coordinator
            .heartbeat(
                &req.group,
                Heartbeat {
                    member_id: req.member_id,
                    member_epoch: req.member_epoch,
                    subscriptions: (!subscriptions.is_empty()).then_some(subscriptions),
                    owned: Some(from_proto(&req.owned)),
                    session_timeout_ms: u64::from(req.session_timeout_ms),
                    assignor,
                },
                &counts,
                groups.mono_ms(),
            )
            .map_err(BrokerError::from)?;
        Ok(Response::new(HeartbeatResponse {
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            assignment: to_proto(&answer.assigned),
            heartbeat_interval_ms: u32::try_from(answer.heartbeat_interval_ms).unwrap_or(3_000),
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let _t = self.0.metrics.time("CommitOffsets");
        let req = request.into_inner();
        let member =
            (!req.member_id.is_empty()).then_some((req.member_id.as_str(), req.member_epoch));
        self.commit(&req.group, member, &req.offsets).await?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_offsets(
        &self,
        request: Request<FetchOffsetsRequest>,
    ) -> Result<Response<FetchOffsetsResponse>, Status> {
        let _t = self.0.metrics.time("FetchOffsets");
        let req = request.into_inner();
        let loaded = self.0.groups.lock(&req.group).await?;
        let wanted = from_proto(&req.partitions);
        let offsets = loaded
            .coordinator
            .offsets(&req.group)
            .into_iter()
            .filter(|(tp, _)| wanted.is_empty() || wanted.contains(tp))
            .map(|(tp, c)| CommittedOffset {
                topic: tp.topic,
                partition: tp.partition,
                offset: c.offset,
                commit_timestamp_ms: c.timestamp,
            })
            .collect();
        Ok(Response::new(FetchOffsetsResponse { offsets }))
    }

    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let _t = self.0.metrics.time("FindCoordinator");
        let group = request.into_inner().group;
        runnel_groups::validate_group_name(&group).map_err(BrokerError::from)?;
        let partition = offsets_partition(&group, OFFSETS_PARTITIONS);
        let topic = self.0.groups.offsets_topic().await?;
        let leader = topic.partition(partition)?.leader();
        Ok(Response::new(FindCoordinatorResponse {
            node_id: leader.as_ref().map_or(0, |l| l.id),
            address: leader.map(|l| l.address).unwrap_or_default(),
            partition,
        }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let _t = self.0.metrics.time("ListGroups");
        let req = request.into_inner();
        let Some(leaders) = self.0.groups.leaders() else {
            // No group was ever used.
            return Ok(Response::new(ListGroupsResponse { groups: Vec::new() }));
        };
        if !req.coordinator_partitions.is_empty() {
            let wanted = req.coordinator_partitions.into_iter().collect();
            let groups = self.local_groups(&wanted).await?;
            return Ok(Response::new(ListGroupsResponse { groups }));
        }
        let mut local = BTreeSet::new();
        let mut remote: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (p, is_leader, leader) in leaders {
            match (is_leader, leader) {
                (true, _) => {
                    local.insert(p);
                }
                (false, Some(l)) if !l.address.is_empty() => {
                    remote.entry(l.address).or_default().push(p)
                }
                _ => {
                    return Err(BrokerError::Unavailable(format!(
                        "partition {p} of the offsets topic has no leader now; retry"
                    ))
                    .into());
                }
            }
        }
        let mut groups = self.local_groups(&local).await?;
        for (address, partitions) in remote {
            let unreachable = |e: String| {
                BrokerError::Unavailable(format!("cannot list the groups of node {address}: {e}"))
            };
            let mut client = GroupServiceClient::connect(format!("http://{address}"))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            let answer = client
                .list_groups(ListGroupsRequest {
                    coordinator_partitions: partitions,
                })
                .await
                .map_err(BrokerError::Forwarded)?;
            groups.extend(answer.into_inner().groups);
        }
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<DescribeGroupRequest>,
    ) -> Result<Response<DescribeGroupResponse>, Status> {
        let _t = self.0.metrics.time("DescribeGroup");
        let group = request.into_inner().group;
        let groups = &self.0.groups;
        let loaded = groups.lock(&group).await?;
        let d = loaded.coordinator.describe(&group).ok_or_else(|| {
            BrokerError::from(runnel_groups::GroupError::UnknownGroup(group.clone()))
        })?;
        let node = groups.node().id;
        let offsets = d
            .offsets
            .iter()
            .map(|(tp, c)| {
                let hwm = groups.topics().get(&tp.topic).ok().and_then(|t| {
                    let r = t.partitions.get(tp.partition as usize)?;
                    r.replicas()
                        .contains(&node)
                        .then(|| r.offsets().high_watermark)
                });
                GroupOffset {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    committed: c.offset,
                    commit_timestamp_ms: c.timestamp,
                    high_watermark: hwm,
                    lag: hwm.map(|h| h.saturating_sub(c.offset)),
                }
            })
            .collect();
        Ok(Response::new(DescribeGroupResponse {
            group: d.group,
            state: d.state.name().to_string(),
            group_epoch: i32::try_from(d.epoch).unwrap_or(i32::MAX),
            assignor: d.assignor.name().to_string(),
            members: d
                .members
                .into_iter()
                .map(|m| GroupMember {
                    member_id: m.member_id,
                    member_epoch: i32::try_from(m.member_epoch).unwrap_or(i32::MAX),
                    subscribed_topics: m.subscriptions.into_iter().collect(),
                    assignment: to_proto(&m.assigned),
                    pending: to_proto(&m.pending),
                    session_timeout_ms: u32::try_from(m.session_timeout_ms).unwrap_or(u32::MAX),
                })
                .collect(),
            offsets,
            coordinator_id: node,
        }))
    }

    async fn delete_group(
        &self,
        request: Request<DeleteGroupRequest>,
    ) -> Result<Response<DeleteGroupResponse>, Status> {
        let _t = self.0.metrics.time("DeleteGroup");
        let group = request.into_inner().group;
        let mut loaded = self.0.groups.lock(&group).await?;
        loaded
            .coordinator
            .check_empty(&group)
            .map_err(BrokerError::from)?;
        loaded
            .append(
                &group,
                vec![GroupRecord::GroupDeleted {
                    group: group.clone(),
                }],
            )
            .await?;
        Ok(Response::new(DeleteGroupResponse {}))
    }

    async fn reset_offsets(
        &self,
        request: Request<ResetOffsetsRequest>,
    ) -> Result<Response<ResetOffsetsResponse>, Status> {
        let _t = self.0.metrics.time("ResetOffsets");
        let req = request.into_inner();
        if req.offsets.is_empty() {
            return Err(BrokerError::InvalidArgument("offsets: nothing to reset".into()).into());
        }
        self.commit(&req.group, None, &req.offsets).await?;
        Ok(Response::new(ResetOffsetsResponse {}))
    }
}
