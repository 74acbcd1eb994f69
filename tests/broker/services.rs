//! gRPC health checking and server reflection, as grpcurl and load
//! balancers use them.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::grpc::channel;
use crate::support::{Broker, BrokerOptions, with_deadline};

const LIMIT: Duration = Duration::from_secs(60);

/// The services a client must be able to discover.
const RUNNEL_SERVICES: [&str; 4] = [
    "runnel.v1.AdminService",
    "runnel.v1.ProduceService",
    "runnel.v1.FetchService",
    "runnel.v1.GroupService",
];

#[tokio::test]
async fn health_check_reports_serving() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let mut health = HealthClient::new(channel(broker.grpc_addr()).await);
        let resp = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check of the server: {s:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{resp:?}");
        let unknown = health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await;
        assert_eq!(
            unknown.map_err(|s| s.code()).err(),
            Some(tonic::Code::NotFound),
            "an unknown service is NOT_FOUND"
        );
    })
    .await;
}

/// Lists services and fetches the file declaring ProduceService through
/// one reflection API version (`v1` or `v1alpha`, identical shapes).
macro_rules! reflect {
    ($version:ident, $ch:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;

        let mut client = ServerReflectionClient::new($ch);
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "runnel.v1.ProduceService".into(),
                )),
            },
        ];
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap_or_else(|s| panic!("{} reflection: {s:?}", stringify!($version)))
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(resp) = responses
            .message()
            .await
            .unwrap_or_else(|s| panic!("{} reflection stream: {s:?}", stringify!($version)))
        {
            match resp.message_response {
                Some(MessageResponse::ListServicesResponse(l)) => {
                    services.extend(l.service.into_iter().map(|s| s.name));
                }
                Some(MessageResponse::FileDescriptorResponse(f)) => {
                    files.extend(f.file_descriptor_proto);
                }
                other => panic!("{} reflection answered {other:?}", stringify!($version)),
            }
        }
        (services, files)
    }};
}

fn check_reflection(version: &str, services: &[String], files: &[Vec<u8>]) {
    for want in RUNNEL_SERVICES {
        assert!(
            services.iter().any(|s| s == want),
            "{version} reflection does not list {want}: {services:?}"
        );
    }
    // The file descriptor of produce.proto names its methods.
    let needle = b"ProduceStream";
    assert!(
        files
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle)),
        "{version}: no file descriptor declaring ProduceService.ProduceStream"
    );
}

#[tokio::test]
async fn reflection_lists_the_runnel_services_in_v1_and_v1alpha() {
    with_deadline(LIMIT, async {
        let broker = Broker::start(BrokerOptions::flush("never"));
        let ch = channel(broker.grpc_addr()).await;
        let (services, files) = reflect!(v1, ch.clone());
        check_reflection("v1", &services, &files);
        // grpcurl before 1.9 and grpcio-reflection's Python client speak v1alpha.
        let (services, files) = reflect!(v1alpha, ch);
        check_reflection("v1alpha", &services, &files);
    })
    .await;
}
