//! Reconcile errors, each mapped to a short reason for the metrics.

/// Why a reconcile failed. Retried with backoff by the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The object is malformed in a way the API server should have refused.
    #[error("invalid object: {0}")]
    Invalid(String),
}

impl Error {
    /// Attach what the operator was doing to an API error.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// Short reason for `capturefleet_operator_reconcile_errors_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                409 => "conflict",
                403 => "forbidden",
                404 => "not_found",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "server_error",
                _ => "api_error",
            },
            Error::Kube { .. } => "transport",
            Error::Invalid(_) => "invalid_object",
        }
    }

    /// Whether the API answered 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}
