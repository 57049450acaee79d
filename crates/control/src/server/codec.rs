//! The discovery stream's codec: prost, with per-stream buffers sized for a control plane
//! holding thousands of long-lived streams rather than for bulk transfer.
//!
//! tonic's default (`ProstCodec`) gives every stream an 8 KiB decode buffer and an 8 KiB encode
//! buffer that keeps collecting ready messages until 32 KiB before handing them to HTTP/2.
//! A proxy's first sync (Welcome, InboundPolicy, one Update per subscribed target, ≈ 5.5 kB
//! each in the bench) fills that buffer, and it stays allocated for the life of the stream:
//! heaptrack at 1,000 proxies counted 29 KiB of encode buffer and 8 KiB of decode buffer per
//! stream. Here each message is handed to HTTP/2 as soon as it is encoded (HTTP/2 still
//! writes whatever frames are queued in one go), and both buffers start at 1 KiB and grow in
//! 1 KiB steps to fit the largest message: a stream keeps about its largest message.
//! `bench-cp hold --proxies 5000`: RSS 481 → 379 MiB (docs/benchmarks.md). The bytes on the
//! wire are the same.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Initial size and growth step of both buffers. ProxyMessages are tens of bytes; an Update is
/// a few kB; a larger message grows the buffer as it would by default.
const BUFFER: usize = 1024;
/// Hand each encoded message to HTTP/2 at once instead of collecting up to 32 KiB.
const YIELD_AFTER: usize = 1;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_AFTER)
}

/// prost's encoding of `T` out and `U` in (as `tonic_prost::ProstCodec`), with [`BUFFER`] and
/// [`YIELD_AFTER`].
#[derive(Debug)]
pub struct DiscoveryCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for DiscoveryCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for DiscoveryCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SmallEncoder<T>;
    type Decoder = SmallDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SmallDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct SmallEncoder<T>(PhantomData<fn(T)>);

impl<T: Message> Encoder for SmallEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The buffer grows to fit (tonic reserves the message's length first), so this fails
        // only if prost and tonic disagree about the length: an internal error, not a panic.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a discovery message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

#[derive(Debug)]
pub struct SmallDecoder<U>(PhantomData<fn() -> U>);

impl<U: Message + Default> Decoder for SmallDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // As tonic_prost: a message that does not parse is INTERNAL (gRPC status codes).
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
