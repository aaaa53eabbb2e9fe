use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

use super::*;

const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app";

const SUCCESS_XML: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>spiffe://example.org/app</SubjectFromWebIdentityToken>
    <Audience>sts.amazonaws.com</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/app/session-1</Arn>
      <AssumedRoleId>AROAEXAMPLE:session-1</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>session-token-value</SessionToken>
      <SecretAccessKey>secret-key-value</SecretAccessKey>
      <Expiration>2030-01-01T01:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>req-success-1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#;

fn error_xml(code: &str, message: &str) -> String {
    format!(
        r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error>
  <RequestId>req-error-7</RequestId>
</ErrorResponse>"#
    )
}

/// A canned STS on 127.0.0.1 that records the last request body and headers.
struct Canned {
    address: SocketAddr,
    last_body: Arc<Mutex<String>>,
    last_headers: Arc<Mutex<HeaderMap>>,
}

async fn canned(status: StatusCode, body: String) -> Canned {
    let last_body = Arc::new(Mutex::new(String::new()));
    let last_headers = Arc::new(Mutex::new(HeaderMap::new()));
    let (record_body, record_headers) = (last_body.clone(), last_headers.clone());
    let app = Router::new().route(
        "/",
        post(move |headers: HeaderMap, request_body: String| {
            *record_body.lock().unwrap() = request_body;
            *record_headers.lock().unwrap() = headers;
            let body = body.clone();
            async move { (status, [("x-amzn-requestid", "req-header-3")], body).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Canned {
        address,
        last_body,
        last_headers,
    }
}

fn request() -> AssumeRoleRequest {
    AssumeRoleRequest {
        role_arn: ROLE_ARN.to_owned(),
        session_name: "session-1".to_owned(),
        web_identity_token: "header.claims+/=.signature".to_owned(),
        duration: Some(Duration::from_secs(900)),
    }
}

fn client(address: SocketAddr) -> StsClient {
    StsClient::new(&format!("http://{address}")).unwrap()
}

fn form(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

#[tokio::test]
async fn assume_role_parses_credentials() {
    let sts = canned(StatusCode::OK, SUCCESS_XML.to_owned()).await;
    let role = client(sts.address)
        .assume_role_with_web_identity(&request())
        .await
        .unwrap();
    assert_eq!(role.credentials.access_key_id, "ASIAEXAMPLE");
    assert_eq!(role.credentials.secret_access_key, "secret-key-value");
    assert_eq!(role.credentials.session_token, "session-token-value");
    assert_eq!(role.credentials.expiration, "2030-01-01T01:00:00Z");
    assert_eq!(
        role.assumed_role_arn,
        "arn:aws:sts::123456789012:assumed-role/app/session-1"
    );
    assert_eq!(role.subject.as_deref(), Some("spiffe://example.org/app"));
    assert_eq!(role.audience.as_deref(), Some("sts.amazonaws.com"));
    assert_eq!(role.request_id, "req-success-1");

    let sent = form(&sts.last_body.lock().unwrap());
    let value = |name: &str| {
        sent.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(
        value("Action").as_deref(),
        Some("AssumeRoleWithWebIdentity")
    );
    assert_eq!(value("Version").as_deref(), Some("2011-06-15"));
    assert_eq!(value("RoleArn").as_deref(), Some(ROLE_ARN));
    assert_eq!(value("RoleSessionName").as_deref(), Some("session-1"));
    assert_eq!(
        value("WebIdentityToken").as_deref(),
        Some("header.claims+/=.signature")
    );
    assert_eq!(value("DurationSeconds").as_deref(), Some("900"));
    let headers = sts.last_headers.lock().unwrap();
    assert_eq!(headers["host"], sts.address.to_string());
    assert!(headers.get("authorization").is_none());
}

#[test]
fn credential_process_json_has_version_1() {
    let credentials = Credentials {
        access_key_id: "AKID".to_owned(),
        secret_access_key: "SECRET".to_owned(),
        session_token: "TOKEN".to_owned(),
        expiration: "2030-01-01T00:00:00Z".to_owned(),
    };
    let json = credentials.credential_process_json();
    assert_eq!(json["Version"], 1);
    assert_eq!(json["AccessKeyId"], "AKID");
    assert_eq!(json["SecretAccessKey"], "SECRET");
    assert_eq!(json["SessionToken"], "TOKEN");
    assert_eq!(json["Expiration"], "2030-01-01T00:00:00Z");
    assert!(!format!("{credentials:?}").contains("SECRET"));
    assert!(!format!("{credentials:?}").contains("TOKEN"));
}

#[tokio::test]
async fn service_errors_keep_code_and_request_id() {
    for (code, hint_word) in [
        ("AccessDenied", "trust policy"),
        ("InvalidIdentityToken", "verify"),
        ("ExpiredTokenException", "expired"),
    ] {
        let sts = canned(StatusCode::BAD_REQUEST, error_xml(code, "details here")).await;
        let error = client(sts.address)
            .assume_role_with_web_identity(&request())
            .await
            .unwrap_err();
        let StsError::Service {
            code: got_code,
            message,
            request_id,
            status,
            ..
        } = &error
        else {
            panic!("expected a service error, got {error:?}");
        };
        assert_eq!(got_code, code);
        assert_eq!(message, "details here");
        assert_eq!(request_id, "req-error-7");
        assert_eq!(*status, 400);
        let line = error.to_string();
        assert!(line.contains(code), "{line}");
        assert!(line.contains("req-error-7"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        assert!(error.hint().unwrap().contains(hint_word), "{code}");
    }
}

#[tokio::test]
async fn non_xml_error_is_invalid_response() {
    let sts = canned(StatusCode::BAD_GATEWAY, "<html>bad gateway".to_owned()).await;
    let error = client(sts.address)
        .assume_role_with_web_identity(&request())
        .await
        .unwrap_err();
    let StsError::InvalidResponse {
        status, request_id, ..
    } = &error
    else {
        panic!("expected an invalid response, got {error:?}");
    };
    assert_eq!(*status, 502);
    assert_eq!(request_id, "req-header-3");
}

#[tokio::test]
async fn success_without_credentials_is_invalid() {
    let body = SUCCESS_XML.replace("<AccessKeyId>ASIAEXAMPLE</AccessKeyId>", "");
    let sts = canned(StatusCode::OK, body).await;
    let error = client(sts.address)
        .assume_role_with_web_identity(&request())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, StsError::InvalidResponse { reason, .. } if reason.contains("AccessKeyId")),
        "{error:?}"
    );
}

#[tokio::test]
async fn refused_connection_is_network_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let error = client(address)
        .assume_role_with_web_identity(&request())
        .await
        .unwrap_err();
    assert!(matches!(error, StsError::Network { .. }), "{error:?}");
    assert!(error.to_string().contains(&address.to_string()));
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (_stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let error = client(address)
        .with_timeout(Duration::from_millis(300))
        .assume_role_with_web_identity(&request())
        .await
        .unwrap_err();
    assert!(matches!(error, StsError::Timeout { .. }), "{error:?}");
    holder.abort();
}

#[test]
fn parameters_checked_before_sending() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Port 9 on loopback: nothing is sent, because the checks fail first.
    let sts = StsClient::new("http://127.0.0.1:9").unwrap();
    let cases = [
        AssumeRoleRequest {
            session_name: "x".to_owned(),
            ..request()
        },
        AssumeRoleRequest {
            session_name: "has space".to_owned(),
            ..request()
        },
        AssumeRoleRequest {
            duration: Some(Duration::from_secs(899)),
            ..request()
        },
        AssumeRoleRequest {
            duration: Some(Duration::from_secs(43_201)),
            ..request()
        },
        AssumeRoleRequest {
            role_arn: String::new(),
            ..request()
        },
    ];
    for case in cases {
        let error = runtime
            .block_on(sts.assume_role_with_web_identity(&case))
            .unwrap_err();
        assert!(
            matches!(error, StsError::InvalidParameter { .. }),
            "{case:?}: {error:?}"
        );
    }
}

#[test]
fn endpoint_parsing_and_region() {
    for bad in [
        "sts.amazonaws.com",
        "ftp://host",
        "http://",
        "https://h/?a=b",
        "",
    ] {
        assert!(
            matches!(StsClient::new(bad), Err(StsError::InvalidEndpoint { .. })),
            "{bad:?} accepted"
        );
    }
    assert_eq!(
        StsClient::new(DEFAULT_STS_ENDPOINT).unwrap().region(),
        "us-east-1"
    );
    assert_eq!(
        StsClient::new("https://sts.eu-west-1.amazonaws.com")
            .unwrap()
            .region(),
        "eu-west-1"
    );
    assert_eq!(
        StsClient::new("http://127.0.0.1:5000")
            .unwrap()
            .with_region("ap-south-1")
            .region(),
        "ap-south-1"
    );
}

const IDENTITY_XML: &str = r#"<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:sts::123456789012:assumed-role/app/session-1</Arn>
    <UserId>AROAEXAMPLE:session-1</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>req-identity-2</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"#;

#[tokio::test]
async fn caller_identity_is_signed() {
    let sts = canned(StatusCode::OK, IDENTITY_XML.to_owned()).await;
    let credentials = Credentials {
        access_key_id: "ASIAEXAMPLE".to_owned(),
        secret_access_key: "secret-key-value".to_owned(),
        session_token: "session-token-value".to_owned(),
        expiration: "2030-01-01T01:00:00Z".to_owned(),
    };
    let identity = client(sts.address)
        .get_caller_identity(&credentials)
        .await
        .unwrap();
    assert_eq!(identity.account, "123456789012");
    assert_eq!(
        identity.arn,
        "arn:aws:sts::123456789012:assumed-role/app/session-1"
    );
    assert_eq!(identity.user_id, "AROAEXAMPLE:session-1");
    assert_eq!(identity.request_id, "req-identity-2");

    // Recompute the signature from what arrived, with the secret the server would hold.
    let headers = sts.last_headers.lock().unwrap().clone();
    let body = sts.last_body.lock().unwrap().clone();
    let text = |name: &str| headers[name].to_str().unwrap().to_owned();
    let date = text("x-amz-date");
    let time = time::PrimitiveDateTime::parse(
        &date,
        time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .unwrap()
    .assume_utc();
    let signed = [
        ("content-type", text("content-type")),
        ("host", text("host")),
        ("x-amz-date", date.clone()),
        ("x-amz-security-token", text("x-amz-security-token")),
    ];
    let signed: Vec<(&str, &str)> = signed.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let expected = sigv4::authorization(
        &sigv4::SignableRequest {
            method: "POST",
            path: "/",
            canonical_query: "",
            headers: &signed,
            body: body.as_bytes(),
        },
        &sigv4::SigningParams {
            access_key_id: "ASIAEXAMPLE",
            secret_access_key: "secret-key-value",
            region: "us-east-1",
            service: "sts",
            time,
        },
    );
    assert_eq!(text("authorization"), expected);
    assert_eq!(text("x-amz-security-token"), "session-token-value");
    assert_eq!(body, "Action=GetCallerIdentity&Version=2011-06-15");
}

/// An https endpoint whose certificate no public root signed must fail the handshake,
/// which shows that TLS is used and the peer is verified.
#[tokio::test]
async fn https_rejects_untrusted_certificate() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        acceptor.accept(stream).await.is_ok()
    });

    let error = StsClient::new(&format!("https://127.0.0.1:{port}"))
        .unwrap()
        .assume_role_with_web_identity(&request())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, StsError::Network { .. }), "{error:?}");
    assert!(
        text.contains("TLS handshake with 127.0.0.1 failed"),
        "{text}"
    );
    assert!(!server.await.unwrap(), "the handshake should not complete");
}
