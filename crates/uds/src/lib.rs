//! The Unix socket listener for twid's gRPC servers.
//!
//! gRPC C-core clients (grpcio for Python, Ruby, C++, C#, and so py-spiffe) send the
//! percent-encoded socket path as the HTTP/2 `:authority` on a Unix socket
//! (`%2Ftmp%2Fagent.sock`), and grpc-java sends the raw path. h2 0.4, under tonic, resets every
//! stream whose `:authority` is not a valid URI authority, before any handler runs.
//! [`AuthorityRepair`] sits between the accepted socket and h2: it decodes each client header
//! block with HPACK and re-encodes it with `:authority: localhost`. It always rewrites, valid
//! authorities included, because on a Unix socket the value names nothing a handler could use.
//!
//! - [`bind`] and [`bind_private`] create the socket file with the right modes.
//! - [`incoming`] accepts connections as [`UdsConnection`]s for
//!   `tonic::transport::Server::serve_with_incoming`; handlers read the caller's
//!   [`PeerCredentials`] from the request extensions as [`UdsConnectInfo`].
//! - [`FrameRewriter`] is the pure byte-stream rewriter, also the fuzz target's entry point.
//!
//! Limits against local clients: [`bind`] and [`bind_private`] reject socket paths below a
//! directory that another user could rename or replace, [`incoming`] keeps at most
//! [`MAX_CONNECTIONS`] connections open, a header block may not exceed
//! [`MAX_HEADER_BLOCK_SIZE`], and a connection without a complete request header block within
//! [`FIRST_HEADERS_TIMEOUT`] is closed.

#![forbid(unsafe_code)]

mod frame;
mod hpack;
mod listener;
mod stream;

pub use frame::{
    FrameRewriter, MAX_DYNAMIC_TABLE_SIZE, MAX_HEADER_BLOCK_SIZE, REPLACEMENT_AUTHORITY,
    RewriteError,
};
pub use listener::{
    MAX_CONNECTIONS, PeerCredentials, UdsConnectInfo, UdsConnection, bind, bind_private, incoming,
};
pub use stream::{AuthorityRepair, FIRST_HEADERS_TIMEOUT};
