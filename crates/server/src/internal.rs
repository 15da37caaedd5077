//! A failure inside the service, as every service of this crate reports it: what was being done, and the cause
//! chain. It is logged whole under the tracking id of the answer; the client sees only that id.

/// Any error, as a cause.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure inside the service: what it was doing, and why.
#[derive(Debug, thiserror::Error)]
#[error("{doing}")]
pub struct InternalError {
    doing: String,
    #[source]
    cause: Option<Cause>,
}

impl InternalError {
    /// A failure of `doing` caused by `cause`.
    pub fn new(doing: impl Into<String>, cause: impl Into<Cause>) -> Self {
        Self { doing: doing.into(), cause: Some(cause.into()) }
    }

    /// A failure of `doing` with no further cause (an impossible state, a corrupt record).
    pub fn bare(doing: impl Into<String>) -> Self {
        Self { doing: doing.into(), cause: None }
    }

    /// The whole chain for the log: `doing: cause: cause of the cause ...`.
    pub fn chain(&self) -> String {
        let mut text = self.doing.clone();
        let mut next = std::error::Error::source(self);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause() {
        let error = InternalError::new("reading the enrollment", Outer(std::io::Error::other("disk on fire")));
        assert_eq!(error.chain(), "reading the enrollment: outer: disk on fire");
        assert_eq!(InternalError::bare("corrupt").chain(), "corrupt");
    }
}
