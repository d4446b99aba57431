//! Who is calling. SEAM FOR THE SECURITY ISSUE: today every request is the anonymous principal
//! and nothing is checked; authentication and roles replace `from_request_parts` there.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use std::convert::Infallible;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
}

impl Principal {
    pub fn anonymous() -> Self {
        Principal {
            subject: "anonymous".into(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = Infallible;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        // Replaced by token / API-key authentication in the security issue.
        Ok(Principal::anonymous())
    }
}
