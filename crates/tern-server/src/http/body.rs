//! Reading request bodies: the `request_body_limit` (applied to the
//! decompressed size, 413 past it) and `Content-Encoding: gzip|deflate`.
//! Also the gzip/deflate compression of responses for clients that ask
//! for it.

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::io::{Read, Write};

/// KumoMTA's wording for an oversized body.
pub const TOO_LARGE: &str = "Failed to buffer the request body: length limit exceeded";

fn too_large() -> Response {
    (StatusCode::PAYLOAD_TOO_LARGE, TOO_LARGE).into_response()
}

enum Coding {
    Identity,
    Gzip,
    Deflate,
}

/// Read the whole body, decompressing it if needed; refuse bodies whose
/// (decompressed) size passes `limit`.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let coding = match headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
    {
        None => Coding::Identity,
        Some(c) if c.is_empty() || c == "identity" => Coding::Identity,
        Some(c) if c == "gzip" || c == "x-gzip" => Coding::Gzip,
        Some(c) if c == "deflate" => Coding::Deflate,
        Some(c) => {
            return Err((
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported Content-Encoding '{c}'"),
            )
                .into_response());
        }
    };
    // Refuse early from the announced length, before reading anything.
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let raw = axum::body::to_bytes(body, limit).await.map_err(|err| {
        // to_bytes fails for the limit and for broken connections alike;
        // the limit is the one worth an answer.
        tracing::debug!("reading an HTTP request body failed: {err}");
        too_large()
    })?;
    let decoder: Box<dyn Read> = match coding {
        Coding::Identity => return Ok(raw),
        Coding::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&raw[..])),
        Coding::Deflate => Box::new(flate2::read::ZlibDecoder::new(&raw[..])),
    };
    let mut out = Vec::with_capacity(raw.len() * 4);
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| {
            (
                StatusCode::BAD_REQUEST,
                format!("cannot decompress the request body: {err}"),
            )
                .into_response()
        })?;
    if out.len() > limit {
        return Err(too_large());
    }
    Ok(Bytes::from(out))
}

/// Compress `body` for the response when the client accepts gzip or
/// deflate and the body is large enough to gain from it.
pub fn compressed_response(
    request_headers: &HeaderMap,
    status: StatusCode,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    const MIN_SIZE: usize = 512;
    let accepts = request_headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let accepted = |name: &str| {
        accepts
            .split(',')
            .map(|t| t.split(';').next().unwrap_or("").trim())
            .any(|t| t == name)
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let encoded = if body.len() < MIN_SIZE {
        None
    } else if accepted("gzip") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body)
            .ok()
            .and_then(|_| enc.finish().ok())
            .map(|b| ("gzip", b))
    } else if accepted("deflate") {
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body)
            .ok()
            .and_then(|_| enc.finish().ok())
            .map(|b| ("deflate", b))
    } else {
        None
    };
    match encoded {
        Some((coding, bytes)) => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            (status, headers, bytes).into_response()
        }
        None => (status, headers, body).into_response(),
    }
}
