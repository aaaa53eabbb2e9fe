//! Workload API endpoint addresses in the `SPIFFE_ENDPOINT_SOCKET` syntax.
//!
//! `unix:///abs/path` and `unix:/abs/path` are both accepted, because neither sets a URI
//! authority and clients in the wild use both. `unix://host/path`, relative paths, queries
//! and fragments are rejected. `tcp://<ip>:<port>` takes an IP literal and a port only.
//! The scheme is matched case-insensitively, as RFC 3986 specifies; the path is taken
//! literally, without percent-decoding.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// A reason an endpoint address is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The scheme is missing or is not `unix` or `tcp`.
    #[error("endpoint address {0:?} must start with unix: or tcp://")]
    UnsupportedScheme(String),
    /// A `unix` address names a host, user or port.
    #[error("unix endpoint address {0:?} must not have an authority")]
    UnixAuthority(String),
    /// A `unix` path is not absolute.
    #[error("unix endpoint address {0:?} must have an absolute path")]
    RelativePath(String),
    /// The address has a query or fragment.
    #[error("endpoint address {0:?} must not have a query or fragment")]
    QueryOrFragment(String),
    /// A `tcp` address is not `tcp://<ip>:<port>`.
    #[error("tcp endpoint address {0:?} must be tcp://<ip>:<port> with no path")]
    InvalidTcpAddress(String),
}

/// Address the Workload API listens on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    /// A Unix domain socket path (absolute).
    Unix(PathBuf),
    /// A TCP address given as an IP literal and port.
    Tcp(SocketAddr),
}

impl EndpointAddress {
    /// Parses an address such as `unix:///run/twid/agent.sock` or `tcp://127.0.0.1:8081`.
    ///
    /// # Errors
    /// Returns the rule the address breaks.
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        if input.contains(['?', '#']) {
            return Err(EndpointError::QueryOrFragment(input.to_owned()));
        }
        let (scheme, rest) = input
            .split_once(':')
            .ok_or_else(|| EndpointError::UnsupportedScheme(input.to_owned()))?;
        if scheme.eq_ignore_ascii_case("unix") {
            parse_unix(input, rest)
        } else if scheme.eq_ignore_ascii_case("tcp") {
            parse_tcp(input, rest)
        } else {
            Err(EndpointError::UnsupportedScheme(input.to_owned()))
        }
    }
}

fn parse_unix(input: &str, rest: &str) -> Result<EndpointAddress, EndpointError> {
    let path = match rest.strip_prefix("//") {
        Some(after) if after.starts_with('/') => after,
        // `unix://` has neither an authority nor a path, and the path is what it lacks.
        Some("") => return Err(EndpointError::RelativePath(input.to_owned())),
        Some(_) => return Err(EndpointError::UnixAuthority(input.to_owned())),
        None => rest,
    };
    if !path.starts_with('/') || path.len() < 2 {
        return Err(EndpointError::RelativePath(input.to_owned()));
    }
    Ok(EndpointAddress::Unix(PathBuf::from(path)))
}

fn parse_tcp(input: &str, rest: &str) -> Result<EndpointAddress, EndpointError> {
    let invalid = || EndpointError::InvalidTcpAddress(input.to_owned());
    let authority = rest.strip_prefix("//").ok_or_else(invalid)?;
    // SocketAddr parsing accepts only IP literals with a port, so DNS names, userinfo,
    // missing ports and trailing paths all fail here.
    let addr = SocketAddr::from_str(authority).map_err(|_| invalid())?;
    Ok(EndpointAddress::Tcp(addr))
}

impl FromStr for EndpointAddress {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_forms() {
        // conformance: WE-07, WE-08, WE-09
        let unix = EndpointAddress::Unix(PathBuf::from("/run/agent.sock"));
        assert_eq!(
            EndpointAddress::parse("unix:///run/agent.sock"),
            Ok(unix.clone())
        );
        assert_eq!(
            EndpointAddress::parse("unix:/run/agent.sock"),
            Ok(unix.clone())
        );
        assert_eq!(
            EndpointAddress::parse("UNIX:///run/agent.sock"),
            Ok(unix.clone())
        );
        assert_eq!(unix.to_string(), "unix:///run/agent.sock");
        let tcp = EndpointAddress::parse("tcp://127.0.0.1:8000").unwrap();
        assert_eq!(tcp, EndpointAddress::Tcp("127.0.0.1:8000".parse().unwrap()));
        assert_eq!(tcp.to_string(), "tcp://127.0.0.1:8000");
        assert!(EndpointAddress::parse("tcp://[::1]:8000").is_ok());
    }

    #[test]
    fn rejects_invalid_forms() {
        // conformance: WE-07, WE-08, WE-09
        for input in [
            "/tmp/x.sock",
            "http://127.0.0.1:80",
            "unix://host/x",
            "unix://localhost/tmp/x.sock",
            "unix:x",
            "unix:relative/x",
            "unix:",
            "unix:///",
            "unix:///x?y",
            "unix:///x#y",
            "tcp://localhost:8000",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:8000/foo",
            "tcp://user@127.0.0.1:8000",
            "tcp:127.0.0.1:8000",
            "",
            "unix://",
        ] {
            assert!(
                EndpointAddress::parse(input).is_err(),
                "{input} should be rejected"
            );
        }
    }

    #[test]
    fn unix_without_path_names_the_path() {
        assert_eq!(
            EndpointAddress::parse("unix://"),
            Err(EndpointError::RelativePath("unix://".to_owned()))
        );
    }
}
