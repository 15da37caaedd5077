//! Reading an answer's body with a cap: the read stops as soon as the body passes the limit, so a receiver cannot
//! make the service buffer more than the caller allows (a `Content-Length` over the limit fails before any read).

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is larger than the limit.
    #[error("the answer is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body could not be read (the connection failed, or the read timed out).
    #[error("the answer could not be read: {0}")]
    Read(String),
}

/// Reads `response`'s body, failing as soon as it passes `limit` bytes.
pub async fn read_capped(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(crate::describe(e)))? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
