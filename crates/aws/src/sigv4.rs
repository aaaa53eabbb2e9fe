//! AWS Signature Version 4 for requests that carry temporary credentials, such as STS
//! `GetCallerIdentity`. `AssumeRoleWithWebIdentity` itself is unsigned.

use aws_lc_rs::{digest, hmac};
use time::OffsetDateTime;
use time::macros::format_description;

/// The parts of an HTTP request that SigV4 signs.
#[derive(Debug, Clone, Copy)]
pub struct SignableRequest<'a> {
    /// The HTTP method, such as `POST`.
    pub method: &'a str,
    /// The URI-encoded absolute path, `/` for the root.
    pub path: &'a str,
    /// The canonical query string: URI-encoded pairs sorted by name, empty for none.
    pub canonical_query: &'a str,
    /// The headers to sign, which must include `host` and `x-amz-date`. Names are
    /// lowercased and values trimmed before signing.
    pub headers: &'a [(&'a str, &'a str)],
    /// The request body.
    pub body: &'a [u8],
}

/// The credential scope and key that sign a request.
#[derive(Clone, Copy)]
pub struct SigningParams<'a> {
    /// The access key ID.
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret_access_key: &'a str,
    /// The region, such as `us-east-1`.
    pub region: &'a str,
    /// The service name, such as `sts`.
    pub service: &'a str,
    /// The signing time, which must equal the `x-amz-date` header.
    pub time: OffsetDateTime,
}

impl std::fmt::Debug for SigningParams<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningParams")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// Formats `time` as the `x-amz-date` header value, `YYYYMMDDTHHMMSSZ` in UTC.
pub fn amz_date(time: OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    utc.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .unwrap_or_default()
}

/// Returns the `Authorization` header value that signs `request` with `params`.
pub fn authorization(request: &SignableRequest<'_>, params: &SigningParams<'_>) -> String {
    let date_time = amz_date(params.time);
    let date = &date_time[..8];
    let scope = format!("{date}/{}/{}/aws4_request", params.region, params.service);

    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}:{value}\n"))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        request.canonical_query,
        sha256_hex(request.body)
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );

    let secret = format!("AWS4{}", params.secret_access_key);
    let date_key = hmac_sha256(secret.as_bytes(), date.as_bytes());
    let region_key = hmac_sha256(&date_key, params.region.as_bytes());
    let service_key = hmac_sha256(&region_key, params.service.as_bytes());
    let signing_key = hmac_sha256(&service_key, b"aws4_request");
    let signature = hex::encode(hmac_sha256(&signing_key, string_to_sign.as_bytes()));

    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
         Signature={signature}",
        params.access_key_id
    )
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, data).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_time() -> OffsetDateTime {
        time::macros::datetime!(2015-08-30 12:36:00 UTC)
    }

    /// The "get-vanilla" case of the AWS SigV4 test suite, with its published signature.
    #[test]
    fn get_vanilla_vector_matches() {
        let request = SignableRequest {
            method: "GET",
            path: "/",
            canonical_query: "",
            headers: &[
                ("Host", "example.amazonaws.com"),
                ("X-Amz-Date", "20150830T123600Z"),
            ],
            body: b"",
        };
        let params = SigningParams {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "service",
            time: vector_time(),
        };
        assert_eq!(
            authorization(&request, &params),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn signature_depends_on_secret_and_body() {
        let headers = [
            ("host", "sts.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ];
        let request = SignableRequest {
            method: "POST",
            path: "/",
            canonical_query: "",
            headers: &headers,
            body: b"Action=GetCallerIdentity&Version=2011-06-15",
        };
        let params = SigningParams {
            access_key_id: "AKID",
            secret_access_key: "secret-one",
            region: "us-east-1",
            service: "sts",
            time: vector_time(),
        };
        let first = authorization(&request, &params);
        let other_secret = authorization(
            &request,
            &SigningParams {
                secret_access_key: "secret-two",
                ..params
            },
        );
        let other_body = authorization(
            &SignableRequest {
                body: b"Action=GetCallerIdentity&Version=2011-06-16",
                ..request
            },
            &params,
        );
        assert_ne!(first, other_secret);
        assert_ne!(first, other_body);
    }

    #[test]
    fn amz_date_is_utc() {
        let time = time::macros::datetime!(2015-08-30 14:36:00 +02:00);
        assert_eq!(amz_date(time), "20150830T123600Z");
    }
}
