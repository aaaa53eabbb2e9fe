//! The Workload API socket, mode 0777 like SPIRE's, because any local process may ask for its
//! identity. Callers are distinguished by their peer credentials, not by file permissions.

use std::path::Path;

use futures::Stream;

use crate::AgentError;

/// Mode of the Workload API socket file.
const SOCKET_MODE: u32 = 0o777;

/// The accepted connections, with `:authority` repair and peer credentials.
pub(crate) type Incoming =
    std::pin::Pin<Box<dyn Stream<Item = std::io::Result<twid_uds::UdsConnection>> + Send>>;

/// Binds the socket (creating its parent directory, replacing a stale socket file).
pub(crate) fn bind(path: &Path) -> Result<Incoming, AgentError> {
    let listener = twid_uds::bind(path, SOCKET_MODE).map_err(|source| AgentError::Bind {
        path: path.to_owned(),
        source,
    })?;
    Ok(Box::pin(twid_uds::incoming(listener)))
}
