use quiver_common::ApiError;

/// Everything that can go wrong while embedding texts.
///
/// Messages are lowercase and say what was wrong and what would be right; they are
/// shown to API clients, except for [`EmbedError::Internal`].
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The model name names no provider or no model this server knows (400).
    #[error("{0}")]
    UnknownModel(String),
    /// A known local model whose files are not installed (503).
    #[error("{0}")]
    ModelMissing(String),
    /// The input cannot be embedded, e.g. no texts or an empty text (400).
    #[error("{0}")]
    Invalid(String),
    /// The provider answered, but with an error or a malformed response (502).
    #[error("{0}")]
    Upstream(String),
    /// The provider could not be reached in time, or a model cannot be loaded (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; the client sees a generic message.
    #[error("embedding failed: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<EmbedError> for ApiError {
    fn from(err: EmbedError) -> Self {
        match err {
            EmbedError::UnknownModel(message) | EmbedError::Invalid(message) => ApiError::validation(message),
            EmbedError::Upstream(message) => ApiError::Upstream(message),
            EmbedError::ModelMissing(message) | EmbedError::Unavailable(message) => ApiError::Unavailable(message),
            EmbedError::Internal(err) => ApiError::Internal(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn every_variant_maps_to_the_documented_status() {
        let cases = [
            (EmbedError::UnknownModel("x".into()), StatusCode::BAD_REQUEST),
            (EmbedError::Invalid("x".into()), StatusCode::BAD_REQUEST),
            (EmbedError::Upstream("x".into()), StatusCode::BAD_GATEWAY),
            (EmbedError::ModelMissing("x".into()), StatusCode::SERVICE_UNAVAILABLE),
            (EmbedError::Unavailable("x".into()), StatusCode::SERVICE_UNAVAILABLE),
            (
                EmbedError::Internal(anyhow::anyhow!("x")),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, status) in cases {
            let shown = err.to_string();
            let api = ApiError::from(err);
            assert_eq!(api.status(), status, "{shown}");
        }
    }
}
