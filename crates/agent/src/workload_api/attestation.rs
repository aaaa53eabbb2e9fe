//! The direct workload attestation service on the Workload API socket: a relay to the server.
//!
//! A workload in a TEE proves itself to the server with its own evidence, so the agent adds
//! nothing. For each `twid.workload_attestation.v1.WorkloadAttestation` call it sends the
//! request message, byte for byte and without decoding it, to the server over its mutual TLS
//! connection, and returns the server's message byte for byte, or the server's status code,
//! message and details. The agent does not attest the caller and sends none of the caller's
//! metadata. It only requires the `workload.spiffe.io: true` header, like every Workload API
//! call.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use prost::bytes::{Buf as _, BufMut as _, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::caller::check_security_header;
use crate::node::{RPC_TIMEOUT, ServerConnection};

/// The gRPC service name the relay serves and forwards.
const SERVICE_NAME: &str = "twid.workload_attestation.v1.WorkloadAttestation";

/// The methods of the service, by request path.
const METHODS: [(&str, &str); 2] = [
    (
        "/twid.workload_attestation.v1.WorkloadAttestation/GetNonce",
        "GetNonce",
    ),
    (
        "/twid.workload_attestation.v1.WorkloadAttestation/Attest",
        "Attest",
    ),
];

/// Largest message relayed in either direction: an evidence envelope of up to 1 MiB, JSON with
/// base64 inside, plus a CSR and key.
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Builds the relay service for the Workload API socket.
pub(crate) fn service(connection: Arc<ServerConnection>) -> AttestationRelay {
    AttestationRelay { connection }
}

/// Relays WorkloadAttestation calls to the server without decoding them.
#[derive(Clone)]
pub(crate) struct AttestationRelay {
    connection: Arc<ServerConnection>,
}

impl NamedService for AttestationRelay {
    const NAME: &'static str = SERVICE_NAME;
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for AttestationRelay {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let Some((path, method)) = METHODS.into_iter().find(|(known, _)| *known == path) else {
            return Box::pin(async { Ok(unimplemented()) });
        };
        let forward = Forward {
            connection: Arc::clone(&self.connection),
            path,
            method,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), Some(MAX_MESSAGE_BYTES));
            Ok(grpc.unary(forward, request).await)
        })
    }
}

/// Returns the UNIMPLEMENTED response for a method this service does not have.
fn unimplemented() -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::default());
    let headers = response.headers_mut();
    headers.insert(
        Status::GRPC_STATUS,
        (tonic::Code::Unimplemented as i32).into(),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

/// One relayed call: the request bytes go to `path` on the server.
struct Forward {
    connection: Arc<ServerConnection>,
    path: &'static str,
    method: &'static str,
}

impl UnaryService<Bytes> for Forward {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let channel = self.connection.channel();
        let path = self.path;
        let method = self.method;
        Box::pin(async move {
            check_security_header(&request)?;
            let message = request.into_inner();
            let mut grpc = tonic::client::Grpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let call = async {
                grpc.ready().await.map_err(|error| {
                    Status::unavailable(format!("the server connection failed: {error}"))
                })?;
                let path = http::uri::PathAndQuery::from_static(path);
                grpc.unary(Request::new(message), path, RawCodec).await
            };
            let result = match tokio::time::timeout(RPC_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!(
                    "the server did not respond to {method} within {} s",
                    RPC_TIMEOUT.as_secs()
                ))),
            };
            match result {
                Ok(response) => Ok(Response::new(response.into_inner())),
                Err(status) => {
                    tracing::debug!(
                        method,
                        code = ?status.code(),
                        message = status.message(),
                        "relayed workload attestation call failed"
                    );
                    // The server's code, message and details, without its response headers.
                    Err(Status::with_details(
                        status.code(),
                        status.message(),
                        Bytes::copy_from_slice(status.details()),
                    ))
                }
            }
        })
    }
}

/// A codec that passes message bytes through unchanged, so the relay never decodes them.
#[derive(Clone, Copy, Debug, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        destination.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let length = source.remaining();
        Ok(Some(source.copy_to_bytes(length)))
    }
}
