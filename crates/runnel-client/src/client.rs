//! The connection to a cluster and the admin calls.

use std::sync::Arc;
use std::time::Duration;

use runnel_proto::v1::admin_service_client::AdminServiceClient;
use runnel_proto::v1::fetch_service_client::FetchServiceClient;
use runnel_proto::v1::produce_service_client::ProduceServiceClient;
use runnel_proto::v1::{
    CreatePartitionsRequest, CreateTopicRequest, DeleteTopicRequest, DescribeClusterResponse,
    ErrorReason, ListOffsetsRequest, ListTopicsRequest, OffsetQuery, TopicConfig, TopicDescription,
    TopicSummary,
};
use tonic::transport::{Channel, Endpoint};

use crate::error::{Error, Result, with_sources};
use crate::metadata::{Metadata, Route};

/// How the client talks to brokers.
///
/// The defaults follow the transport measurements of issue 4: 16 MiB HTTP/2
/// windows, 1 MiB HTTP/2 frames from the broker, `TCP_NODELAY`, and a
/// message limit above the largest batch.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest wait for a TCP connection to a broker. Default 5 s.
    pub connect_timeout: Duration,
    /// Longest wait for the answer to an admin or offset call. Default 30 s.
    pub request_timeout: Duration,
    /// Initial HTTP/2 stream and connection window, bytes. Default 16 MiB.
    pub window_bytes: u32,
    /// Largest HTTP/2 frame the broker may send us (`SETTINGS_MAX_FRAME_SIZE`),
    /// bytes, 16 KiB to 16 MiB - 1. Default 1 MiB. HTTP/2's own default of
    /// 16 KiB cuts a 16 MiB fetch response into 1,024 frames, each handled on
    /// its own by both sides: consuming stored data ran at half the speed
    /// (benches/RESULTS.md, "Consume: HTTP/2 frame size").
    pub max_frame_bytes: u32,
    /// Largest gRPC message sent or received, bytes. Default 80 MiB: a
    /// 64 MiB batch (the largest `max_record_bytes`) plus slack.
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval. Default 30 s.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered. Default 20 s.
    pub keepalive_timeout: Duration,
    /// Least time between two metadata refreshes of a topic (after
    /// `NOT_LEADER`, an unreachable leader, or a partition without one).
    /// Default 100 ms.
    pub metadata_backoff: Duration,
    /// Longest wait for one node's answer to a call that any node serves
    /// (`DescribeTopic`, `DescribeCluster`, `ListTopics`) before the next
    /// node is asked: a paused node must not hold up metadata refreshes for
    /// a whole request timeout. Default 5 s (at most `request_timeout`).
    pub metadata_timeout: Duration,
    /// How old a topic's routes may get before a producer sending to it
    /// reloads them, so that partitions added to the topic come into use
    /// (Kafka's `metadata.max.age.ms`). Default 5 min.
    pub metadata_max_age: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            window_bytes: 16 << 20,
            max_frame_bytes: 1 << 20,
            max_message_bytes: 80 << 20,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            metadata_backoff: Duration::from_millis(100),
            metadata_timeout: Duration::from_secs(5),
            metadata_max_age: Duration::from_secs(300),
        }
    }
}

/// A position to look up with [`Client::list_offsets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset: the first record still stored.
    Earliest,
    /// The high watermark: the offset the next committed record will get.
    Latest,
    /// The first record with a timestamp at or after this many ms since the
    /// Unix epoch (the high watermark when every record is older).
    Timestamp(i64),
}

impl OffsetSpec {
    pub(crate) fn query(self, partition: u32) -> OffsetQuery {
        use runnel_proto::v1::OffsetSpec as Spec;
        let (spec, timestamp_ms) = match self {
            OffsetSpec::Earliest => (Spec::Earliest, 0),
            OffsetSpec::Latest => (Spec::Latest, 0),
            OffsetSpec::Timestamp(ts) => (Spec::Unspecified, ts),
        };
        OffsetQuery {
            partition,
            spec: spec as i32,
            timestamp_ms,
        }
    }
}

