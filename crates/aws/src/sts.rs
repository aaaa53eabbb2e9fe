//! The STS query API: `AssumeRoleWithWebIdentity` and `GetCallerIdentity`.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, header};
use http_body_util::Full;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::http::{Target, send};
use crate::sigv4;

/// The global STS endpoint, used when none is given.
pub const DEFAULT_STS_ENDPOINT: &str = "https://sts.amazonaws.com";

/// The STS API version of the query API.
const API_VERSION: &str = "2011-06-15";

/// The region that signs requests to endpoints whose host names no region, as the global
/// endpoint does.
const DEFAULT_REGION: &str = "us-east-1";

const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// A failed STS call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StsError {
    /// The endpoint is not an `http` or `https` URL with a host and no query.
    #[error(
        "invalid STS endpoint {endpoint:?}: expected an http or https URL such as {DEFAULT_STS_ENDPOINT}"
    )]
    InvalidEndpoint {
        /// The value given.
        endpoint: String,
    },
    /// A request parameter breaks an STS limit, so the request was not sent.
    #[error("invalid {parameter}: {reason}")]
    InvalidParameter {
        /// The parameter name.
        parameter: &'static str,
        /// The limit it breaks.
        reason: String,
    },
    /// STS returned an error response.
    #[error("STS {action} failed with {code}: {message} (request ID {request_id}, HTTP {status})")]
    Service {
        /// `AssumeRoleWithWebIdentity` or `GetCallerIdentity`.
        action: &'static str,
        /// The error code, such as `AccessDenied` or `InvalidIdentityToken`.
        code: String,
        /// The message STS sent.
        message: String,
        /// The STS request ID, or `unknown` when the response had none.
        request_id: String,
        /// The HTTP status.
        status: u16,
    },
    /// The request could not be sent or no complete response arrived.
    #[error("failed to reach STS at {endpoint}: {source}")]
    Network {
        /// The endpoint URL.
        endpoint: String,
        /// The connection, TLS or HTTP failure.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No response arrived in time.
    #[error("STS at {endpoint} did not respond within {after:?}")]
    Timeout {
        /// The endpoint URL.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// The response is not the XML document the action returns.
    #[error(
        "STS {action} returned an invalid response (HTTP {status}, request ID {request_id}): {reason}"
    )]
    InvalidResponse {
        /// The action called.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// The request ID, or `unknown`.
        request_id: String,
        /// Description of the problem.
        reason: String,
    },
}

impl StsError {
    /// Returns what an operator should check for a service error code, if the code is one
    /// of the web identity errors STS documents.
    pub fn hint(&self) -> Option<&'static str> {
        let Self::Service { code, .. } = self else {
            return None;
        };
        Some(match code.as_str() {
            "AccessDenied" => {
                "the role's trust policy does not allow this token: its <provider>:sub and \
                 <provider>:aud conditions must equal the SPIFFE ID and the audience (see \
                 `twid aws trust-policy`)"
            }
            "InvalidIdentityToken" => {
                "STS could not verify the token: the IAM OIDC provider's URL must equal the \
                 token's iss, and the discovery document and JWKS must be served over HTTPS"
            }
            "ExpiredTokenException" | "ExpiredToken" => {
                "the token expired before STS checked it: check the clock and the JWT-SVID TTL"
            }
            "IDPCommunicationError" => {
                "STS could not fetch the discovery document or JWKS: the issuer URL must be \
                 reachable from the internet"
            }
            "IDPRejectedClaim" => "the identity provider rejected a claim of the token",
            "InvalidParameterValue" | "ValidationError" => {
                "check --role-arn, --session-name and --duration"
            }
            "RegionDisabledException" => "STS is not activated in this region of the account",
            _ => return None,
        })
    }
}

/// The parameters of `AssumeRoleWithWebIdentity`.
#[derive(Clone)]
pub struct AssumeRoleRequest {
    /// The ARN of the role to assume.
    pub role_arn: String,
    /// The role session name: 2 to 64 characters of letters, digits and `_+=,.@-`.
    pub session_name: String,
    /// The JWT-SVID, a bearer credential that is never logged.
    pub web_identity_token: String,
    /// The session duration, 15 minutes to 12 hours in whole seconds, or `None` for the
    /// STS default of one hour.
    pub duration: Option<Duration>,
}

