//! The operator's one error type. Messages name objects and flags, never a
//! plaintext token.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or environment variable has an unusable value.
    #[error("invalid value for --{flag}: {message}")]
    Config {
        /// The flag, without the dashes.
        flag: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
    /// The Kubernetes API refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A watch stream failed.
    #[error("watch: {0}")]
    Watch(#[from] kube::runtime::watcher::Error),
    /// The contract crate refused something (prefix, record, duration).
    #[error(transparent)]
    Contract(#[from] prodgy_crds::Error),
    /// An object lacks a field the API server always sets.
    #[error("{kind} is missing {field}")]
    MissingField {
        /// Object kind.
        kind: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// Someone else changed the object between our read and our write.
    #[error("conflicting write to {0}; retrying")]
    Conflict(String),
    /// JSON (de)serialisation failed.
    #[error("serialisation: {0}")]
    Json(#[from] serde_json::Error),
    /// A manifest file could not be read or parsed.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// The file.
        path: String,
        /// Why it is unusable.
        message: String,
    },
    /// Reading or writing a local file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The metrics endpoint could not bind or serve.
    #[error("metrics server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The leak-report endpoint could not bind or serve.
    #[error("leak-report server on {addr}: {source}")]
    LeakServe {
        /// The listen address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A metric could not be registered or rendered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Leadership was lost while reconciling.
    #[error("lost leadership: {0}")]
    Leadership(String),
    /// The finalizer helper refused an object it cannot patch.
    #[error("finalizer: {0}")]
    Finalizer(&'static str),
}

impl From<kube::runtime::finalizer::Error<Error>> for Error {
    /// Our own errors come back as they were; the helper's patches fail as
    /// any Kubernetes call does.
    fn from(e: kube::runtime::finalizer::Error<Error>) -> Self {
        use kube::runtime::finalizer::Error as F;
        match e {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            F::AddFinalizer(e) | F::RemoveFinalizer(e) => Error::Kube(e),
            F::UnnamedObject => Error::MissingField {
                kind: "ApiToken",
                field: "metadata.name",
            },
            F::InvalidFinalizer => Error::Finalizer("the finalizer name is not a JSON pointer"),
        }
    }
}

impl Error {
    /// A short, bounded label for the `error` label of metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(status)) if status.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube_client",
            Error::Watch(_) => "watch",
            Error::Contract(_) => "contract",
            Error::MissingField { .. } => "missing_field",
            Error::Conflict(_) => "conflict",
            Error::Json(_) => "json",
            Error::Manifest { .. } => "manifest",
            Error::Io { .. } => "io",
            Error::Serve { .. } | Error::LeakServe { .. } => "serve",
            Error::Metrics(_) => "metrics",
            Error::Leadership(_) => "leadership",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// Whether the API server answered 409 (a stale read or a lost race).
    pub fn is_conflict(&self) -> bool {
        self.metric_label() == "conflict"
    }

    /// Whether the API server answered 404.
    pub fn is_not_found(&self) -> bool {
        self.metric_label() == "not_found"
    }
}

/// Result alias of the operator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: "m".into(),
            reason: "r".into(),
            ..Default::default()
        })))
    }

    #[test]
    fn labels_are_bounded_and_classify_api_codes() {
        assert_eq!(api(409).metric_label(), "conflict");
        assert!(api(409).is_conflict());
        assert!(api(404).is_not_found());
        assert_eq!(api(500).metric_label(), "api");
        let e = Error::Config {
            flag: "reveal-window",
            message: "bad".into(),
        };
        assert_eq!(e.metric_label(), "config");
        assert!(e.to_string().contains("--reveal-window"));
    }
}
