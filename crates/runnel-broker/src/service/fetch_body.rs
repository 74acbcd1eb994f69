//! `FetchService.Fetch` answered without copying the stored batches.
//!
//! tonic encodes every response message into one buffer before HTTP/2 sends
//! it, so each fetched byte used to be copied out of the segment's memory
//! map into that buffer (17% of the broker's time while consuming, see
//! benches/RESULTS.md). Here the response is written as a list of chunks:
//! small encoded pieces (the gRPC prefix, field keys and lengths, offsets)
//! and, between them, each partition's `batches` bytes as stored (a slice of
//! the memory map). h2 writes the chunks with vectored writes, so the kernel
//! copies the batches straight from the page cache into the socket.
//!
//! The bytes on the wire are a valid `FetchResponse`: in each
//! `PartitionData` the `batches` field (4) comes after the other fields,
//! which protobuf allows (fields may appear in any order; a unit test
//! decodes the result with prost). Every other RPC, and `Fetch` itself for
//! all its logic, stays with the tonic service: only the framing is ours.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use prost::Message;
use runnel_proto::v1::fetch_service_server::{FetchService, FetchServiceServer};
use runnel_proto::v1::{FetchRequest, FetchResponse, PartitionData};
use runnel_proto::wire::{
    ChunkBody, ChunkWriter, Chunks, FETCH_PATH, PREFIX, bytes_field_len, decode_message,
    message_field_len,
};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{self, HeaderMap, HeaderValue, header};
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;

use super::fetch::FetchSvc;

/// `PartitionData.batches`.
const BATCHES_TAG: u32 = 4;
/// `FetchResponse.partitions`.
const PARTITIONS_TAG: u32 = 1;

/// `response` as one gRPC message (prefix included), in chunks; each
/// `batches` of at least [`SHARE_MIN`](runnel_proto::wire::SHARE_MIN) bytes is a chunk of its own, shared
/// with the caller's bytes. Fails when the message would exceed `limit`.
pub(crate) fn encode_response(response: FetchResponse, limit: usize) -> Result<Vec<Bytes>, Status> {
    let parts: Vec<(PartitionData, Bytes)> = response
        .partitions
        .into_iter()
        .map(|mut data| {
            let batches = std::mem::take(&mut data.batches);
            (data, batches)
        })
        .collect();
    let lens: Vec<usize> = parts
        .iter()
        .map(|(d, b)| d.encoded_len() + bytes_field_len(BATCHES_TAG, b.len()))
        .collect();
    let total: usize = lens
        .iter()
        .map(|n| message_field_len(PARTITIONS_TAG, *n))
        .sum();
    let length = u32::try_from(total)
        .ok()
        .filter(|_| total <= limit)
        .ok_or_else(|| {
            Status::resource_exhausted(format!(
                "the fetch response would be {total} bytes, over the {limit}-byte limit: ask for a smaller max_bytes"
            ))
        })?;
    let mut w = ChunkWriter::message(length);
    for ((data, batches), len) in parts.iter().zip(lens) {
        w.message_field(PARTITIONS_TAG, len);
        w.fields(data);
        w.bytes_field(BATCHES_TAG, batches);
    }
    Ok(w.finish())
}

/// Reads the request body: exactly one uncompressed gRPC message of at most
/// `limit` bytes.
async fn read_request(mut body: Body, limit: usize) -> Result<FetchRequest, Status> {
    let mut chunks = Chunks::default();
    while let Some(frame) =
        std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await
    {
        let frame = frame.map_err(|e| Status::internal(format!("reading the request: {e}")))?;
        if let Ok(data) = frame.into_data() {
            chunks.push(data);
            if chunks.remaining() > limit + PREFIX {
                return Err(Status::out_of_range(format!(
                    "the Fetch request is over the {limit}-byte limit"
                )));
            }
        }
    }
    decode_message(chunks, "the Fetch request")
}

