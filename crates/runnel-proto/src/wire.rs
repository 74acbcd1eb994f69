//! gRPC framing for the one call whose bytes the broker handles itself:
//! `FetchService.Fetch`.
//!
//! tonic copies every message it sends into one encode buffer first. For
//! fetch responses, which are nearly all stored batch bytes, that copy was
//! 17% of the broker's time while consuming (benches/RESULTS.md). The broker
//! therefore writes a fetch response as a list of chunks ([`ChunkBody`])
//! that share the stored bytes, and reads the small request itself
//! ([`Chunks`], [`decode_message`]). Everything else about the call (path,
//! headers, statuses, trailers, the protobuf encoding) is plain gRPC, so
//! every client, tonic's included, reads it unchanged.
//!
//! The other side was tried too: a client decoding responses in place from
//! the HTTP/2 frames (no decode-buffer copy). It was slower: the frames it
//! kept alive could not be reused, and the fresh memory for new ones cost
//! more in page faults than the copy it saved (RESULTS.md).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::codegen::http::HeaderMap;

/// The HTTP/2 path of `FetchService.Fetch`.
pub const FETCH_PATH: &str = "/runnel.v1.FetchService/Fetch";
/// Bytes of the gRPC message prefix: a compressed flag and a big-endian
/// length.
pub const PREFIX: usize = 5;

/// The gRPC message prefix of an uncompressed message of `length` bytes.
pub fn prefix(length: u32) -> [u8; PREFIX] {
    let l = length.to_be_bytes();
    [0, l[0], l[1], l[2], l[3]]
}

/// Stored bytes shorter than this are copied into the
/// surrounding chunk: an HTTP/2 frame of their own would cost more than the
/// copy.
pub const SHARE_MIN: usize = 16 << 10;

/// The encoded length of a `bytes` field `tag` of `len` bytes (0 when empty:
/// proto3 leaves it out).
pub fn bytes_field_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

/// The encoded length of a message field `tag` whose body is `len` bytes.
pub fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Writes protobuf into chunks, sharing large `bytes` fields instead of
/// copying them: the writer's own bytes go into one growing buffer, cut
/// into a chunk wherever a shared field is put between them.
#[derive(Debug, Default)]
pub struct ChunkWriter {
    head: BytesMut,
    chunks: Vec<Bytes>,
}

impl ChunkWriter {
    /// A writer starting with the gRPC prefix of a `length`-byte message.
    pub fn message(length: u32) -> ChunkWriter {
        let mut w = ChunkWriter::default();
        w.head.put_slice(&prefix(length));
        w
    }

    /// The key and length of a message field `tag` of `len` bytes; its
    /// fields follow.
    pub fn message_field(&mut self, tag: u32, len: usize) {
        encode_key(tag, WireType::LengthDelimited, &mut self.head);
        encode_varint(len as u64, &mut self.head);
    }

    /// The fields of `m`, encoded by prost.
    pub fn fields(&mut self, m: &impl Message) {
        m.encode_raw(&mut self.head);
    }

    /// A `bytes` field `tag` (nothing when empty), shared when at least
    /// [`SHARE_MIN`] bytes long.
    pub fn bytes_field(&mut self, tag: u32, bytes: &Bytes) {
        if bytes.is_empty() {
            return;
        }
        encode_key(tag, WireType::LengthDelimited, &mut self.head);
        encode_varint(bytes.len() as u64, &mut self.head);
        if bytes.len() < SHARE_MIN {
            self.head.put_slice(bytes);
        } else {
            self.chunks.push(self.head.split().freeze());
            self.chunks.push(bytes.clone());
        }
    }

    /// The chunks written, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.head.is_empty() {
            self.chunks.push(self.head.freeze());
        }
        self.chunks
    }
}

/// An HTTP body of ready chunks, then optional trailers.
#[derive(Debug)]
pub struct ChunkBody {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl ChunkBody {
    /// A body sending `chunks` as they are, then `trailers` if any.
    pub fn new(chunks: impl Into<VecDeque<Bytes>>, trailers: Option<HeaderMap>) -> ChunkBody {
        ChunkBody {
            chunks: chunks.into(),
            trailers,
        }
    }
}

impl http_body::Body for ChunkBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }
}