impl fmt::Debug for AssumeRoleRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRoleRequest")
            .field("role_arn", &self.role_arn)
            .field("session_name", &self.session_name)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// Temporary AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key ID.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// The expiry as RFC 3339, as STS sent it.
    pub expiration: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Returns the JSON that an AWS CLI or SDK `credential_process` program prints.
    pub fn credential_process_json(&self) -> Value {
        json!({
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": self.expiration,
        })
    }
}

/// The result of `AssumeRoleWithWebIdentity`.
#[derive(Debug, Clone)]
pub struct AssumedRole {
    /// The temporary credentials.
    pub credentials: Credentials,
    /// The ARN of the assumed role session.
    pub assumed_role_arn: String,
    /// The assumed role ID, `role-id:session-name`.
    pub assumed_role_id: String,
    /// The token's `sub` as STS read it, if returned.
    pub subject: Option<String>,
    /// The token's `aud` as STS read it, if returned.
    pub audience: Option<String>,
    /// The STS request ID.
    pub request_id: String,
}

/// The result of `GetCallerIdentity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerIdentity {
    /// The AWS account ID.
    pub account: String,
    /// The ARN of the caller.
    pub arn: String,
    /// The unique ID of the caller.
    pub user_id: String,
    /// The STS request ID.
    pub request_id: String,
}

/// A client of one STS endpoint.
#[derive(Debug, Clone)]
pub struct StsClient {
    endpoint: String,
    target: Target,
    region: String,
    timeout: Duration,
}

