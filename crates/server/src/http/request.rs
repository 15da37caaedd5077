//! What admin handlers read from a request besides the path: JSON bodies (size-limited, content-typed),
//! `If-Match`, and the paging headers; and the headers they answer with.

use actix_web::http::header::{self, HeaderMap};
use actix_web::{FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder, dev::Payload};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde_json::Value;
use serde_json::value::RawValue;
use zerotouch_store::Precondition;

use super::error::ApiError;

/// Largest body of an ordinary admin request (the DPS message limit).
pub const BODY_LIMIT: usize = 96 * 1024;
/// Largest body of a bulk call (up to 10,000 enrollments).
pub const BULK_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Page size when the client asks for none.
pub const DEFAULT_PAGE_SIZE: u64 = 100;

/// A JSON body of at most `LIMIT` bytes; `None` when the body is empty.
#[derive(Debug)]
pub struct MaybeJson<const LIMIT: usize>(pub Option<Value>);

/// A JSON body of at most `LIMIT` bytes.
#[derive(Debug)]
pub struct Json<const LIMIT: usize>(pub Value);

fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else { return Ok(()) };
    let text = value.to_str().map_err(|_| ApiError::UnsupportedMediaType("(not text)".into()))?;
    let essence = text.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") || essence.is_empty() {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(text.to_owned()))
    }
}

/// The body as JSON; `None` when it is empty.
fn maybe_json(body: &[u8]) -> Result<Option<Value>, ApiError> {
    crate::registration::request::parse_json(body).map_err(|e| ApiError::MalformedBody(e.to_string()))
}

/// What a route that requires a body answers when there is none.
fn empty_body() -> ApiError {
    ApiError::MalformedBody("the body is empty; a JSON document is expected".into())
}

/// The one way an extractor reads a body: at most `limit` bytes of a JSON content type, then `parse`.
fn read_then<T: 'static>(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
    parse: fn(&[u8]) -> Result<T, ApiError>,
) -> LocalBoxFuture<'static, Result<T, ApiError>> {
    let headers = req.headers().clone();
    let payload = payload.take();
    Box::pin(async move { parse(&read_body(&headers, payload, limit).await?) })
}

/// The body's bytes, at most `limit` of them, of a JSON content type (or none).
async fn read_body(headers: &HeaderMap, mut payload: Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    check_content_type(headers)?;
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok())
        && length.parse::<usize>().map_or(true, |n| n > limit)
    {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    // Grown with what arrives, never sized from the announced length: device bodies are read before the device is
    // authenticated.
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::MalformedBody(format!("the body could not be read: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON object of at most `LIMIT` bytes whose members are kept as JSON text, each parsed when the handler reaches
/// it; `None` when the body is JSON but not an object. A bulk call of 10,000 documents then never holds them all as
/// one `Value` tree, several times the size of their text, while it runs (`BENCHMARKS.md`, memory).
#[derive(Debug)]
pub struct RawMembers<const LIMIT: usize>(pub Option<std::collections::BTreeMap<String, Box<RawValue>>>);

impl<const LIMIT: usize> RawMembers<LIMIT> {
    /// Parses a member (or one element of a member kept raw), refusing what every other body's parser refuses.
    pub fn parse<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, ApiError> {
        serde_json::from_str(raw.get())
            .map_err(|e| ApiError::MalformedBody(crate::registration::request::NotJson::from(e).to_string()))
    }

    fn of_body(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(empty_body());
        }
        // Keeping members raw skips their insides (UTF-8 of strings, numbers, depth): the text is checked whole
        // here, the rest by [`RawMembers::parse`].
        let members = std::str::from_utf8(body).ok().and_then(|text| serde_json::from_str(text).ok());
        match members {
            Some(members) => Ok(Self(Some(members))),
            // Valid JSON of another type, or not JSON at all: the parser of every other body tells which, and
            // names the problem the same way.
            None => maybe_json(body).map(|_| Self(None)),
        }
    }
}

impl<const LIMIT: usize> FromRequest for RawMembers<LIMIT> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        read_then(req, payload, LIMIT, Self::of_body)
    }
}

impl<const LIMIT: usize> FromRequest for MaybeJson<LIMIT> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        read_then(req, payload, LIMIT, |body| maybe_json(body).map(Self))
    }
}

impl<const LIMIT: usize> FromRequest for Json<LIMIT> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        read_then(req, payload, LIMIT, |body| maybe_json(body)?.map(Self).ok_or_else(empty_body))
    }
}