/// A connection to a Runnel cluster: admin calls, and the handle that
/// [`Producer`](crate::Producer)s and [`Consumer`](crate::Consumer)s are built
/// from.
///
/// Cheap to clone: clones share the metadata cache and one HTTP/2
/// connection per node, each multiplexing any number of concurrent calls.
/// Admin calls go to any node (the default node: the bootstrap address that
/// answered, or the next one that does when it fails); offset lookups,
/// produce and fetch go to each partition's leader (see the
/// [crate docs](crate#routing)).
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    metadata: Metadata,
    address: String,
}

/// Rounds of an offset lookup that may end in `NOT_LEADER` or an unreachable
/// leader before it fails.
const LOOKUP_ATTEMPTS: u32 = 5;

impl Client {
    /// Connects to the first reachable broker of `bootstrap`
    /// (`host:port[,host:port...]`), with the default [`ClientConfig`].
    pub async fn connect(bootstrap: &str) -> Result<Client> {
        Client::connect_with(bootstrap, ClientConfig::default()).await
    }

    /// Connects to the first reachable broker of `bootstrap`, trying each
    /// address in order; the error names every address and why it failed.
    ///
    /// The other addresses are kept: when the node connected to fails, calls
    /// that any node serves move on to the next that answers.
    pub async fn connect_with(bootstrap: &str, config: ClientConfig) -> Result<Client> {
        let addresses = parse_bootstrap(bootstrap)?;
        let mut failures = Vec::new();
        for address in &addresses {
            match connect_one(address, &config).await {
                Ok(channel) => {
                    return Ok(Client {
                        inner: Arc::new(Inner {
                            metadata: Metadata::new(config, addresses.clone(), address, channel),
                            address: address.clone(),
                        }),
                    });
                }
                Err(message) => failures.push(format!("{address} ({message})")),
            }
        }
        Err(Error::Connect {
            addresses: addresses.join(","),
            message: failures.join("; "),
        })
    }

    /// The bootstrap address this client first connected to.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The configuration the client was built with.
    pub fn config(&self) -> &ClientConfig {
        self.inner.metadata.config()
    }