impl StsClient {
    /// Creates a client for `endpoint`, an `http` or `https` URL. Requests are signed for
    /// the region in a `sts.<region>.amazonaws.com` host name, otherwise for `us-east-1`.
    ///
    /// # Errors
    /// Returns [`StsError::InvalidEndpoint`] for anything but an http or https URL with a
    /// host and no query.
    pub fn new(endpoint: &str) -> Result<Self, StsError> {
        let invalid = || StsError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
        };
        let uri: Uri = endpoint.parse().map_err(|_| invalid())?;
        let target = Target::parse(&uri).ok_or_else(invalid)?;
        let region = region_from_host(&target.host)
            .unwrap_or(DEFAULT_REGION)
            .to_owned();
        Ok(Self {
            endpoint: endpoint.to_owned(),
            target,
            region,
            timeout: Duration::from_secs(30),
        })
    }

    /// Sets the region that signs `GetCallerIdentity`.
    #[must_use]
    pub fn with_region(mut self, region: &str) -> Self {
        region.clone_into(&mut self.region);
        self
    }

    /// Sets how long a call may take, connection included. The default is 30 seconds.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Returns the endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Returns the region that signs requests.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Exchanges a JWT-SVID for temporary credentials of a role.
    ///
    /// # Errors
    /// Returns [`StsError::InvalidParameter`] before sending for a session name or duration
    /// outside the STS limits, [`StsError::Service`] for an STS error response (with its
    /// code and request ID), [`StsError::Network`], [`StsError::Timeout`], and
    /// [`StsError::InvalidResponse`].
    pub async fn assume_role_with_web_identity(
        &self,
        request: &AssumeRoleRequest,
    ) -> Result<AssumedRole, StsError> {
        const ACTION: &str = "AssumeRoleWithWebIdentity";
        check_session_name(&request.session_name)?;
        let duration = request.duration.map(check_duration).transpose()?;
        if request.role_arn.is_empty() {
            return Err(StsError::InvalidParameter {
                parameter: "role ARN",
                reason: "it must not be empty".to_owned(),
            });
        }
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", ACTION)
            .append_pair("Version", API_VERSION)
            .append_pair("RoleArn", &request.role_arn)
            .append_pair("RoleSessionName", &request.session_name)
            .append_pair("WebIdentityToken", &request.web_identity_token);
        if let Some(seconds) = duration {
            form.append_pair("DurationSeconds", &seconds.to_string());
        }
        let body = form.finish();
        tracing::debug!(
            endpoint = %self.endpoint,
            role_arn = %request.role_arn,
            session_name = %request.session_name,
            "calling STS AssumeRoleWithWebIdentity"
        );
        let http_request = self.request_builder().body(Full::new(Bytes::from(body)));
        let response = self.call(ACTION, http_request).await?;
        parse_assume_role(&response)
    }

    /// Returns the identity that `credentials` belong to, signing the request with SigV4.
    ///
    /// # Errors
    /// As [`StsClient::assume_role_with_web_identity`], without the parameter checks.
    pub async fn get_caller_identity(
        &self,
        credentials: &Credentials,
    ) -> Result<CallerIdentity, StsError> {
        const ACTION: &str = "GetCallerIdentity";
        let body = format!("Action={ACTION}&Version={API_VERSION}");
        let now = OffsetDateTime::now_utc();
        let date = sigv4::amz_date(now);
        let headers = [
            ("content-type", FORM_CONTENT_TYPE),
            ("host", self.target.authority.as_str()),
            ("x-amz-date", date.as_str()),
            ("x-amz-security-token", credentials.session_token.as_str()),
        ];
        let authorization = sigv4::authorization(
            &sigv4::SignableRequest {
                method: "POST",
                path: &self.target.path,
                canonical_query: "",
                headers: &headers,
                body: body.as_bytes(),
            },
            &sigv4::SigningParams {
                access_key_id: &credentials.access_key_id,
                secret_access_key: &credentials.secret_access_key,
                region: &self.region,
                service: "sts",
                time: now,
            },
        );
        let http_request = self
            .request_builder()
            .header("x-amz-date", date)
            .header("x-amz-security-token", &credentials.session_token)
            .header(header::AUTHORIZATION, authorization)
            .body(Full::new(Bytes::from(body)));
        let response = self.call(ACTION, http_request).await?;
        parse_caller_identity(&response)
    }

    fn request_builder(&self) -> http::request::Builder {
        Request::builder()
            .method(Method::POST)
            .uri(self.target.path.as_str())
            .header(header::HOST, &self.target.authority)
            .header(header::CONTENT_TYPE, FORM_CONTENT_TYPE)
            .header(header::ACCEPT, "text/xml")
    }

    async fn call(
        &self,
        action: &'static str,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Response, StsError> {
        // Building fails only for a header value with control characters.
        let request = request.map_err(|error| StsError::InvalidParameter {
            parameter: "request header",
            reason: error.to_string(),
        })?;
        let (status, headers, body) =
            tokio::time::timeout(self.timeout, send(&self.target, request))
                .await
                .map_err(|_| StsError::Timeout {
                    endpoint: self.endpoint.clone(),
                    after: self.timeout,
                })?
                .map_err(|error| StsError::Network {
                    endpoint: self.endpoint.clone(),
                    source: Box::new(error),
                })?;
        let response = Response {
            action,
            status: status.as_u16(),
            header_request_id: header_request_id(&headers),
            body,
        };
        if !status.is_success() {
            return Err(response.error());
        }
        Ok(response)
    }
}

/// A complete HTTP response from STS.
struct Response {
    action: &'static str,
    status: u16,
    header_request_id: Option<String>,
    body: Bytes,
}

impl Response {
    fn invalid(&self, request_id: Option<String>, reason: impl Into<String>) -> StsError {
        StsError::InvalidResponse {
            action: self.action,
            status: self.status,
            request_id: request_id
                .or_else(|| self.header_request_id.clone())
                .unwrap_or_else(|| "unknown".to_owned()),
            reason: reason.into(),
        }
    }

    fn document(&self) -> Result<roxmltree::Document<'_>, StsError> {
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| self.invalid(None, "the body is not UTF-8"))?;
        roxmltree::Document::parse(text)
            .map_err(|error| self.invalid(None, format!("the body is not XML ({error})")))
    }

    fn request_id(&self, document: &roxmltree::Document<'_>) -> Option<String> {
        find_text(document.root(), "RequestId").or_else(|| self.header_request_id.clone())
    }

    /// Turns an error response into [`StsError::Service`], or [`StsError::InvalidResponse`]
    /// when it carries no error code.
    fn error(&self) -> StsError {
        let document = match self.document() {
            Ok(document) => document,
            Err(error) => return error,
        };
        let request_id = self.request_id(&document);
        let Some(error) = find(document.root(), "Error") else {
            return self.invalid(request_id, "the error response has no Error element");
        };
        let Some(code) = find_text(error, "Code") else {
            return self.invalid(request_id, "the error response has no Code");
        };
        StsError::Service {
            action: self.action,
            code,
            message: find_text(error, "Message").unwrap_or_default(),
            request_id: request_id.unwrap_or_else(|| "unknown".to_owned()),
            status: self.status,
        }
    }
}

