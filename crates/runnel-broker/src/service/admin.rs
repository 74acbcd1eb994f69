//! AdminService: topics and cluster description.

use std::sync::Arc;

use runnel_proto::v1::admin_service_server::AdminService;
use runnel_proto::v1::{
    CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicRequest, CreateTopicResponse,
    DeleteTopicRequest, DeleteTopicResponse, DescribeClusterRequest, DescribeClusterResponse,
    DescribeTopicRequest, DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse, NodeInfo,
    PartitionDescription, TopicDescription, TopicSummary,
};
use tonic::{Request, Response, Status};

use super::NodeContext;
use crate::config::TopicSettings;
use crate::registry::Topic;

/// Nodes of a node without --peers.
const SINGLE_NODE: u32 = 1;

pub(crate) struct AdminSvc(pub(crate) Arc<NodeContext>);

pub(crate) fn describe(topic: &Topic) -> TopicDescription {
    TopicDescription {
        name: topic.name.clone(),
        config: Some(topic.settings.to_proto()),
        partitions: topic
            .partitions
            .iter()
            .enumerate()
            .map(|(id, r)| {
                let o = r.offsets();
                PartitionDescription {
                    id: id as u32,
                    leader: r.leader().map_or(0, |l| l.id),
                    replicas: r.replicas(),
                    isr: r.in_sync_replicas(),
                    log_start_offset: o.log_start,
                    high_watermark: o.high_watermark,
                    log_end_offset: o.log_end,
                    size_bytes: r.size_bytes(),
                }
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl AdminService for AdminSvc {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let _t = self.0.metrics.time("CreateTopic");
        let req = request.into_inner();
        crate::config::validate_topic_name(&req.name)?;
        let topic = match &self.0.cluster {
            Some(cluster) => cluster.create_topic(&req.name, req.config.as_ref()).await?,
            None => {
                let settings = TopicSettings::resolve(req.config.as_ref(), SINGLE_NODE)?;
                self.0.topics.create(&req.name, settings).await?
            }
        };
        Ok(Response::new(CreateTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let _t = self.0.metrics.time("CreatePartitions");
        let req = request.into_inner();
        if req.name == crate::groups::OFFSETS_TOPIC {
            return Err(crate::error::BrokerError::InvalidArgument(format!(
                "{} is internal: its partition count is fixed",
                req.name
            ))
            .into());
        }
        let topic = match &self.0.cluster {
            Some(cluster) => cluster.create_partitions(&req.name, req.partitions).await?,
            None => {
                self.0
                    .topics
                    .add_partitions(&req.name, req.partitions)
                    .await?
            }
        };
        Ok(Response::new(CreatePartitionsResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let _t = self.0.metrics.time("DeleteTopic");
        let name = request.into_inner().name;
        match &self.0.cluster {
            Some(cluster) => cluster.delete_topic(&name).await?,
            None => self.0.topics.delete(&name).await?,
        }
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let _t = self.0.metrics.time("ListTopics");
        let topics = self
            .0
            .topics
            .list()
            .iter()
            // Internal topics (the consumer offsets) are not listed.
            .filter(|t| t.name != crate::groups::OFFSETS_TOPIC)
            .map(|t| TopicSummary {
                name: t.name.clone(),
                partitions: t.settings.partitions,
                replication_factor: t.settings.replication_factor,
            })
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let _t = self.0.metrics.time("DescribeTopic");
        let topic = self.0.topics.get(&request.into_inner().name)?;
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(describe(&topic)),
        }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let _t = self.0.metrics.time("DescribeCluster");
        let node = self.0.topics.node();
        let (nodes, controller_id) = match &self.0.cluster {
            Some(cluster) => (
                cluster
                    .peers()
                    .iter()
                    .map(|(&id, address)| NodeInfo {
                        id,
                        address: address.clone(),
                    })
                    .collect(),
                cluster.controller_leader().unwrap_or(0),
            ),
            None => (
                vec![NodeInfo {
                    id: node.id,
                    address: node.address.clone(),
                }],
                node.id,
            ),
        };
        Ok(Response::new(DescribeClusterResponse {
            nodes,
            answered_by: node.id,
            controller_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}