    /// A client whose connection is never made (for unit tests).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Client {
        let address = "127.0.0.1:1";
        Client {
            inner: Arc::new(Inner {
                metadata: Metadata::new(
                    ClientConfig::default(),
                    vec![address.into()],
                    address,
                    Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
                ),
                address: address.into(),
            }),
        }
    }

    /// The metadata cache and connections shared by this client's clones.
    pub(crate) fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    fn limit(&self) -> usize {
        self.config().max_message_bytes
    }

    pub(crate) fn admin(&self, channel: Channel) -> AdminServiceClient<Channel> {
        admin_stub(channel, self.limit())
    }

    pub(crate) fn fetcher(&self, channel: Channel) -> FetchServiceClient<Channel> {
        FetchServiceClient::new(channel)
            .max_decoding_message_size(self.limit())
            .max_encoding_message_size(self.limit())
    }

    pub(crate) fn producer_stub(&self, channel: Channel) -> ProduceServiceClient<Channel> {
        ProduceServiceClient::new(channel)
            .max_decoding_message_size(self.limit())
            .max_encoding_message_size(self.limit())
    }

    /// Runs one call that must not be repeated (it changes something) on the
    /// default node; when that node cannot be reached the next call goes to
    /// another.
    async fn call_once<T, Fut>(&self, call: impl FnOnce(Channel) -> Fut) -> Result<T>
    where
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let metadata = self.metadata();
        let route = metadata.default_route()?;
        let result = metadata.call_on(&route.address, call(route.channel)).await;
        if let Err(e) = &result
            && e.is_connection_error()
        {
            metadata.node_failed(&route.address);
        }
        result
    }

    /// Creates topic `name`; absent config fields take the broker's defaults.
    /// Returns the topic as created, every config field filled in.
    pub async fn create_topic(&self, name: &str, config: TopicConfig) -> Result<TopicDescription> {
        let request = CreateTopicRequest {
            name: name.to_string(),
            config: Some(config),
        };
        let response = self
            .call_once(|channel| async move { self.admin(channel).create_topic(request).await })
            .await?;
        response
            .topic
            .ok_or_else(|| Error::Protocol("CreateTopic answered without the topic".into()))
    }

    /// Deletes topic `name` and all its data, and forgets its routes.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicRequest {
            name: name.to_string(),
        };
        self.call_once(|channel| async move { self.admin(channel).delete_topic(request).await })
            .await?;
        self.metadata().forget(name);
        Ok(())
    }

    /// Grows topic `name` to `partitions` partitions (the new total, above
    /// the current one). Returns the topic with its new partitions; this
    /// client routes to them at once.
    pub async fn create_partitions(&self, name: &str, partitions: u32) -> Result<TopicDescription> {
        let request = CreatePartitionsRequest {
            name: name.to_string(),
            partitions,
        };
        let response = self
            .call_once(
                |channel| async move { self.admin(channel).create_partitions(request).await },
            )
            .await?;
        self.metadata().forget(name);
        response
            .topic
            .ok_or_else(|| Error::Protocol("CreatePartitions answered without the topic".into()))
    }

    /// Lists every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        let response = self
            .metadata()
            .call_any(|channel| async move {
                self.admin(channel).list_topics(ListTopicsRequest {}).await
            })
            .await?;
        Ok(response.topics)
    }

    /// Describes topic `name`: config and per-partition leader and offsets.
    /// Also refreshes the client's routes to the topic's leaders.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicDescription> {
        self.metadata().describe_topic(name).await
    }

    /// Describes the cluster: its nodes and which one answered. Also
    /// refreshes the client's list of node addresses.
    pub async fn describe_cluster(&self) -> Result<DescribeClusterResponse> {
        self.metadata().describe_cluster().await
    }

    /// Looks up one offset of `topic`/`partition`, on its leader.
    pub async fn list_offsets(&self, topic: &str, partition: u32, spec: OffsetSpec) -> Result<u64> {
        let offsets = self.list_offsets_many(topic, &[(partition, spec)]).await?;
        offsets
            .first()
            .copied()
            .ok_or_else(|| Error::Protocol("ListOffsets answered no offset".into()))
    }

    /// Looks up several offsets of `topic`, in query order: one call per
    /// leader node; a partition whose leader moved (`NOT_LEADER`) or could
    /// not be reached is asked again after a metadata update.
    pub async fn list_offsets_many(
        &self,
        topic: &str,
        queries: &[(u32, OffsetSpec)],
    ) -> Result<Vec<u64>> {
        let metadata = self.metadata();
        if metadata.version(topic).is_none() {
            metadata.describe_topic(topic).await?;
        }
        let mut answers: Vec<Option<u64>> = vec![None; queries.len()];
        let mut attempt = 0;
        loop {
            let seen = metadata.version(topic);
            let mut groups: Vec<(Route, Vec<usize>)> = Vec::new();
            for (i, (partition, _)) in queries.iter().enumerate() {
                if answers[i].is_some() {
                    continue;
                }
                let route = metadata.route(topic, *partition)?;
                match groups.iter_mut().find(|(r, _)| r.address == route.address) {
                    Some((_, indexes)) => indexes.push(i),
                    None => groups.push((route, vec![i])),
                }
            }
            let mut retry: Option<Error> = None;
            let mut refresh = false;
            for (route, indexes) in groups {
                let request = ListOffsetsRequest {
                    topic: topic.to_string(),
                    queries: indexes
                        .iter()
                        .map(|i| queries[*i].1.query(queries[*i].0))
                        .collect(),
                };
                let mut stub = self.fetcher(route.channel.clone());
                let call = stub.list_offsets(request);
                let response = match metadata.call_on(&route.address, call).await {
                    Ok(response) => response,
                    Err(e) if e.is_retriable() => {
                        for i in &indexes {
                            refresh |=
                                metadata.note_error(topic, queries[*i].0, &route.address, &e);
                        }
                        retry = Some(e);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if response.offsets.len() != indexes.len() {
                    return Err(Error::Protocol(format!(
                        "ListOffsets answered {} offsets for {} queries",
                        response.offsets.len(),
                        indexes.len()
                    )));
                }
                for (found, i) in response.offsets.iter().zip(&indexes) {
                    match &found.error {
                        Some(e) if e.reason != ErrorReason::Unspecified as i32 => {
                            let e = Error::from_proto(e);
                            if e.reason() != Some(ErrorReason::NotLeader) {
                                return Err(e);
                            }
                            refresh |=
                                metadata.note_error(topic, queries[*i].0, &route.address, &e);
                            retry = Some(e);
                        }
                        _ => answers[*i] = Some(found.offset),
                    }
                }
            }
            let Some(error) = retry else { break };
            attempt += 1;
            if attempt >= LOOKUP_ATTEMPTS {
                return Err(error);
            }
            if refresh {
                metadata.refresh(topic, seen).await?;
            }
        }
        answers
            .into_iter()
            .map(|a| a.ok_or_else(|| Error::Protocol("ListOffsets left a query unanswered".into())))
            .collect()
    }
}

/// An admin stub on `channel` with the message size limit.
pub(crate) fn admin_stub(channel: Channel, limit: usize) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit)
}

