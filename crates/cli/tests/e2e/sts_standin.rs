//! A stand-in STS on 127.0.0.1 that, unlike moto, checks what AWS checks: the JWT-SVID's
//! signature against the trust domain's JWKS, `exp`, `aud`, `iss` against the OIDC provider,
//! and the role trust policy's `sub` and `aud` conditions. `GetCallerIdentity` requests must
//! carry a SigV4 signature made with credentials this stand-in issued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use twid_spiffe::{JwtBundleSet, JwtError, JwtSvid};

/// What the stand-in trusts, as an IAM OIDC provider plus one role would.
pub(crate) struct StandInPolicy {
    /// The JWT keys of the trust domain, as the OIDC provider's JWKS.
    pub bundles: JwtBundleSet,
    /// The role's trust policy, as `twid aws trust-policy` prints it.
    pub trust_policy: serde_json::Value,
    /// The role that trust policy belongs to.
    pub role_arn: String,
    /// Whether a token must carry `iss` = `https://<provider>`.
    pub require_issuer: bool,
    /// Added to the real clock when checking `exp`, to simulate an expired token.
    pub clock_offset: Duration,
}

struct Session {
    secret_access_key: String,
    session_token: String,
    arn: String,
    user_id: String,
}

struct StandInState {
    policy: StandInPolicy,
    provider: String,
    sub: String,
    aud: String,
    sessions: Mutex<HashMap<String, Session>>,
    next_id: AtomicU64,
}

