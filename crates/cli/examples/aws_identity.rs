//! Gets AWS credentials for a workload without a stored secret, from application code.
//!
//! The program fetches a JWT-SVID for `sts.amazonaws.com` from the SPIFFE Workload API,
//! exchanges it for temporary credentials with STS `AssumeRoleWithWebIdentity`, and prints
//! the caller identity that STS `GetCallerIdentity` returns for those credentials.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///tmp/twid-agent/public/api.sock \
//!     cargo run -p twid --example aws_identity -- arn:aws:iam::123456789012:role/app
//! ```
//!
//! `AWS_ENDPOINT_URL_STS` overrides the STS endpoint (default `https://sts.amazonaws.com`),
//! as it does for the AWS SDKs.

use std::path::PathBuf;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::transport::Endpoint;
use twid_aws::{AssumeRoleRequest, DEFAULT_STS_ENDPOINT, StsClient};
use twid_proto::workload::JwtsvidRequest;
use twid_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

const AUDIENCE: &str = "sts.amazonaws.com";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let role_arn = std::env::args()
        .nth(1)
        .context("usage: aws_identity ROLE_ARN")?;
    let socket = workload_socket()?;
    let sts_endpoint =
        std::env::var("AWS_ENDPOINT_URL_STS").unwrap_or_else(|_| DEFAULT_STS_ENDPOINT.to_owned());

    let (spiffe_id, token) = fetch_jwt_svid(socket).await?;
    println!("JWT-SVID for {spiffe_id}");

    let sts = StsClient::new(&sts_endpoint)?;
    let role = sts
        .assume_role_with_web_identity(&AssumeRoleRequest {
            role_arn,
            session_name: "aws-identity-example".to_owned(),
            web_identity_token: token,
            duration: None,
        })
        .await?;
    println!("Assumed role:  {}", role.assumed_role_arn);
    println!("Expires:       {}", role.credentials.expiration);

    let identity = sts.get_caller_identity(&role.credentials).await?;
    println!("Account:       {}", identity.account);
    println!("Caller ARN:    {}", identity.arn);
    println!("User ID:       {}", identity.user_id);
    Ok(())
}

/// Reads the Workload API socket from `SPIFFE_ENDPOINT_SOCKET` (`unix:///path`).
fn workload_socket() -> anyhow::Result<PathBuf> {
    let value = std::env::var("SPIFFE_ENDPOINT_SOCKET")
        .context("SPIFFE_ENDPOINT_SOCKET is not set; set it to unix:///path/to/agent.sock")?;
    match twid_spiffe::EndpointAddress::parse(&value)? {
        twid_spiffe::EndpointAddress::Unix(path) => Ok(path),
        _ => anyhow::bail!("SPIFFE_ENDPOINT_SOCKET={value} is not a unix:// address"),
    }
}

/// Fetches the caller's first JWT-SVID for [`AUDIENCE`] and returns its SPIFFE ID and token.
async fn fetch_jwt_svid(socket: PathBuf) -> anyhow::Result<(String, String)> {
    let connector = tower::service_fn(move |_| {
        let socket = socket.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(&socket).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI host is never used: the connector above dials the Unix socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(connector)
        .await
        .context("failed to connect to the Workload API")?;
    let mut client =
        SpiffeWorkloadApiClient::with_interceptor(channel, |mut request: tonic::Request<()>| {
            // The Workload API rejects calls without this header.
            request.metadata_mut().insert(
                twid_proto::WORKLOAD_API_HEADER,
                MetadataValue::from_static("true"),
            );
            Ok(request)
        });
    let response = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![AUDIENCE.to_owned()],
            spiffe_id: String::new(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("FetchJWTSVID failed: {}", status.message()))?
        .into_inner();
    let svid = response
        .svids
        .into_iter()
        .next()
        .context("the Workload API returned no JWT-SVID")?;
    Ok((svid.spiffe_id, svid.svid))
}
