//! Requests that never reach a handler: malformed protobuf, broken gRPC framing, over-size
//! messages. Both services answer them like any other refused input (`INVALID_ARGUMENT`, or
//! `RESOURCE_EXHAUSTED` for size) with a short message, and count them in their own metrics.
//!
//! Two pieces, because tonic fails such requests in two places:
//!
//! - [`EdgeCodec`], the codec of every generated service (`codec_path` in `build.rs`): prost's
//!   `DecodeError` (invalid UTF-8 in a string, a wrong wire type, a truncated field, nesting
//!   past prost's recursion limit) becomes `INVALID_ARGUMENT` with one short sentence. tonic's
//!   own `ProstCodec` answers `INTERNAL` with the decoder's full message, which for a deeply
//!   nested `Struct` is several kilobytes of internal paths. A codec is the one place that
//!   sees the typed `DecodeError`, so it can say which kind of malformation it was.
//! - [`Guarded`], a wrapper around each generated server: the failures tonic raises while
//!   reading the gRPC frame, before any codec runs (a message over the size limit is
//!   `OUT_OF_RANGE`, a body that ends inside a frame `INTERNAL`), are rewritten to
//!   `RESOURCE_EXHAUSTED` / `INVALID_ARGUMENT`; and every request that ended before its
//!   handler ran is reported to the service's metrics hook with its method name. It knows
//!   that the handler did not run because each handler calls [`mark_handled`] first (a
//!   task-local flag: the handler runs inside the future this wrapper polls). A tower layer
//!   could not name the codec's error kind, and the codec alone cannot see framing errors nor
//!   which method it decodes for; together they cover every path.
//!
//! `codec_path` applies to the generated clients too: a client of these services that receives
//! an undecodable response also gets the short `INVALID_ARGUMENT` instead of `INTERNAL`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;

tokio::task_local! {
    static HANDLED: Arc<AtomicBool>;
}

/// Called by a service's handler as its first step: the request was decoded and the handler
/// owns its outcome (and its metrics) from here on.
pub fn mark_handled() {
    // Outside a `Guarded` server (unit tests calling a handler directly) there is no flag.
    let _ = HANDLED.try_with(|h| h.store(true, Ordering::Relaxed));
}

/// The prost codec with short `INVALID_ARGUMENT` answers for undecodable messages.
#[derive(Debug, Clone)]
pub struct EdgeCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for EdgeCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for EdgeCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = EdgeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        EdgeDecoder { _pd: PhantomData }
    }
}

/// Decodes `U` with prost, mapping a failure with [`decode_failure`].
#[derive(Debug, Clone)]
pub struct EdgeDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for EdgeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| decode_failure(&e))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// A prost decode error as a short `INVALID_ARGUMENT`. prost keeps the error's kind private
/// and only displays it (with the stack of fields it was in), so the kind is read from the
/// text; the text itself is never sent.
pub fn decode_failure(error: &prost::DecodeError) -> Status {
    let text = error.to_string();
    let what = if text.contains("recursion limit") {
        "is nested too deeply"
    } else if text.contains("UTF-8") {
        "has a string field that is not valid UTF-8"
    } else if text.contains("wire type") {
        "has a field with the wrong wire type"
    } else if text.contains("buffer underflow") || text.contains("unexpected end") {
        "is truncated"
    } else {
        "is not a valid protobuf message"
    };
    tracing::debug!(error = %text, "undecodable request");
    Status::invalid_argument(format!("request: cannot be decoded ({what})"))
}

/// What a [`Guarded`] server reports for a request refused before its handler: the method
/// (`CreateTask`), the outcome label (`invalid_argument`, `resource_exhausted`) and the time
/// it took. Services record it under their usual metric names.
pub type OnRefused = fn(method: &str, outcome: &'static str, elapsed: Duration);

/// A generated gRPC server wrapped so that requests refused before their handler get a short,
/// correct status and are reported (see the module docs).
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    max_request_bytes: usize,
    on_refused: OnRefused,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, whose decoding limit is `max_request_bytes` (named in the message).
    pub fn new(inner: S, max_request_bytes: usize, on_refused: OnRefused) -> Self {
        Self {
            inner,
            max_request_bytes,
            on_refused,
        }
    }
}

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Only a generated method's own failures are rewritten below, so the label set stays
        // the service's method names (an unknown path answers UNIMPLEMENTED, left alone).
        let method = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let started = Instant::now();
        let limit = self.max_request_bytes;
        let on_refused = self.on_refused;
        let handled = Arc::new(AtomicBool::new(false));
        let response = HANDLED.scope(handled.clone(), self.inner.call(req));
        Box::pin(async move {
            let Ok(response) = response.await;
            if handled.load(Ordering::Relaxed) {
                return Ok(response);
            }
            Ok(refused(response, &method, started, limit, on_refused))
        })
    }
}

/// The answer to a request that ended before its handler, rewritten where tonic's status is
/// wrong or verbose, and reported.
fn refused(
    response: http::Response<tonic::body::Body>,
    method: &str,
    started: Instant,
    limit: usize,
    on_refused: OnRefused,
) -> http::Response<tonic::body::Body> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let status = match status.code() {
        Code::OutOfRange => {
            Status::resource_exhausted(format!("request: is larger than the {limit}-byte limit"))
        }
        // tonic's framing errors (a body ending inside a frame, a bad compression flag).
        Code::Internal => {
            tracing::debug!(error = %status.message(), "malformed gRPC framing");
            Status::invalid_argument("request: cannot be decoded (malformed gRPC framing)")
        }
        // Already short: EdgeCodec's decode failures, tonic's decompression limit.
        Code::InvalidArgument | Code::ResourceExhausted => status,
        _ => return response,
    };
    let outcome = if status.code() == Code::ResourceExhausted {
        "resource_exhausted"
    } else {
        "invalid_argument"
    };
    on_refused(method, outcome, started.elapsed());
    status.into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(bytes: &[u8]) -> Status {
        let e = crate::v1::CreateTaskRequest::decode(bytes).unwrap_err();
        decode_failure(&e)
    }

    #[test]
    fn decode_errors_become_one_short_sentence() {
        // title (field 4) with a lone surrogate encoded as UTF-8.
        let s = status_of(&[0x22, 3, 0xed, 0xa0, 0x80]);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "request: cannot be decoded (has a string field that is not valid UTF-8)"
        );
        // title as a varint.
        let s = status_of(&[0x20, 7]);
        assert_eq!(
            s.message(),
            "request: cannot be decoded (has a field with the wrong wire type)"
        );
        // title announcing 9 bytes, carrying 1.
        let s = status_of(&[0x22, 9, b'a']);
        assert_eq!(s.message(), "request: cannot be decoded (is truncated)");
        // A Struct nested past prost's recursion limit.
        let mut v = prost_types::Struct::default();
        for _ in 0..60 {
            let mut outer = prost_types::Struct::default();
            outer.fields.insert(
                "x".into(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(v)),
                },
            );
            v = outer;
        }
        let deep = crate::v1::SubmitProblemRequest {
            metadata: Some(v),
            ..Default::default()
        }
        .encode_to_vec();
        let e = crate::v1::SubmitProblemRequest::decode(deep.as_slice()).unwrap_err();
        let s = decode_failure(&e);
        assert_eq!(
            s.message(),
            "request: cannot be decoded (is nested too deeply)"
        );
    }
}
