//! The document API of `shared/seeds/document-and-query-api-reference.txt`: a
//! collection is a namespace, a document a record with `content`, embedded by the
//! model the request names (or carrying its own `embedding`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use quiver_common::ApiError;
use quiver_common::AppPath;
use quiver_common::domain::Scope;
use quiver_common::error::json_kind as kind;
use quiver_store::{Metadata, MetadataPatch, RecordPatch, RecordWrite};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::DataPlane;
use crate::auth::Principal;
use crate::embeddings::{self, Source};
use crate::idempotency::idempotent;
use crate::json::parse_body;
use crate::limits::Kind;
use crate::records;
use crate::vectors::{
    MAX_METADATA_BYTES, VectorValues, parse_filter, parse_id, parse_metadata, parse_top_k, parse_values, strong,
    without_nulls,
};

pub fn router() -> Router<DataPlane> {
    Router::new()
        .route("/api/v1/collections/{collection}/documents", post(insert))
        // The batch route takes the path of a document named "batch", which has no other
        // way in: axum does not fall through to `{id}` on another method.
        .route(
            "/api/v1/collections/{collection}/documents/batch",
            post(insert_batch)
                .get(fetch_named_batch)
                .delete(remove_named_batch)
                .merge(axum::routing::put(replace_named_batch).layer(crate::request_body_limit())),
        )
        .route(
            "/api/v1/collections/{collection}/documents/{id}",
            get(fetch)
                .put(replace)
                .delete(remove)
                .layer(crate::request_body_limit()),
        )
        .route(
            "/api/v1/collections/{collection}/search",
            post(search).layer(crate::request_body_limit()),
        )
}

/// Longest document content, in bytes.
pub const MAX_CONTENT_BYTES: usize = 256 * 1024;
// NQL refuses values past its own limit as ones no document can hold: the two agree.
const _: () = assert!(MAX_CONTENT_BYTES == quiver_nql::MAX_VALUE_BYTES);
/// Most documents one insert may carry.
pub const MAX_DOCUMENTS: usize = 1000;

/// A collection name from the path: 1 to 256 bytes, no control characters.
pub(crate) fn collection(principal: &Principal, name: &str) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::Validation {
            message: "a collection name has 1 to 256 bytes and no control characters".into(),
            detail: Some("path collection".into()),
        });
    }
    principal.require_namespace(name)?;
    Ok(name.to_owned())
}

pub(crate) fn no_collection(name: &str) -> ApiError {
    ApiError::NotFound(format!("collection \"{name}\" does not exist"))
}

fn no_document(collection: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!("no document \"{id}\" in collection \"{collection}\""))
}

fn parse_content(value: Option<&Value>, what: &str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => check_content(text, what).map(|()| Some(text.clone())),
        Some(other) => Err(ApiError::validation(format!(
            "{what} content must be a string, got {}",
            kind(other)
        ))),
    }
}

/// Refuses content that is blank, over [`MAX_CONTENT_BYTES`], or holds NUL.
pub(crate) fn check_content(text: &str, what: &str) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::validation(format!("{what} has empty content")));
    }
    if text.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::validation(format!(
            "{what} has {} bytes of content; the limit is {MAX_CONTENT_BYTES}",
            text.len()
        )));
    }
    if text.contains('\0') {
        return Err(ApiError::validation(format!(
            "{what} has content with the NUL character (U+0000), which content cannot hold"
        )));
    }
    Ok(())
}

fn parse_document_id(value: Option<&Value>, what: &str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(id) => parse_id(Some(id), what).map(Some),
    }
}