/// A running stand-in STS, stopped when dropped.
pub(crate) struct StandInSts {
    pub address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StandInSts {
    pub(crate) fn start(policy: StandInPolicy) -> Self {
        let statement = &policy.trust_policy["Statement"][0];
        let federated = statement["Principal"]["Federated"].as_str().unwrap();
        let provider = federated
            .split_once(":oidc-provider/")
            .unwrap()
            .1
            .to_owned();
        let equals = &statement["Condition"]["StringEquals"];
        let sub = equals[format!("{provider}:sub")]
            .as_str()
            .unwrap()
            .to_owned();
        let aud = equals[format!("{provider}:aud")]
            .as_str()
            .unwrap()
            .to_owned();
        let state = Arc::new(StandInState {
            policy,
            provider,
            sub,
            aud,
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Router::new().route("/", post(handle)).with_state(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            address,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }
}

impl Drop for StandInSts {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(
    State(state): State<Arc<StandInState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let request_id = format!("standin-{}", state.next_id.fetch_add(1, Ordering::Relaxed));
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if form.get("Version").map(String::as_str) != Some("2011-06-15") {
        return error(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "missing Version",
            &request_id,
        );
    }
    let result = match form.get("Action").map(String::as_str) {
        Some("AssumeRoleWithWebIdentity") => assume_role(&state, &form, &request_id),
        Some("GetCallerIdentity") => caller_identity(&state, &headers, &body, &request_id),
        _ => Err((
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "unknown Action".to_owned(),
        )),
    };
    match result {
        Ok(xml) => (StatusCode::OK, [("content-type", "text/xml")], xml).into_response(),
        Err((status, code, message)) => error(status, code, &message, &request_id),
    }
}

type Rejection = (StatusCode, &'static str, String);

fn assume_role(
    state: &StandInState,
    form: &HashMap<String, String>,
    request_id: &str,
) -> Result<String, Rejection> {
    let policy = &state.policy;
    let bad = |code, message: String| (StatusCode::BAD_REQUEST, code, message);
    let token = form
        .get("WebIdentityToken")
        .ok_or_else(|| bad("MissingParameter", "WebIdentityToken".to_owned()))?;
    let now = SystemTime::now() + policy.clock_offset;
    let svid = JwtSvid::parse_and_validate(token, &policy.bundles, &[&state.aud], now).map_err(
        |error| match error {
            JwtError::Expired { .. } => bad(
                "ExpiredTokenException",
                "Token expired: current date/time must be before the expiration date/time"
                    .to_owned(),
            ),
            JwtError::AudienceMismatch { .. } => bad(
                "InvalidIdentityToken",
                "Incorrect token audience".to_owned(),
            ),
            other => bad(
                "InvalidIdentityToken",
                format!("Couldn't verify the token: {other}"),
            ),
        },
    )?;
    if policy.require_issuer {
        let expected = format!("https://{}", state.provider);
        let issuer = svid.claims.get("iss").and_then(|iss| iss.as_str());
        if issuer != Some(expected.as_str()) {
            return Err(bad(
                "InvalidIdentityToken",
                format!("No OpenIDConnect provider found for issuer {issuer:?}"),
            ));
        }
    }
    let role_arn = form.get("RoleArn").cloned().unwrap_or_default();
    if role_arn != policy.role_arn || svid.spiffe_id.as_str() != state.sub {
        return Err((
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity".to_owned(),
        ));
    }
    let session_name = form.get("RoleSessionName").cloned().unwrap_or_default();
    let seconds: i64 = form
        .get("DurationSeconds")
        .map_or(Ok(3600), |value| value.parse())
        .map_err(|_| bad("ValidationError", "DurationSeconds".to_owned()))?;
    let id = request_id.trim_start_matches("standin-");
    let access_key_id = format!("ASIASTANDIN{id:0>9}");
    let secret_access_key = format!("standin-secret-{id}-{}", random_hex());
    let session_token = format!("standin-session-{id}-{}", random_hex());
    let role_name = role_arn.rsplit('/').next().unwrap_or_default();
    let account = role_arn.split(':').nth(4).unwrap_or_default();
    let arn = format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}");
    let user_id = format!("AROASTANDIN:{session_name}");
    let expiration = (OffsetDateTime::now_utc() + time::Duration::seconds(seconds))
        .replace_nanosecond(0)
        .unwrap()
        .format(&Rfc3339)
        .unwrap();
    state.sessions.lock().unwrap().insert(
        access_key_id.clone(),
        Session {
            secret_access_key: secret_access_key.clone(),
            session_token: session_token.clone(),
            arn: arn.clone(),
            user_id: user_id.clone(),
        },
    );
    Ok(format!(
        r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>{sub}</SubjectFromWebIdentityToken>
    <Audience>{aud}</Audience>
    <AssumedRoleUser><Arn>{arn}</Arn><AssumedRoleId>{user_id}</AssumedRoleId></AssumedRoleUser>
    <Credentials>
      <SessionToken>{session_token}</SessionToken>
      <SecretAccessKey>{secret_access_key}</SecretAccessKey>
      <Expiration>{expiration}</Expiration>
      <AccessKeyId>{access_key_id}</AccessKeyId>
    </Credentials>
    <Provider>arn:aws:iam::{account}:oidc-provider/{provider}</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        sub = svid.spiffe_id,
        aud = state.aud,
        provider = state.provider,
    ))
}

fn caller_identity(
    state: &StandInState,
    headers: &HeaderMap,
    body: &str,
    request_id: &str,
) -> Result<String, Rejection> {
    let denied = |message: &str| {
        (
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            message.to_owned(),
        )
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization").ok_or_else(|| denied("no Authorization"))?;
    let credential = authorization
        .split_once("Credential=")
        .and_then(|(_, rest)| rest.split('/').next())
        .ok_or_else(|| denied("no Credential"))?;
    let signed_names = authorization
        .split_once("SignedHeaders=")
        .and_then(|(_, rest)| rest.split(',').next())
        .ok_or_else(|| denied("no SignedHeaders"))?;
    let region = authorization
        .split('/')
        .nth(2)
        .ok_or_else(|| denied("no region in the scope"))?;
    let date = header("x-amz-date").ok_or_else(|| denied("no x-amz-date"))?;
    let time = time::PrimitiveDateTime::parse(
        &date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map_err(|_| denied("invalid x-amz-date"))?
    .assume_utc();
    let sessions = state.sessions.lock().unwrap();
    let session = sessions
        .get(credential)
        .ok_or_else(|| denied("unknown access key"))?;
    if header("x-amz-security-token").as_deref() != Some(session.session_token.as_str()) {
        return Err(denied("wrong session token"));
    }
    let mut values = Vec::new();
    for name in signed_names.split(';') {
        values.push((
            name,
            header(name).ok_or_else(|| denied("signed header missing"))?,
        ));
    }
    let signed: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let expected = twid_aws::sigv4::authorization(
        &twid_aws::sigv4::SignableRequest {
            method: "POST",
            path: "/",
            canonical_query: "",
            headers: &signed,
            body: body.as_bytes(),
        },
        &twid_aws::sigv4::SigningParams {
            access_key_id: credential,
            secret_access_key: &session.secret_access_key,
            region,
            service: "sts",
            time,
        },
    );
    if expected != authorization {
        return Err(denied("The request signature we calculated does not match"));
    }
    let account = session.arn.split(':').nth(4).unwrap_or_default();
    Ok(format!(
        r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>{arn}</Arn>
    <UserId>{user_id}</UserId>
    <Account>{account}</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#,
        arn = session.arn,
        user_id = session.user_id,
    ))
}

fn error(status: StatusCode, code: &str, message: &str, request_id: &str) -> Response {
    let xml = format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>{request_id}</RequestId>
</ErrorResponse>"#
    );
    (status, [("content-type", "text/xml")], xml).into_response()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut bytes))
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
