//! Turning text into vectors of the project's dimension with the model a request
//! names, and the model catalog (`GET /api/v1/models`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use quiver_common::ApiError;
use quiver_common::domain::Scope;
use quiver_embed::ModelInfo;
use quiver_store::Project;
use serde::Serialize;

use crate::DataPlane;
use crate::auth::Principal;

pub fn router() -> Router<DataPlane> {
    Router::new().route("/api/v1/models", get(models))
}

fn dimension_mismatch(model: &str, dimension: usize, project: &Project) -> ApiError {
    ApiError::Validation {
        message: format!(
            "embedding model \"{model}\" makes {dimension}-dimensional vectors and the project's dimension is {}: \
             name a model of {} dimensions in embedding_model, or send embeddings",
            project.dimension, project.dimension
        ),
        detail: Some("field embedding_model".into()),
    }
}

/// Embeds `texts` with `model`, refusing a model whose dimension is not the project's
/// (before calling it when the dimension is known, after when it is not).
pub(crate) async fn embed(
    state: &DataPlane,
    project: &Project,
    model: &str,
    texts: Vec<String>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let expected = project.dimension as usize;
    if let Some(dimension) = state.embedders.dimension(model)?
        && dimension != expected
    {
        return Err(dimension_mismatch(model, dimension, project));
    }
    let count = texts.len();
    let vectors = state.embedders.embed(model, texts).await?;
    if vectors.len() != count {
        return Err(anyhow::anyhow!("{model} returned {} vectors for {count} texts", vectors.len()).into());
    }
    if let Some(wrong) = vectors.iter().find(|v| v.len() != expected) {
        return Err(dimension_mismatch(model, wrong.len(), project));
    }
    // A provider's vector the index cannot hold (all zeros for cosine, values beyond
    // 16-bit floats) would give NaN distances; a client's own is a 400, this is the
    // provider's fault.
    for (i, vector) in vectors.iter().enumerate() {
        if let Some(why) = crate::vectors::unstorable(vector, project.metric, "the vector") {
            return Err(ApiError::Upstream(format!(
                "embedding model \"{model}\" returned a vector the index cannot hold for text {i} of the request: {why}"
            )));
        }
    }
    Ok(vectors)
}

/// The model to embed a collection's text with: the one the request names, else the
/// one that embedded the collection's text so far, else the deployment's default. A
/// request naming another model than the collection's is refused: vectors of two
/// models are not comparable, even of one dimension.
pub(crate) async fn collection_model(
    state: &DataPlane,
    principal: &Principal,
    collection: &str,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    let recorded = state.store.embedding_model(principal.project_id, collection).await?;
    match (asked, recorded) {
        (Some(asked), Some(recorded)) if asked != recorded => Err(ApiError::Validation {
            message: quiver_store::model_mismatch(collection, &recorded, asked),
            detail: Some("field embedding_model".into()),
        }),
        (_, Some(recorded)) => Ok(recorded),
        (asked, None) => Ok(asked.unwrap_or(&state.default_model).to_owned()),
    }
}

/// The model to embed `sources`' texts with ([`collection_model`]), or `None` when
/// every vector is given and nothing needs a model.
pub(crate) async fn text_model(
    state: &DataPlane,
    principal: &Principal,
    collection: &str,
    asked: Option<&str>,
    sources: &[Source],
) -> Result<Option<String>, ApiError> {
    if !sources.iter().any(|source| matches!(source, Source::Text(_))) {
        return Ok(None);
    }
    collection_model(state, principal, collection, asked).await.map(Some)
}

/// Where a written record's vector comes from.
pub(crate) enum Source {
    /// The request carried it.
    Given(Vec<f32>),
    /// It is this text's embedding.
    Text(String),
}

/// One vector per source, in order: given ones as they are, and every text embedded
/// with `model` ([`text_model`]; the deployment's default if none) in one call (none
/// when there is no text). A text that comes more than once is embedded once (an NQL
/// `UPDATE … SET content = $1` gives every row the same).
pub(crate) async fn complete(
    state: &DataPlane,
    project: &Project,
    model: Option<&str>,
    sources: Vec<Source>,
) -> Result<Vec<Vec<f32>>, ApiError> {
    enum Slot {
        Given(Vec<f32>),
        /// The index of its text among the distinct ones.
        Text(usize),
    }
    let model = model.unwrap_or(&state.default_model);
    let mut texts = Vec::new();
    let mut distinct = std::collections::HashMap::new();
    let slots: Vec<Slot> = sources
        .into_iter()
        .map(|source| match source {
            Source::Given(vector) => Slot::Given(vector),
            Source::Text(text) => Slot::Text(*distinct.entry(text).or_insert_with_key(|text| {
                texts.push(text.clone());
                texts.len() - 1
            })),
        })
        .collect();
    drop(distinct);
    let embedded = if texts.is_empty() {
        Vec::new()
    } else {
        embed(state, project, model, texts).await?
    };
    Ok(slots
        .into_iter()
        .map(|slot| match slot {
            Slot::Given(vector) => vector,
            Slot::Text(i) => embedded[i].clone(),
        })
        .collect())
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
    /// The model used when a request names none.
    pub default_model: String,
}

/// The embedding models this deployment offers, with their dimensions.
#[utoipa::path(
    get,
    operation_id = "list_models",
    path = "/api/v1/models",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn models(State(state): State<DataPlane>, principal: Principal) -> Result<Json<ModelList>, ApiError> {
    principal.require(Scope::Read)?;
    state.admit(&principal, crate::limits::Kind::Queries, 1).await?;
    Ok(Json(ModelList {
        models: state.embedders.models(),
        default_model: state.default_model.to_string(),
    }))
}