/// Splits `host:port[,host:port...]`, refusing empty entries.
pub(crate) fn parse_bootstrap(bootstrap: &str) -> Result<Vec<String>> {
    let addresses: Vec<String> = bootstrap
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    if addresses.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "bootstrap {bootstrap:?} names no broker: give host:port[,host:port...]"
        )));
    }
    for address in &addresses {
        let bare = address.strip_prefix("http://").unwrap_or(address.as_str());
        let port_ok = bare
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(Error::InvalidArgument(format!(
                "bootstrap address {address:?} is not host:port (for example 127.0.0.1:9740)"
            )));
        }
    }
    Ok(addresses)
}

/// The endpoint for `address`, tuned as issue 4 measured.
pub(crate) fn endpoint(address: &str, config: &ClientConfig) -> Result<Endpoint> {
    let uri = if address.starts_with("http://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| {
        Error::InvalidArgument(format!("bootstrap address {address:?} is invalid: {e}"))
    })?;
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(config.window_bytes)
        .initial_connection_window_size(config.window_bytes)
        .max_frame_size(config.max_frame_bytes.clamp(1 << 14, (1 << 24) - 1))
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(Duration::from_secs(60))))
}

async fn connect_one(address: &str, config: &ClientConfig) -> std::result::Result<Channel, String> {
    let endpoint = endpoint(address, config).map_err(|e| e.to_string())?;
    endpoint.connect().await.map_err(|e| {
        // The error itself only says "transport error": its causes say what.
        match std::error::Error::source(&e) {
            Some(cause) => with_sources(cause.to_string(), cause),
            None => e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_parse() {
        let ok: &[(&str, &[&str])] = &[
            ("127.0.0.1:9740", &["127.0.0.1:9740"]),
            ("a:1,b:2", &["a:1", "b:2"]),
            (" a:1 , b:2 ,", &["a:1", "b:2"]),
            ("[::1]:9740", &["[::1]:9740"]),
        ];
        for (i, (input, want)) in ok.iter().enumerate() {
            assert_eq!(parse_bootstrap(input).unwrap(), *want, "case {i}");
        }
        for (i, bad) in ["", ",", "localhost", "a:b", ":9740"].iter().enumerate() {
            assert!(
                matches!(parse_bootstrap(bad), Err(Error::InvalidArgument(_))),
                "case {i}: {bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn connect_names_the_address() {
        // Bind and drop a listener: the port is very likely closed now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let error = Client::connect(&address).await.unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&address), "{text}");
        assert!(error.is_retriable());
    }
}