fn parse_assume_role(response: &Response) -> Result<AssumedRole, StsError> {
    let document = response.document()?;
    let request_id = response.request_id(&document);
    let missing = |what: &str| response.invalid(request_id.clone(), format!("{what} is missing"));
    let result = find(document.root(), "AssumeRoleWithWebIdentityResult")
        .ok_or_else(|| missing("AssumeRoleWithWebIdentityResult"))?;
    let credentials = find(result, "Credentials").ok_or_else(|| missing("Credentials"))?;
    let field = |name: &str| find_text(credentials, name).ok_or_else(|| missing(name));
    let expiration = field("Expiration")?;
    if OffsetDateTime::parse(&expiration, &Rfc3339).is_err() {
        return Err(response.invalid(
            request_id,
            format!("Expiration {expiration:?} is not an RFC 3339 time"),
        ));
    }
    let credentials = Credentials {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        expiration,
    };
    let user = find(result, "AssumedRoleUser").ok_or_else(|| missing("AssumedRoleUser"))?;
    Ok(AssumedRole {
        credentials,
        assumed_role_arn: find_text(user, "Arn").ok_or_else(|| missing("AssumedRoleUser Arn"))?,
        assumed_role_id: find_text(user, "AssumedRoleId").unwrap_or_default(),
        subject: find_text(result, "SubjectFromWebIdentityToken"),
        audience: find_text(result, "Audience"),
        request_id: request_id.unwrap_or_else(|| "unknown".to_owned()),
    })
}

fn parse_caller_identity(response: &Response) -> Result<CallerIdentity, StsError> {
    let document = response.document()?;
    let request_id = response.request_id(&document);
    let missing = |what: &str| response.invalid(request_id.clone(), format!("{what} is missing"));
    let result = find(document.root(), "GetCallerIdentityResult")
        .ok_or_else(|| missing("GetCallerIdentityResult"))?;
    Ok(CallerIdentity {
        account: find_text(result, "Account").ok_or_else(|| missing("Account"))?,
        arn: find_text(result, "Arn").ok_or_else(|| missing("Arn"))?,
        user_id: find_text(result, "UserId").unwrap_or_default(),
        request_id: request_id.unwrap_or_else(|| "unknown".to_owned()),
    })
}

/// Returns the first descendant element of `node` with local name `name`.
fn find<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.descendants()
        .find(|child| child.is_element() && child.tag_name().name() == name)
}

/// Returns the trimmed text of the first descendant element named `name`, if non-empty.
fn find_text(node: roxmltree::Node<'_, '_>, name: &str) -> Option<String> {
    let text = find(node, name)?.text()?.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-amzn-requestid")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn region_from_host(host: &str) -> Option<&str> {
    let rest = host.strip_prefix("sts.")?;
    let (region, suffix) = rest.split_once('.')?;
    (suffix.starts_with("amazonaws.") && !region.is_empty()).then_some(region)
}

fn check_session_name(name: &str) -> Result<(), StsError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c);
    if (2..=64).contains(&name.len()) && name.chars().all(allowed) {
        return Ok(());
    }
    Err(StsError::InvalidParameter {
        parameter: "session name",
        reason: format!("{name:?} must be 2 to 64 characters of letters, digits and _+=,.@-"),
    })
}

fn check_duration(duration: Duration) -> Result<u64, StsError> {
    let seconds = duration.as_secs();
    if duration.subsec_nanos() == 0 && (900..=43_200).contains(&seconds) {
        return Ok(seconds);
    }
    Err(StsError::InvalidParameter {
        parameter: "duration",
        reason: format!("{duration:?} must be whole seconds from 15m to 12h"),
    })
}

#[cfg(test)]
mod tests;
