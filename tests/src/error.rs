//! The one error type of the fixtures: every failure carries a message saying which fixture
//! failed and why (tests print it and stop).

use std::fmt;

/// A fixture could not be set up or did not behave as expected.
#[derive(Debug)]
#[non_exhaustive]
pub enum FixtureError {
    /// A file, process or socket operation failed.
    Io(std::io::Error),
    /// An HTTP request of a fixture failed at the transport level.
    Http(reqwest::Error),
    /// A fixture answered or behaved unexpectedly; the text says how.
    Unexpected(String),
}

/// Result of fixture operations.
pub type FixtureResult<T> = Result<T, FixtureError>;

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "fixture I/O error: {e}"),
            Self::Http(e) => write!(f, "fixture HTTP error: {e}"),
            Self::Unexpected(msg) => write!(f, "fixture error: {msg}"),
        }
    }
}

impl std::error::Error for FixtureError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Http(e) => Some(e),
            Self::Unexpected(_) => None,
        }
    }
}

impl From<std::io::Error> for FixtureError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<reqwest::Error> for FixtureError {
    fn from(e: reqwest::Error) -> Self {
        Self::Http(e)
    }
}

/// Shorthand for [`FixtureError::Unexpected`].
pub(crate) fn unexpected(msg: impl Into<String>) -> FixtureError {
    FixtureError::Unexpected(msg.into())
}