/// The `If-Match` condition (RFC 7232): `*`, or a list of entity tags, quoted or not, weak or strong.
pub fn precondition(req: &HttpRequest) -> Result<Precondition, ApiError> {
    let mut tags = Vec::new();
    for value in req.headers().get_all(header::IF_MATCH) {
        let text = value.to_str().map_err(|_| ApiError::InvalidHeader("If-Match: must be ASCII".into()))?;
        for tag in text.split(',') {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let tag = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
            if tag.is_empty() || tag.contains('"') {
                return Err(ApiError::InvalidHeader(format!("If-Match: {text:?} is not a list of etags or *")));
            }
            tags.push(tag.to_owned());
        }
    }
    Ok(if tags.is_empty() { Precondition::None } else { Precondition::IfMatch(tags) })
}

/// The paging request of a query: page size and where to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    /// `x-ms-max-item-count` (1-1000, default 100).
    pub max_items: u64,
    /// The decoded `x-ms-continuation` token.
    pub after: Option<String>,
}

/// Reads `x-ms-max-item-count` and `x-ms-continuation`.
pub fn paging(req: &HttpRequest) -> Result<Paging, ApiError> {
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        req.headers()
            .get(name)
            .map(|v| v.to_str().map_err(|_| ApiError::InvalidHeader(format!("{name}: must be ASCII"))))
            .transpose()
    };
    let max_items = match text("x-ms-max-item-count")? {
        None => DEFAULT_PAGE_SIZE,
        Some(n) => match n.trim().parse::<u64>() {
            Ok(n) if (1..=zerotouch_store::MAX_PAGE_SIZE).contains(&n) => n,
            _ => {
                return Err(ApiError::InvalidHeader(format!(
                    "x-ms-max-item-count: {n:?} must be a number from 1 to {}",
                    zerotouch_store::MAX_PAGE_SIZE
                )));
            }
        },
    };
    let after =
        match text("x-ms-continuation")?.map(str::trim).filter(|t| !t.is_empty()) {
            None => None,
            Some(token) => {
                Some(URL_SAFE_NO_PAD.decode(token).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(
                    || ApiError::InvalidHeader("x-ms-continuation: not a token this service issued".into()),
                )?)
            }
        };
    Ok(Paging { max_items, after })
}

/// Encodes a continuation token.
pub fn continuation_token(after: &str) -> String {
    URL_SAFE_NO_PAD.encode(after)
}

/// A 200 answer to a query: the items, `x-ms-item-type`, `x-ms-max-item-count` and `x-ms-continuation`.
pub fn page_response(items: Vec<Value>, next: Option<String>, item_type: &str, paging: &Paging) -> HttpResponse {
    let mut builder = HttpResponse::Ok();
    builder.insert_header(("x-ms-item-type", item_type.to_owned()));
    builder.insert_header(("x-ms-max-item-count", paging.max_items.to_string()));
    if let Some(next) = next {
        builder.insert_header(("x-ms-continuation", continuation_token(&next)));
    }
    builder.json(items)
}

/// Adds the `ETag` header (quoted, RFC 7232) for `etag`.
pub fn with_etag(mut builder: HttpResponseBuilder, etag: &str) -> HttpResponseBuilder {
    builder.insert_header((header::ETAG, format!("\"{etag}\"")));
    builder
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn if_match_takes_star_lists_quoted_and_weak_tags() {
        let req = TestRequest::default().insert_header(("If-Match", "*")).to_http_request();
        assert_eq!(precondition(&req).unwrap(), Precondition::IfMatch(vec!["*".into()]));
        let req = TestRequest::default().insert_header(("If-Match", "\"a\", W/\"b\", c")).to_http_request();
        assert_eq!(precondition(&req).unwrap(), Precondition::IfMatch(vec!["a".into(), "b".into(), "c".into()]));
        let req = TestRequest::default().to_http_request();
        assert_eq!(precondition(&req).unwrap(), Precondition::None);
        let req = TestRequest::default().insert_header(("If-Match", "\"\"")).to_http_request();
        assert!(precondition(&req).is_err());
    }

    #[test]
    fn paging_headers_are_checked() {
        let req = TestRequest::default().to_http_request();
        assert_eq!(paging(&req).unwrap(), Paging { max_items: 100, after: None });
        let token = continuation_token("dev-7");
        let req = TestRequest::default()
            .insert_header(("x-ms-max-item-count", "5"))
            .insert_header(("x-ms-continuation", token.as_str()))
            .to_http_request();
        assert_eq!(paging(&req).unwrap(), Paging { max_items: 5, after: Some("dev-7".into()) });
        for bad in ["0", "1001", "x", "-1"] {
            let req = TestRequest::default().insert_header(("x-ms-max-item-count", bad)).to_http_request();
            assert!(paging(&req).is_err(), "{bad}");
        }
        let req = TestRequest::default().insert_header(("x-ms-continuation", "%%%")).to_http_request();
        assert!(paging(&req).is_err());
    }
}