/// One document to insert.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // documentation only: documents are validated one by one from JSON
pub struct DocumentInput {
    /// 1 to 512 bytes; a UUID is made when absent.
    pub id: Option<String>,
    /// The text, up to 256 KiB; embedded unless `embedding` is given.
    #[schema(example = "NeuralDB is an AI-native database")]
    pub content: String,
    #[schema(value_type = Option<Object>, example = json!({"source": "blog", "category": "technology"}))]
    pub metadata: Option<Value>,
    /// The document's own vector, as numbers or base64.
    #[schema(value_type = Option<crate::vectors::VectorData>)]
    pub embedding: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InsertRequest {
    /// 1 to 1,000 documents.
    #[schema(value_type = Vec<DocumentInput>, min_items = 1, max_items = 1000)]
    documents: Vec<Value>,
    /// `provider/model`; default: the model that embedded the collection's text so far, else the deployment's default (`local/all-minilm-l6-v2` unless configured); another than the collection's is a 400.
    #[schema(example = "openai/text-embedding-3-small")]
    embedding_model: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InsertResponse {
    pub inserted: u64,
    /// The documents' ids, in the order sent.
    pub ids: Vec<String>,
    /// The collection's sequence number after this write.
    pub seq: i64,
}

struct ParsedDocument {
    id: String,
    content: String,
    metadata: Metadata,
    embedding: Option<Vec<f32>>,
}

fn parse_documents(documents: &[Value], principal: &Principal) -> Result<Vec<ParsedDocument>, ApiError> {
    let project = &principal.project;
    documents
        .iter()
        .enumerate()
        .map(|(i, document)| {
            let object = document.as_object().ok_or_else(|| {
                ApiError::validation(format!(
                    "document {i} must be an object with content, got {}",
                    kind(document)
                ))
            })?;
            let what = match object.get("id") {
                Some(Value::String(id)) => format!("document {i} (id \"{id}\")"),
                _ => format!("document {i}"),
            };
            if let Some(unknown) = object
                .keys()
                .find(|k| !["id", "content", "metadata", "embedding"].contains(&k.as_str()))
            {
                return Err(ApiError::validation(format!(
                    "{what} has an unknown field \"{unknown}\": expected id, content, metadata, embedding"
                )));
            }
            let content = parse_content(object.get("content"), &what)?
                .ok_or_else(|| ApiError::validation(format!("{what} has no content")))?;
            let embedding = match object.get("embedding") {
                None | Some(Value::Null) => None,
                Some(values) => Some(parse_values(values, project.dimension, project.metric, &what)?),
            };
            Ok(ParsedDocument {
                id: parse_document_id(object.get("id"), &what)?.unwrap_or_else(crate::records::new_id),
                content,
                metadata: without_nulls(parse_metadata(object.get("metadata"), &what)?),
                embedding,
            })
        })
        .collect()
}

/// Insert documents, embedding those without an `embedding`; all or none.
#[utoipa::path(
    post,
    operation_id = "insert_documents",
    path = "/api/v1/collections/{collection}/documents",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(
        ("collection" = String, Path),
        ("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h"),
    ),
    request_body = InsertRequest,
    responses(
        (status = 200, body = InsertResponse),
        (status = 400, description = "invalid body or document, or a model of another dimension", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "no write scope, or a plan cap", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the same idempotency key is in flight", body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 502, description = "the embedding provider failed", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store or the embedding model is unavailable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn insert(
    state: State<DataPlane>,
    principal: Principal,
    path: AppPath<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    insert_documents(state, principal, path, headers, body, "documents.insert").await
}

/// Insert up to 1,000 documents in one request; all or none.
#[utoipa::path(
    post,
    operation_id = "insert_documents_batch",
    path = "/api/v1/collections/{collection}/documents/batch",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(
        ("collection" = String, Path),
        ("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h"),
    ),
    request_body = InsertRequest,
    responses(
        (status = 200, body = InsertResponse),
        (status = 400, description = "invalid body or document, more than 1,000 documents, or a model of another dimension", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, description = "no write scope, or a plan cap", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the same idempotency key is in flight", body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 502, description = "the embedding provider failed", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store or the embedding model is unavailable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn insert_batch(
    state: State<DataPlane>,
    principal: Principal,
    path: AppPath<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    insert_documents(state, principal, path, headers, body, "documents.batch").await
}

/// The document whose id is "batch" (its path is the batch route's).
fn named_batch(AppPath(collection): AppPath<String>) -> AppPath<(String, String)> {
    AppPath((collection, "batch".to_owned()))
}

async fn fetch_named_batch(
    state: State<DataPlane>,
    principal: Principal,
    path: AppPath<String>,
) -> Result<Json<DocumentView>, ApiError> {
    fetch(state, principal, named_batch(path)).await
}

async fn replace_named_batch(
    state: State<DataPlane>,
    principal: Principal,
    path: AppPath<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    replace(state, principal, named_batch(path), headers, body).await
}

async fn remove_named_batch(
    state: State<DataPlane>,
    principal: Principal,
    path: AppPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    remove(state, principal, named_batch(path), headers).await
}

async fn insert_documents(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath(collection): AppPath<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
    route: &str,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_BODY_BYTES))?;
    let route = format!("{route} {collection}");
    idempotent(&state, &principal, &headers, &route, &body, async {
        let request: InsertRequest = parse_body(&headers, &body)?;
        let collection = self::collection(&principal, &collection)?;
        let plan = state.plan_of(&principal).await?;
        let cap = MAX_DOCUMENTS.min(plan.max_batch_size as usize);
        if request.documents.is_empty() || request.documents.len() > cap {
            return Err(ApiError::Validation {
                message: format!(
                    "the request has {} documents; send 1 to {cap} per request",
                    request.documents.len()
                ),
                detail: Some("field documents".into()),
            });
        }
        let mut documents = parse_documents(&request.documents, &principal)?;
        let sources: Vec<Source> = documents
            .iter_mut()
            .map(|d| match d.embedding.take() {
                Some(vector) => Source::Given(vector),
                None => Source::Text(d.content.clone()),
            })
            .collect();
        let model = embeddings::text_model(
            &state,
            &principal,
            &collection,
            request.embedding_model.as_deref(),
            &sources,
        )
        .await?;
        state.admit(&principal, Kind::Documents, documents.len() as u64).await?;
        let vectors = embeddings::complete(&state, &principal.project, model.as_deref(), sources).await?;
        let ids: Vec<String> = documents.iter().map(|d| d.id.clone()).collect();
        let writes = documents
            .into_iter()
            .zip(vectors)
            .map(|(document, vector)| RecordWrite {
                id: document.id,
                vector,
                metadata: document.metadata,
                content: Some(document.content),
            })
            .collect();
        // The collection takes the model in the write's transaction (or refuses it, if
        // another write gave it another meanwhile).
        let outcome = records::upsert(&state, &principal, &plan, &collection, writes, model.as_deref()).await?;
        Ok(serde_json::to_value(InsertResponse {
            // Distinct documents: a batch naming an id twice writes the last of them.
            inserted: outcome.affected,
            ids,
            seq: outcome.state.seq,
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DocumentView {
    pub id: String,
    pub content: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub embedding: Vec<f32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Retrieve a document: content, metadata and embedding.
#[utoipa::path(
    get,
    operation_id = "get_document",
    path = "/api/v1/collections/{collection}/documents/{id}",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, body = DocumentView),
        (status = 400, description = "an invalid collection name", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such collection or document", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store is unreachable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn fetch(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath((collection, id)): AppPath<(String, String)>,
) -> Result<Json<DocumentView>, ApiError> {
    principal.require(Scope::Read)?;
    let collection = self::collection(&principal, &collection)?;
    state.admit(&principal, Kind::Queries, 1).await?;
    let record = state
        .store
        .fetch(principal.project_id, &collection, std::slice::from_ref(&id))
        .await?
        .pop();
    let Some(record) = record else {
        return Err(match state.store.namespace(principal.project_id, &collection).await? {
            None => no_collection(&collection),
            Some(_) => no_document(&collection, &id),
        });
    };
    Ok(Json(DocumentView {
        id: record.id,
        content: record.content,
        metadata: record.metadata,
        embedding: record.vector,
        created_at: record.created_at,
        updated_at: record.updated_at,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    /// New content.
    #[schema(value_type = Option<String>, example = "Updated content")]
    content: Option<Value>,
    /// New metadata: replaces the whole object.
    #[schema(value_type = Option<Object>, example = json!({"source": "blog", "updated": true}))]
    metadata: Option<Value>,
    /// A new vector, as numbers or base64.
    #[schema(value_type = Option<crate::vectors::VectorData>)]
    embedding: Option<Value>,
    /// Embed the (new) content again; without it the embedding is kept.
    #[serde(default)]
    regenerate_embedding: bool,
    /// The model for `regenerate_embedding`; default: the model that embedded the collection's text so far, else the deployment's default (`local/all-minilm-l6-v2` unless configured); another than the collection's is a 400.
    embedding_model: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplaceResponse {
    pub id: String,
    pub updated: bool,
    pub seq: i64,
}

/// Update a document's content and metadata, optionally re-embedding it.
#[utoipa::path(
    put,
    operation_id = "update_document",
    path = "/api/v1/collections/{collection}/documents/{id}",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(
        ("collection" = String, Path),
        ("id" = String, Path),
        ("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h"),
    ),
    request_body = ReplaceRequest,
    responses(
        (status = 200, body = ReplaceResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the same idempotency key is in flight, or the text kept changing while it was embedded again", body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such collection or document", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 502, description = "the embedding provider failed", body = quiver_common::error::ErrorEnvelope),
        (status = 503, body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn replace(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath((collection, id)): AppPath<(String, String)>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    let route = format!("documents.replace {collection}/{id}");
    idempotent(&state, &principal, &headers, &route, &body, async {
        let request: ReplaceRequest = parse_body(&headers, &body)?;
        let collection = self::collection(&principal, &collection)?;
        let what = format!("document \"{id}\"");
        let project = &principal.project;
        let content = parse_content(request.content.as_ref(), &what)?;
        let metadata = request
            .metadata
            .as_ref()
            .map(|m| parse_metadata(Some(m), &what).map(|m| MetadataPatch::Replace(without_nulls(m))))
            .transpose()?;
        let vector = request
            .embedding
            .as_ref()
            .map(|v| parse_values(v, project.dimension, project.metric, &what))
            .transpose()?;
        if vector.is_some() && request.regenerate_embedding {
            return Err(ApiError::validation(
                "send either embedding or regenerate_embedding, not both",
            ));
        }
        if content.is_none() && metadata.is_none() && vector.is_none() && !request.regenerate_embedding {
            return Err(ApiError::validation(
                "nothing to update: send content, metadata, embedding or regenerate_embedding",
            ));
        }
        let model = if request.regenerate_embedding {
            Some(
                embeddings::collection_model(&state, &principal, &collection, request.embedding_model.as_deref())
                    .await?,
            )
        } else {
            None
        };
        state.admit(&principal, Kind::Documents, 1).await?;
        let mut patch = RecordPatch {
            metadata,
            vector,
            content,
            metadata_limit: Some(MAX_METADATA_BYTES),
            // The collection takes the model in the update's transaction, or refuses
            // it if another write gave it another meanwhile.
            embedding_model: model,
            embedded_content: None,
        };
        // The stored text, re-embedded, is written only if no other write changed it
        // while it was embedded; if one did, its new text is embedded in turn.
        let mut tries = 0;
        let outcome = loop {
            tries += 1;
            if let Some(model) = &patch.embedding_model {
                let text = match &patch.content {
                    Some(text) => text.clone(),
                    None => {
                        let stored = state
                            .store
                            .fetch(principal.project_id, &collection, std::slice::from_ref(&id))
                            .await?
                            .pop()
                            .ok_or_else(|| no_document(&collection, &id))?
                            .content
                            .ok_or_else(|| ApiError::validation(format!("{what} has no content to embed")))?;
                        patch.embedded_content = Some(stored.clone());
                        stored
                    }
                };
                patch.vector = embeddings::embed(&state, project, model, vec![text]).await?.pop();
            }
            match records::patch(&state, &principal, &collection, &id, &patch).await {
                // Another write changed the text while it was embedded: embed the new
                // text. Not another conflict (the collection took another model).
                Err(ApiError::Conflict(message)) if patch.embedded_content.is_some() => {
                    let stored = state
                        .store
                        .fetch(principal.project_id, &collection, std::slice::from_ref(&id))
                        .await?
                        .pop()
                        .and_then(|record| record.content);
                    if stored == patch.embedded_content {
                        return Err(ApiError::Conflict(message));
                    }
                    if tries == 3 {
                        return Err(ApiError::Conflict(format!(
                            "the text of {what} kept changing while it was embedded; retry"
                        )));
                    }
                }
                other => break other?,
            }
        };
        let Some((outcome, _)) = outcome else {
            return Err(match state.store.namespace(principal.project_id, &collection).await? {
                None => no_collection(&collection),
                Some(_) => no_document(&collection, &id),
            });
        };
        Ok(serde_json::to_value(ReplaceResponse {
            id,
            updated: true,
            seq: outcome.state.seq,
        })
        .map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RemoveResponse {
    pub id: String,
    pub deleted: bool,
    pub seq: i64,
}

/// Delete a document.
#[utoipa::path(
    delete,
    operation_id = "delete_document",
    path = "/api/v1/collections/{collection}/documents/{id}",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(
        ("collection" = String, Path),
        ("id" = String, Path),
        ("x-idempotency-key" = Option<String>, Header, description = "replay-safe retries for 24 h"),
    ),
    responses(
        (status = 200, body = RemoveResponse),
        (status = 400, description = "an invalid collection name or idempotency key", body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such collection or document", body = quiver_common::error::ErrorEnvelope),
        (status = 409, description = "the same idempotency key is in flight", body = quiver_common::error::ErrorEnvelope),
        (status = 422, description = "the idempotency key was used with another request", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 503, body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn remove(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath((collection, id)): AppPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::Write)?;
    let route = format!("documents.delete {collection}/{id}");
    idempotent(&state, &principal, &headers, &route, &[], async {
        let collection = self::collection(&principal, &collection)?;
        state.admit(&principal, Kind::Documents, 1).await?;
        let (deleted, seq) = records::delete(
            &state,
            &principal,
            &collection,
            records::DeleteIf::Live(vec![id.clone()]),
        )
        .await?
        .ok_or_else(|| no_collection(&collection))?;
        if deleted == 0 {
            return Err(no_document(&collection, &id));
        }
        Ok(serde_json::to_value(RemoveResponse { id, deleted: true, seq }).map_err(anyhow::Error::from)?)
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Text to embed and search for (or send `vector`).
    #[schema(value_type = Option<String>, min_length = 1, example = "AI-native database for semantic search")]
    query: Option<Value>,
    /// A query vector, as numbers or base64, instead of `query`.
    #[schema(value_type = Option<crate::vectors::VectorData>)]
    vector: Option<VectorValues>,
    /// 1 to 1,000 (default 10).
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 1000, example = 10)]
    limit: Option<Value>,
    /// Drop results less similar than this.
    #[schema(example = 0.7)]
    min_similarity: Option<f64>,
    /// A metadata filter in the vector API's language, e.g. `{"category": "technology"}`.
    #[schema(value_type = Option<Object>, example = json!({"category": "technology"}))]
    filters: Option<crate::json::UniqueKeys>,
    /// Default true.
    include_metadata: Option<bool>,
    /// `provider/model` for `query`; default: the model that embedded the collection's text so far, else the deployment's default (`local/all-minilm-l6-v2` unless configured); another than the collection's is a 400.
    #[schema(example = "openai/text-embedding-3-small")]
    embedding_model: Option<String>,
    /// `eventual` (default) or `strong`: catch up with the records store first.
    consistency: Option<String>,
}

impl SearchRequest {
    /// Reads a search's body, a query `vector`'s numbers lifted out first where they
    /// can be ([`crate::vector_json`]): the request [`parse_body`] would read, for
    /// less CPU.
    pub fn read(headers: &HeaderMap, body: &[u8]) -> Result<Self, ApiError> {
        crate::vectors::read_with_vector(headers, body, |request: &mut Self| &mut request.vector)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResult {
    pub id: String,
    pub content: Option<String>,
    /// Higher is more similar: cosine similarity, inner product, or 1/(1+distance).
    pub similarity: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Arc<Metadata>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SearchResponse {
    pub results: Vec<SearchResult>,
    /// The model that embedded `query`; null for a `vector` search.
    pub query_embedding_model: Option<String>,
    /// Time spent serving the request, embedding included.
    pub latency_ms: f64,
}

/// Similarity search by text or vector, filtered by metadata.
#[utoipa::path(
    post,
    operation_id = "search_documents",
    path = "/api/v1/collections/{collection}/search",
    tag = "documents",
    security(("api_key_header" = []), ("bearer" = []), ("api_key_query" = [])),
    params(("collection" = String, Path)),
    request_body = SearchRequest,
    responses(
        (status = 200, body = SearchResponse),
        (status = 400, body = quiver_common::error::ErrorEnvelope),
        (status = 401, body = quiver_common::error::ErrorEnvelope),
        (status = 403, body = quiver_common::error::ErrorEnvelope),
        (status = 404, description = "no such collection", body = quiver_common::error::ErrorEnvelope),
        (status = 429, description = "the project's rate limit is spent", body = quiver_common::error::ErrorEnvelope),
        (status = 502, description = "the embedding provider failed", body = quiver_common::error::ErrorEnvelope),
        (status = 503, description = "the records store is unreachable, or the embedding model is unavailable", body = quiver_common::error::ErrorEnvelope),
    )
)]
pub async fn search(
    State(state): State<DataPlane>,
    principal: Principal,
    AppPath(collection): AppPath<String>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let started = Instant::now();
    principal.require(Scope::Read)?;
    let body = body.map_err(crate::json::body_rejection(crate::MAX_REQUEST_BODY_BYTES))?;
    let request = SearchRequest::read(&headers, &body)?;
    let collection = self::collection(&principal, &collection)?;
    let project = &principal.project;
    let limit = parse_top_k(request.limit.as_ref(), "limit")?;
    if let Some(min) = request.min_similarity
        && !min.is_finite()
    {
        return Err(ApiError::validation("min_similarity must be a finite number"));
    }
    let filter = Arc::new(parse_filter(request.filters.as_ref().map(|f| &f.0), "filters")?);
    let strong = strong(request.consistency.as_deref())?;
    /// What the search looks for: text to embed, or a vector as given.
    enum Probe {
        Text(String),
        Vector(Vec<f32>),
    }
    // The request is checked whole before it counts against the rate limit.
    let probe = match (&request.query, request.vector) {
        (Some(_), Some(_)) => return Err(ApiError::validation("send either query or vector, not both")),
        (None, None) => return Err(ApiError::validation("send the query text (or a vector)")),
        (None, Some(vector)) => Probe::Vector(vector.check(project.dimension, project.metric, "the query vector")?),
        (Some(query), None) => Probe::Text(
            parse_content(Some(query), "the query")?
                .ok_or_else(|| ApiError::validation("the query must be a non-empty string"))?,
        ),
    };
    state.admit(&principal, Kind::Queries, 1).await?;
    let (vector, model) = match probe {
        Probe::Vector(vector) => (vector, None),
        Probe::Text(text) => {
            // Refuse an unknown collection before paying for an embedding.
            if state
                .store
                .namespace(principal.project_id, &collection)
                .await?
                .is_none()
            {
                return Err(no_collection(&collection));
            }
            // The query is embedded as the collection's documents were.
            let model =
                embeddings::collection_model(&state, &principal, &collection, request.embedding_model.as_deref())
                    .await?;
            let vector = embeddings::embed(&state, project, &model, vec![text])
                .await?
                .pop()
                .ok_or_else(|| anyhow::anyhow!("the embedder returned no vector"))?;
            (vector, Some(model))
        }
    };
    let query = quiver_engine::Query {
        vector,
        k: limit,
        filter,
        include_values: false,
        strong,
    };
    let outcome = state
        .indexes
        .search(project, &collection, query)
        .await?
        .ok_or_else(|| no_collection(&collection))?;
    let matches: Vec<_> = outcome
        .matches
        .into_iter()
        .filter(|m| request.min_similarity.is_none_or(|min| f64::from(m.score) >= min))
        .collect();
    let ids: Vec<String> = matches.iter().map(|m| m.id.clone()).collect();
    let mut contents: std::collections::HashMap<String, Option<String>> = state
        .store
        .fetch(principal.project_id, &collection, &ids)
        .await?
        .into_iter()
        .map(|record| (record.id, record.content))
        .collect();
    let include_metadata = request.include_metadata.unwrap_or(true);
    let results = matches
        .into_iter()
        // A document deleted since the index answered is not a result.
        .filter_map(|m| {
            let content = contents.remove(&m.id)?;
            Some(SearchResult {
                id: m.id,
                content,
                similarity: m.score,
                metadata: include_metadata.then_some(m.metadata),
            })
        })
        .collect();
    Ok(Json(SearchResponse {
        results,
        query_embedding_model: model,
        latency_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
    }))
}
