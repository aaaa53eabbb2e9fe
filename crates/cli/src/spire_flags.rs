//! Accepts SPIRE's single-dash flag spellings (`-spiffeID X`, `-socketPath=/p`) so that scripts
//! written for `spire-server` and `spire-agent` carry over, by rewriting them to our long flags
//! before clap parses the arguments.

use std::ffi::OsString;

/// SPIRE flag names and the twid flag each one means.
const SPIRE_FLAGS: &[(&str, &str)] = &[
    ("config", "config"),
    ("expandEnv", "expand-env"),
    ("socketPath", "socket-path"),
    ("spiffeID", "spiffe-id"),
    ("parentID", "parent-id"),
    ("selector", "selector"),
    ("x509SVIDTTL", "x509-svid-ttl"),
    ("jwtSVIDTTL", "jwt-svid-ttl"),
    ("dns", "dns-name"),
    ("federatesWith", "federates-with"),
    ("entryID", "entry-id"),
    ("entryExpiry", "entry-expiry"),
    ("admin", "admin"),
    ("downstream", "downstream"),
    ("hint", "hint"),
    ("output", "output"),
    ("ttl", "ttl"),
    ("audience", "audience"),
    ("write", "write"),
    ("svid", "svid"),
    ("format", "format"),
    ("shallow", "shallow"),
    ("daemon-mode", "daemon-mode"),
    ("id", "id"),
    ("path", "path"),
    ("trustDomain", "trust-domain"),
    ("bundleEndpointURL", "bundle-endpoint-url"),
    ("bundleEndpointProfile", "bundle-endpoint-profile"),
    ("endpointSpiffeID", "endpoint-spiffe-id"),
    ("trustDomainBundlePath", "trust-domain-bundle-path"),
];

/// Rewrites every known SPIRE-style flag in `args` to its twid spelling; other arguments pass
/// through unchanged.
pub(crate) fn translate(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter().map(translate_one).collect()
}

fn translate_one(arg: OsString) -> OsString {
    let Some(text) = arg.to_str() else {
        return arg;
    };
    let Some(flag) = text.strip_prefix('-').filter(|rest| !rest.starts_with('-')) else {
        return arg;
    };
    let (name, value) = match flag.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (flag, None),
    };
    match SPIRE_FLAGS.iter().find(|(spire, _)| *spire == name) {
        Some((_, ours)) => match value {
            Some(value) => OsString::from(format!("--{ours}={value}")),
            None => OsString::from(format!("--{ours}")),
        },
        None => arg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Vec<String> {
        translate(args.iter().map(OsString::from))
            .into_iter()
            .map(|arg| arg.into_string().unwrap())
            .collect()
    }

    #[test]
    fn rewrites_spire_spellings() {
        assert_eq!(
            run(&[
                "twid",
                "entry",
                "create",
                "-spiffeID",
                "spiffe://td/a",
                "-socketPath=/s"
            ]),
            [
                "twid",
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://td/a",
                "--socket-path=/s"
            ]
        );
    }

    #[test]
    fn leaves_other_arguments_alone() {
        assert_eq!(
            run(&["twid", "-h", "--spiffe-id", "-x"]),
            ["twid", "-h", "--spiffe-id", "-x"]
        );
    }
}