/// Bytes received in several chunks (HTTP/2 frames), read as one buffer.
/// Taking bytes that lie inside one chunk (what prost does for a `bytes`
/// field) shares them.
#[derive(Debug, Default)]
pub struct Chunks {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    /// Appends a chunk.
    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.parts.push_back(chunk);
        }
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map_or(&[], |b| b.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of the chunks");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(
            len <= self.remaining,
            "copy_to_bytes past the end of the chunks"
        );
        if let Some(front) = self.parts.front_mut()
            && len <= front.len()
        {
            let out = front.split_to(len);
            if front.is_empty() {
                self.parts.pop_front();
            }
            self.remaining -= len;
            return out;
        }
        let mut out = BytesMut::with_capacity(len);
        out.put((&mut *self).take(len));
        out.freeze()
    }
}

/// Decodes the one uncompressed gRPC message that `chunks` hold, prefix
/// included; `what` names it in errors.
pub fn decode_message<M: Message + Default>(mut chunks: Chunks, what: &str) -> Result<M, Status> {
    if chunks.remaining() < PREFIX {
        return Err(Status::internal(format!(
            "{what} has no complete gRPC message ({} bytes)",
            chunks.remaining()
        )));
    }
    let compressed = chunks.get_u8();
    let length = chunks.get_u32() as usize;
    if compressed != 0 {
        return Err(Status::unimplemented(format!(
            "{what} is compressed, which this call does not accept: send it uncompressed"
        )));
    }
    if length != chunks.remaining() {
        return Err(Status::internal(format!(
            "{what}: the gRPC prefix says {length} bytes but {} came (exactly one message is expected)",
            chunks.remaining()
        )));
    }
    M::decode(chunks).map_err(|e| Status::internal(format!("{what} does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{FetchResponse, PartitionData};

    /// `message` as one uncompressed gRPC message, prefix included.
    fn prefixed(message: &impl Message) -> Bytes {
        let len = u32::try_from(message.encoded_len()).unwrap();
        let mut w = ChunkWriter::message(len);
        w.fields(message);
        let chunks = w.finish();
        assert_eq!(chunks.len(), 1, "no bytes field was shared");
        chunks[0].clone()
    }

    fn response() -> FetchResponse {
        FetchResponse {
            partitions: (0..3)
                .map(|i| PartitionData {
                    partition: i,
                    high_watermark: 100,
                    batches: Bytes::from(vec![i as u8; 1000 * (i as usize + 1)]),
                    next_offset: 7,
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// `bytes` cut at `cuts`.
    fn chunks(bytes: &Bytes, cuts: &[usize]) -> Chunks {
        let mut out = Chunks::default();
        let mut at = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            out.push(bytes.slice(at..cut));
            at = cut;
        }
        out
    }

    #[test]
    fn a_message_decodes_however_it_is_cut() {
        let whole = prefixed(&response());
        for cuts in [
            vec![],
            vec![1],
            vec![3, 4, 5, 6],
            vec![100, 2100, 2101],
            vec![5],
        ] {
            let c = chunks(&whole, &cuts);
            let got: FetchResponse = decode_message(c, "the response").unwrap();
            assert_eq!(got, response(), "cut at {cuts:?}");
        }
    }

    #[test]
    fn bytes_inside_one_chunk_are_shared() {
        let whole = prefixed(&response());
        let c = chunks(&whole, &[]);
        let got: FetchResponse = decode_message(c, "the response").unwrap();
        for p in &got.partitions {
            let start = whole.as_ptr() as usize;
            let at = p.batches.as_ptr() as usize;
            assert!(at >= start && at + p.batches.len() <= start + whole.len());
        }
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        let whole = prefixed(&response());
        let c = chunks(&whole.slice(..3), &[]);
        let e = decode_message::<FetchResponse>(c, "x").unwrap_err();
        assert!(e.message().contains("no complete gRPC message"), "{e}");
        let c = chunks(&whole.slice(..whole.len() - 1), &[]);
        let e = decode_message::<FetchResponse>(c, "x").unwrap_err();
        assert!(e.message().contains("prefix says"), "{e}");
        let mut compressed = whole.to_vec();
        compressed[0] = 1;
        let c = chunks(&Bytes::from(compressed), &[]);
        let e = decode_message::<FetchResponse>(c, "x").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented);
        let mut garbage = prefix(4).to_vec();
        garbage.extend_from_slice(&[0xff; 4]);
        let c = chunks(&Bytes::from(garbage), &[]);
        let e = decode_message::<FetchResponse>(c, "x").unwrap_err();
        assert!(e.message().contains("does not decode"), "{e}");
    }
}
