//! Slow writes: a write to a chosen resource is carried out at once, and its
//! answer is held back, or replaced by the timeout a real API server sends
//! when its request deadline passes. The second is the case a client cannot
//! tell apart from a lost write: the object changed, the client was told it
//! did not.

use std::time::Duration;

use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// How writes (create, update, patch, delete) to one resource are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// The write is applied; its answer is sent after this delay.
    Delay(Duration),
    /// The write is applied; after this delay the client is answered
    /// `504 Timeout` instead of the result (a retry applies it again).
    TimeOut(Duration),
}

impl WriteFault {
    /// The answer the client gets for a write already applied.
    pub(crate) async fn answer(self, applied: Response) -> Response {
        match self {
            Self::Delay(d) => {
                tokio::time::sleep(d).await;
                applied
            }
            Self::TimeOut(d) => {
                tokio::time::sleep(d).await;
                ApiError::new(
                    504,
                    "Timeout",
                    "Timeout: request did not complete within requested timeout - context deadline exceeded",
                )
                .into_response()
            }
        }
    }
}