/// Serves one `Fetch` call through [`FetchService::fetch`].
async fn serve(
    svc: Arc<FetchSvc>,
    request: http::Request<Body>,
    limit: usize,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "compressed Fetch requests ({encoding:?}) are not accepted: send them uncompressed"
        )));
    }
    let request = read_request(body, limit).await?;
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        request,
    );
    let (metadata, response, _) = svc.fetch(request).await?.into_parts();
    let chunks = encode_response(response, limit)?;
    let mut headers = metadata.into_headers();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let mut response = http::Response::new(Body::new(ChunkBody::new(chunks, Some(trailers))));
    *response.headers_mut() = headers;
    Ok(response)
}

/// `FetchService` as served: `Fetch` through [`serve`], every other call
/// through the tonic-generated server.
#[derive(Clone)]
pub(crate) struct FetchServer {
    svc: Arc<FetchSvc>,
    generated: FetchServiceServer<FetchSvc>,
    limit: usize,
}

impl FetchServer {
    /// Serves `svc`, with messages of at most `limit` bytes either way.
    pub(crate) fn new(svc: FetchSvc, limit: usize) -> FetchServer {
        let svc = Arc::new(svc);
        FetchServer {
            generated: FetchServiceServer::from_arc(svc.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            svc,
            limit,
        }
    }
}

impl NamedService for FetchServer {
    const NAME: &'static str = <FetchServiceServer<FetchSvc> as NamedService>::NAME;
}

impl Service<http::Request<Body>> for FetchServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != FETCH_PATH {
            return self.generated.call(request);
        }
        let (svc, limit) = (self.svc.clone(), self.limit);
        Box::pin(async move {
            Ok(serve(svc, request, limit)
                .await
                .unwrap_or_else(|status| status.into_http()))
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use runnel_proto::v1::{ConsumedRecord, Error as ProtoError};

    use super::*;

    fn data(partition: u32, batches: Vec<u8>, with_error: bool) -> PartitionData {
        PartitionData {
            partition,
            high_watermark: 7 + u64::from(partition),
            log_start_offset: u64::from(partition),
            batches: Bytes::from(batches),
            records: Vec::new(),
            next_offset: 3,
            error: with_error.then(|| ProtoError {
                reason: 2,
                message: "no".into(),
                ..Default::default()
            }),
        }
    }

    /// Decodes with prost from one contiguous copy (no sharing involved).
    fn decode(chunks: &[Bytes]) -> FetchResponse {
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut one = Chunks::default();
        one.push(Bytes::from(whole));
        decode_message(one, "the response").unwrap()
    }

    proptest! {
        #[test]
        fn chunks_decode_to_the_response(
            sizes in prop::collection::vec((0usize..40_000, any::<bool>()), 0..6),
        ) {
            let response = FetchResponse {
                partitions: sizes
                    .iter()
                    .enumerate()
                    .map(|(i, (n, e))| data(i as u32, vec![i as u8 + 1; *n], *e))
                    .collect(),
            };
            let chunks = encode_response(response.clone(), usize::MAX).unwrap();
            prop_assert_eq!(decode(&chunks), response);
        }
    }

    #[test]
    fn large_batches_are_shared_not_copied() {
        let stored = Bytes::from(vec![9u8; 100_000]);
        let mut p = data(0, Vec::new(), false);
        p.batches = stored.clone();
        let chunks = encode_response(
            FetchResponse {
                partitions: vec![p],
            },
            usize::MAX,
        )
        .unwrap();
        assert!(
            chunks
                .iter()
                .any(|c| c.as_ptr() == stored.as_ptr() && c.len() == stored.len()),
            "the stored bytes are a chunk of the response"
        );
    }

    #[test]
    fn decoded_records_and_the_size_limit() {
        let mut p = data(1, Vec::new(), false);
        p.records = vec![ConsumedRecord {
            offset: 4,
            value: Bytes::from_static(b"v"),
            ..Default::default()
        }];
        let response = FetchResponse {
            partitions: vec![p],
        };
        let chunks = encode_response(response.clone(), usize::MAX).unwrap();
        assert_eq!(decode(&chunks), response);
        let e = encode_response(response, 4).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("max_bytes"), "{}", e.message());
    }
}
