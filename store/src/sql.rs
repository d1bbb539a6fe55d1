//! The SQL both backends share. SQLite and Postgres accept the same statements here
//! (`$n` parameters, `ON CONFLICT … DO UPDATE`, `RETURNING`, row values); where they
//! differ, the backend supplies the piece: [`ids_in`](crate::sqlite::SqliteStore) (how
//! to test `id` against a JSON array of ids) and `insert_records` (batch insert).
//!
//! `sql_store!` expands to the `Catalog`, `Records` and `Idempotency` impls for one
//! backend type that has `reader()`/`writer()` pools of database `$db`.

macro_rules! sql_store {
    ($store:ty, $db:ty) => {
        use std::str::FromStr as _;

        use async_trait::async_trait;
        use chrono::{DateTime, Utc};
        use quiver_common::domain::{Metric, Plan, ProjectId, Role, UserId};
        use sqlx::Row as _;
        use sqlx::types::Json;
        use uuid::Uuid;

        use $crate::{
            ApiKey, Catalog, Change, Claim, Idempotency, IdempotencyBegin, Metadata, NamespaceInfo, NamespaceState,
            NewApiKey, NewProject, Project, ProjectUsage, Record, RecordPatch, RecordWrite, Records,
            Snapshot, Snapshots, StoreError, StoreResult, StoredResponse, User, WriteOutcome,
        };

        type Row = <$db as sqlx::Database>::Row;
        type Tx<'c> = sqlx::Transaction<'c, $db>;

        fn corrupt(what: &str, err: impl std::fmt::Display) -> StoreError {
            StoreError::Other(anyhow::anyhow!("corrupt {what} in the database: {err}"))
        }

        fn user_from_row(row: &Row) -> StoreResult<User> {
            Ok(User {
                id: UserId(row.try_get("id")?),
                email: row.try_get("email")?,
                password_hash: row.try_get("password_hash")?,
                created_at: row.try_get("created_at")?,
                session_epoch: row.try_get("session_epoch")?,
            })
        }

        fn plan_from_row(row: &Row) -> StoreResult<Plan> {
            let positive = |col: &str| -> StoreResult<u32> {
                let v: i32 = row.try_get(col)?;
                u32::try_from(v).map_err(|e| corrupt(col, e))
            };
            let max_vectors: i64 = row.try_get("max_vectors")?;
            Ok(Plan {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                queries_per_minute: positive("queries_per_minute")?,
                documents_per_minute: positive("documents_per_minute")?,
                max_vectors: u64::try_from(max_vectors).map_err(|e| corrupt("max_vectors", e))?,
                max_namespaces: positive("max_namespaces")?,
                max_batch_size: positive("max_batch_size")?,
            })
        }

        const PROJECT_COLUMNS: &str = "id, owner_id, name, dimension, metric, plan_id, created_at, updated_at";

        fn project_from_row(row: &Row) -> StoreResult<Project> {
            let dimension: i32 = row.try_get("dimension")?;
            let metric: String = row.try_get("metric")?;
            Ok(Project {
                id: ProjectId(row.try_get("id")?),
                owner_id: UserId(row.try_get("owner_id")?),
                name: row.try_get("name")?,
                dimension: u32::try_from(dimension).map_err(|e| corrupt("dimension", e))?,
                metric: Metric::from_str(&metric).map_err(|e| corrupt("metric", e))?,
                plan_id: row.try_get("plan_id")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        const KEY_COLUMNS: &str =
            "id, project_id, label, role, secret_hash, created_at, expires_at, last_used_at, revoked_at";

        fn key_from_row(row: &Row) -> StoreResult<ApiKey> {
            let role: String = row.try_get("role")?;
            Ok(ApiKey {
                id: row.try_get("id")?,
                project_id: ProjectId(row.try_get("project_id")?),
                label: row.try_get("label")?,
                role: Role::from_str(&role).map_err(|e| corrupt("role", e))?,
                secret_hash: row.try_get("secret_hash")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                last_used_at: row.try_get("last_used_at")?,
                revoked_at: row.try_get("revoked_at")?,
            })
        }

        const RECORD_COLUMNS: &str = "id, vector, metadata, content, seq, deleted, created_at, updated_at";
        /// The columns `user_from_row` reads.
        const USER_COLUMNS: &str = "id, email, password_hash, created_at, session_epoch";

        fn record_from_row(row: &Row) -> StoreResult<Record> {
            let bytes: Vec<u8> = row.try_get("vector")?;
            let Json(metadata): Json<Metadata> = row.try_get("metadata")?;
            Ok(Record {
                id: row.try_get("id")?,
                vector: $crate::decode_vector(&bytes).map_err(|e| corrupt("vector", e))?,
                metadata,
                content: row.try_get("content")?,
                seq: row.try_get("seq")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn ids_json(ids: impl IntoIterator<Item = impl AsRef<str>>) -> String {
            serde_json::Value::Array(ids.into_iter().map(|id| id.as_ref().into()).collect()).to_string()
        }

        fn state_from_row(row: &Row) -> StoreResult<NamespaceState> {
            Ok(NamespaceState {
                epoch: row.try_get("epoch")?,
                seq: row.try_get("seq")?,
            })
        }

        /// Takes the namespace's next seq (creating it when `create`), which also
        /// locks its row until the transaction ends: writers of one namespace queue here.
        async fn next_seq(
            tx: &mut Tx<'_>,
            project: ProjectId,
            namespace: &str,
            create: bool,
        ) -> StoreResult<Option<NamespaceState>> {
            let row = if create {
                sqlx::query(
                    "INSERT INTO namespaces (project_id, name, epoch, seq, live_count, created_at)
                     VALUES ($1, $2, $3, 1, 0, $4)
                     ON CONFLICT (project_id, name) DO UPDATE SET seq = namespaces.seq + 1
                     RETURNING epoch, seq",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(Uuid::now_v7())
                .bind(Utc::now())
                .fetch_optional(&mut **tx)
                .await
                .map_err(|err| match err {
                    // The project's row is gone: deleted while this write was on its way.
                    sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                        StoreError::Invalid(format!("project {project} was deleted"))
                    }
                    other => other.into(),
                })?
            } else {
                sqlx::query(
                    "UPDATE namespaces SET seq = seq + 1 WHERE project_id = $1 AND name = $2 RETURNING epoch, seq",
                )
                .bind(project.0)
                .bind(namespace)
                .fetch_optional(&mut **tx)
                .await?
            };
            row.as_ref().map(state_from_row).transpose()
        }

        /// Holds a write to the namespace's embedding model, in its transaction, after
        /// next_seq took the namespace's row lock: the namespace takes `model` if it
        /// has none, and a namespace of another refuses the write. Of two first writes
        /// by two models, the second waits for the first and is refused.
        async fn hold_model(tx: &mut Tx<'_>, project: ProjectId, namespace: &str, model: &str) -> StoreResult<()> {
            let recorded: Option<String> = sqlx::query_scalar(
                "UPDATE namespaces SET embedding_model = COALESCE(embedding_model, $3)
                 WHERE project_id = $1 AND name = $2 RETURNING embedding_model",
            )
            .bind(project.0)
            .bind(namespace)
            .bind(model)
            .fetch_one(&mut **tx)
            .await?;
            match recorded {
                Some(recorded) if recorded != model => {
                    Err(StoreError::Invalid($crate::model_mismatch(namespace, &recorded, model)))
                }
                _ => Ok(()),
            }
        }

        async fn add_live(tx: &mut Tx<'_>, project: ProjectId, namespace: &str, delta: i64) -> StoreResult<()> {
            if delta != 0 {
                sqlx::query("UPDATE namespaces SET live_count = live_count + $3 WHERE project_id = $1 AND name = $2")
                    .bind(project.0)
                    .bind(namespace)
                    .bind(delta)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        /// Tombstones the live records with these ids in `tx`, which has taken the
        /// namespace's next seq (`state`), and commits; rolls back when none is live.
        async fn tombstone(
            mut tx: Tx<'_>,
            project: ProjectId,
            namespace: &str,
            state: NamespaceState,
            ids: &[String],
        ) -> StoreResult<WriteOutcome> {
            let done = sqlx::query(&format!(
                "UPDATE records SET deleted = TRUE, vector = $3, metadata = $4, content = NULL, seq = $5, updated_at = $6
                 WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND {}",
                <$store>::ids_in("$7")
            ))
            .bind(project.0)
            .bind(namespace)
            .bind(Vec::<u8>::new())
            .bind(Json(Metadata::new()))
            .bind(state.seq)
            .bind(Utc::now())
            .bind(ids_json(ids))
            .execute(&mut *tx)
            .await?;
            let affected = done.rows_affected();
            if affected == 0 {
                // Nothing to delete: roll back so no seq is spent on a no-op.
                tx.rollback().await?;
                let before = NamespaceState { seq: state.seq - 1, ..state };
                return Ok(WriteOutcome { state: before, affected: 0 });
            }
            add_live(&mut tx, project, namespace, -(affected as i64)).await?;
            tx.commit().await?;
            Ok(WriteOutcome { state, affected })
        }

        /// Whether every record in `seen` is live with the seq it was seen at, read in
        /// `tx` after it has taken the namespace's seq (so no writer can change them
        /// before it commits).
        async fn unchanged(tx: &mut Tx<'_>, project: ProjectId, namespace: &str, seen: &[$crate::Seen]) -> StoreResult<bool> {
            let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
                "SELECT id, seq FROM records
                 WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND {}",
                <$store>::ids_in("$3")
            ))
            .bind(project.0)
            .bind(namespace)
            .bind(ids_json(seen.iter().map(|s| &s.id)))
            .fetch_all(&mut **tx)
            .await?;
            let now: std::collections::HashMap<String, i64> = rows.into_iter().collect();
            Ok(seen.iter().all(|s| now.get(&s.id) == Some(&s.seq)))
        }

        fn millis(at: DateTime<Utc>) -> i64 {
            at.timestamp_millis()
        }

        #[async_trait]
        impl Catalog for $store {
            async fn create_user(&self, email: &str, password_hash: &str) -> StoreResult<User> {
                let row = sqlx::query(&format!(
                    "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)
                     RETURNING {USER_COLUMNS}"
                ))
                .bind(UserId::new().0)
                .bind(email)
                .bind(password_hash)
                .bind(Utc::now())
                .fetch_one(self.writer())
                .await
                .map_err(|err| match StoreError::from(err) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!("an account with email {email} already exists")),
                    other => other,
                })?;
                user_from_row(&row)
            }

            async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
                let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"))
                    .bind(email)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn user(&self, id: UserId) -> StoreResult<Option<User>> {
                let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(user_from_row).transpose()
            }

            async fn end_sessions(&self, id: UserId) -> StoreResult<bool> {
                let done = sqlx::query("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1")
                    .bind(id.0)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn plans(&self) -> StoreResult<Vec<Plan>> {
                let rows = sqlx::query("SELECT * FROM plans ORDER BY sort_order")
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(plan_from_row).collect()
            }

            async fn plan(&self, id: &str) -> StoreResult<Option<Plan>> {
                let row = sqlx::query("SELECT * FROM plans WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(plan_from_row).transpose()
            }

            async fn create_project(&self, project: NewProject) -> StoreResult<Project> {
                let dimension = i32::try_from(project.dimension)
                    .map_err(|_| StoreError::Invalid(format!("dimension {} is out of range", project.dimension)))?;
                let now = Utc::now();
                let row = sqlx::query(&format!(
                    "INSERT INTO projects ({PROJECT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                     RETURNING {PROJECT_COLUMNS}"
                ))
                .bind(quiver_common::domain::ProjectId::new().0)
                .bind(project.owner_id.0)
                .bind(&project.name)
                .bind(dimension)
                .bind(project.metric.as_str())
                .bind(&project.plan_id)
                .bind(now)
                .fetch_one(self.writer())
                .await?;
                project_from_row(&row)
            }

            async fn project(&self, id: ProjectId) -> StoreResult<Option<Project>> {
                let row = sqlx::query(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(project_from_row).transpose()
            }

            async fn projects_of(&self, owner: UserId) -> StoreResult<Vec<Project>> {
                let rows = sqlx::query(&format!(
                    "SELECT {PROJECT_COLUMNS} FROM projects WHERE owner_id = $1 ORDER BY created_at, id"
                ))
                .bind(owner.0)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(project_from_row).collect()
            }

            async fn all_projects(&self) -> StoreResult<Vec<Project>> {
                let rows = sqlx::query(&format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY created_at, id"))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(project_from_row).collect()
            }

            async fn set_project_plan(&self, id: ProjectId, plan_id: &str) -> StoreResult<Option<Project>> {
                let row = sqlx::query(&format!(
                    "UPDATE projects SET plan_id = $2, updated_at = $3 WHERE id = $1 RETURNING {PROJECT_COLUMNS}"
                ))
                .bind(id.0)
                .bind(plan_id)
                .bind(Utc::now())
                .fetch_optional(self.writer())
                .await?;
                row.as_ref().map(project_from_row).transpose()
            }

            async fn delete_project(&self, id: ProjectId) -> StoreResult<bool> {
                let done = sqlx::query("DELETE FROM projects WHERE id = $1")
                    .bind(id.0)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn project_usage(&self, id: ProjectId) -> StoreResult<ProjectUsage> {
                let row = sqlx::query(
                    "SELECT CAST(COALESCE(SUM(live_count), 0) AS BIGINT) AS vectors, COUNT(*) AS namespaces
                     FROM namespaces WHERE project_id = $1",
                )
                .bind(id.0)
                .fetch_one(self.reader())
                .await?;
                let vectors: i64 = row.try_get("vectors")?;
                let namespaces: i64 = row.try_get("namespaces")?;
                Ok(ProjectUsage {
                    vectors: u64::try_from(vectors).map_err(|e| corrupt("live_count", e))?,
                    namespaces: u64::try_from(namespaces).map_err(|e| corrupt("namespace count", e))?,
                })
            }

            async fn create_api_key(&self, key: NewApiKey) -> StoreResult<ApiKey> {
                let row = sqlx::query(&format!(
                    "INSERT INTO api_keys (id, project_id, label, role, secret_hash, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {KEY_COLUMNS}"
                ))
                .bind(&key.id)
                .bind(key.project_id.0)
                .bind(&key.label)
                .bind(key.role.as_str())
                .bind(&key.secret_hash)
                .bind(Utc::now())
                .bind(key.expires_at)
                .fetch_one(self.writer())
                .await?;
                key_from_row(&row)
            }

            async fn api_key(&self, id: &str) -> StoreResult<Option<ApiKey>> {
                let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(key_from_row).transpose()
            }

            async fn api_keys_of(&self, project: ProjectId) -> StoreResult<Vec<ApiKey>> {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE project_id = $1 ORDER BY created_at, id"
                ))
                .bind(project.0)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(key_from_row).collect()
            }

            async fn revoke_api_key(&self, project: ProjectId, id: &str) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $3 WHERE project_id = $1 AND id = $2 AND revoked_at IS NULL",
                )
                .bind(project.0)
                .bind(id)
                .bind(Utc::now())
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn keys_revoked_since(&self, since: DateTime<Utc>) -> StoreResult<Vec<ApiKey>> {
                let rows = sqlx::query(&format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at >= $1 ORDER BY revoked_at, id"
                ))
                .bind(since)
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(key_from_row).collect()
            }

            async fn touch_api_key(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
                sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at)
                    .execute(self.writer())
                    .await?;
                Ok(())
            }
        }

        #[async_trait]
        impl Records for $store {
            async fn upsert(
                &self,
                project: ProjectId,
                namespace: &str,
                records: &[RecordWrite],
            ) -> StoreResult<WriteOutcome> {
                let outcome = self.upsert_capped(project, namespace, records, None, None).await?;
                Ok(outcome.expect("a write with nothing seen always goes ahead"))
            }

            async fn upsert_within(
                &self,
                project: ProjectId,
                namespace: &str,
                records: &[RecordWrite],
                caps: &$crate::Caps,
            ) -> StoreResult<WriteOutcome> {
                let outcome = self.upsert_capped(project, namespace, records, Some(caps), None).await?;
                Ok(outcome.expect("a write with nothing seen always goes ahead"))
            }

            async fn upsert_unchanged(
                &self,
                project: ProjectId,
                namespace: &str,
                records: &[RecordWrite],
                seen: &[$crate::Seen],
                caps: &$crate::Caps,
            ) -> StoreResult<Option<WriteOutcome>> {
                self.upsert_capped(project, namespace, records, Some(caps), Some(seen)).await
            }


            async fn fetch(&self, project: ProjectId, namespace: &str, ids: &[String]) -> StoreResult<Vec<Record>> {
                let rows = sqlx::query(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND {}",
                    Self::ids_in("$3")
                ))
                .bind(project.0)
                .bind(namespace)
                .bind(ids_json(ids))
                .fetch_all(self.reader())
                .await?;
                let mut found: std::collections::HashMap<String, Record> = rows
                    .iter()
                    .map(|row| record_from_row(row).map(|r| (r.id.clone(), r)))
                    .collect::<StoreResult<_>>()?;
                Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
            }

            async fn update(
                &self,
                project: ProjectId,
                namespace: &str,
                id: &str,
                patch: &RecordPatch,
            ) -> StoreResult<Option<(WriteOutcome, Record)>> {
                let mut tx = self.begin_write().await?;
                let Some(state) = next_seq(&mut tx, project, namespace, false).await? else {
                    return Ok(None);
                };
                let row = sqlx::query(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE project_id = $1 AND namespace = $2 AND id = $3 AND deleted = FALSE"
                ))
                .bind(project.0)
                .bind(namespace)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(mut record) = row.as_ref().map(record_from_row).transpose()? else {
                    // Dropping the transaction rolls the seq back: nothing changed.
                    return Ok(None);
                };
                if let Some(text) = &patch.embedded_content
                    && record.content.as_ref() != Some(text)
                {
                    // Dropping the transaction rolls it back.
                    return Err(StoreError::Conflict(format!(
                        "the content of \"{id}\" changed while it was embedded"
                    )));
                }
                match &patch.metadata {
                    Some($crate::MetadataPatch::Merge(metadata)) => $crate::merge_metadata(&mut record.metadata, metadata),
                    Some($crate::MetadataPatch::Replace(metadata)) => record.metadata.clone_from(metadata),
                    None => {}
                }
                if let Some(limit) = patch.metadata_limit {
                    let bytes = serde_json::to_vec(&record.metadata).map_or(usize::MAX, |json| json.len());
                    if bytes > limit {
                        // Dropping the transaction rolls it back.
                        return Err(StoreError::Invalid(format!(
                            "the update would leave \"{id}\" with {bytes} bytes of metadata; the limit is {limit}"
                        )));
                    }
                }
                if let Some(model) = patch.embedding_model.as_deref() {
                    // Dropping the transaction on a refusal rolls it back.
                    hold_model(&mut tx, project, namespace, model).await?;
                }
                if let Some(vector) = &patch.vector {
                    record.vector.clone_from(vector);
                }
                if let Some(content) = &patch.content {
                    record.content = Some(content.clone());
                }
                record.seq = state.seq;
                record.updated_at = Utc::now();
                sqlx::query(
                    "UPDATE records SET vector = $4, metadata = $5, content = $6, seq = $7, updated_at = $8
                     WHERE project_id = $1 AND namespace = $2 AND id = $3",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(id)
                .bind($crate::encode_vector(&record.vector))
                .bind(Json(&record.metadata))
                .bind(&record.content)
                .bind(record.seq)
                .bind(record.updated_at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some((WriteOutcome { state, affected: 1 }, record)))
            }

            async fn delete(
                &self,
                project: ProjectId,
                namespace: &str,
                ids: &[String],
            ) -> StoreResult<Option<WriteOutcome>> {
                let mut tx = self.begin_write().await?;
                let Some(state) = next_seq(&mut tx, project, namespace, false).await? else {
                    return Ok(None);
                };
                tombstone(tx, project, namespace, state, ids).await.map(Some)
            }

            async fn delete_matching(
                &self,
                project: ProjectId,
                namespace: &str,
                ids: &[String],
                still_matches: &(dyn for<'m> Fn(&'m Metadata) -> bool + Send + Sync),
            ) -> StoreResult<Option<(WriteOutcome, Vec<String>)>> {
                let mut tx = self.begin_write().await?;
                // Taking the seq holds off the namespace's other writers until commit.
                let Some(state) = next_seq(&mut tx, project, namespace, false).await? else {
                    return Ok(None);
                };
                let rows = sqlx::query(&format!(
                    "SELECT id, metadata FROM records
                     WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND {}",
                    Self::ids_in("$3")
                ))
                .bind(project.0)
                .bind(namespace)
                .bind(ids_json(ids))
                .fetch_all(&mut *tx)
                .await?;
                let mut matching = Vec::with_capacity(rows.len());
                for row in &rows {
                    let Json(metadata): Json<Metadata> = row.try_get("metadata")?;
                    if still_matches(&metadata) {
                        matching.push(row.try_get::<String, _>("id")?);
                    }
                }
                let outcome = tombstone(tx, project, namespace, state, &matching).await?;
                Ok(Some((outcome, matching)))
            }

            async fn delete_unchanged(
                &self,
                project: ProjectId,
                namespace: &str,
                seen: &[$crate::Seen],
            ) -> StoreResult<Option<WriteOutcome>> {
                let mut tx = self.begin_write().await?;
                let Some(state) = next_seq(&mut tx, project, namespace, false).await? else {
                    return Ok(None);
                };
                if !unchanged(&mut tx, project, namespace, seen).await? {
                    // Dropping the transaction rolls the seq back.
                    return Ok(None);
                }
                let ids: Vec<String> = seen.iter().map(|s| s.id.clone()).collect();
                tombstone(tx, project, namespace, state, &ids).await.map(Some)
            }


            async fn changes_since(
                &self,
                project: ProjectId,
                namespace: &str,
                after: i64,
                limit: u32,
                horizon_known: i64,
            ) -> StoreResult<Vec<Change>> {
                let rows = sqlx::query(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE project_id = $1 AND namespace = $2 AND seq > $3 ORDER BY seq, id LIMIT $4"
                ))
                .bind(project.0)
                .bind(namespace)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                if after > 0 {
                    // Read after the records: a purge that committed before them has
                    // raised the horizon by now, so missing tombstones never go unnoticed.
                    let horizon = self.horizon(project, namespace).await?;
                    if after < horizon && horizon > horizon_known {
                        return Err(StoreError::Compacted { horizon });
                    }
                }
                rows.iter()
                    .map(|row| {
                        if row.try_get::<bool, _>("deleted")? {
                            Ok(Change::Delete {
                                id: row.try_get("id")?,
                                seq: row.try_get("seq")?,
                            })
                        } else {
                            record_from_row(row).map(Change::Upsert)
                        }
                    })
                    .collect()
            }

            async fn list_ids(
                &self,
                project: ProjectId,
                namespace: &str,
                prefix: Option<&str>,
                after: Option<&str>,
                limit: u32,
            ) -> StoreResult<Vec<String>> {
                let ids = sqlx::query_scalar(
                    "SELECT id FROM records
                     WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE
                       AND id > $3 AND substr(id, 1, length($4)) = $4
                     ORDER BY id LIMIT $5",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(after.unwrap_or(""))
                .bind(prefix.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                Ok(ids)
            }

            async fn scan(
                &self,
                project: ProjectId,
                namespace: &str,
                after: Option<&str>,
                limit: u32,
            ) -> StoreResult<Vec<Record>> {
                let rows = sqlx::query(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND id > $3
                     ORDER BY id LIMIT $4"
                ))
                .bind(project.0)
                .bind(namespace)
                .bind(after.unwrap_or(""))
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(record_from_row).collect()
            }

            async fn horizon(&self, project: ProjectId, namespace: &str) -> StoreResult<i64> {
                let horizon: Option<i64> =
                    sqlx::query_scalar("SELECT horizon FROM namespaces WHERE project_id = $1 AND name = $2")
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(horizon.unwrap_or(0))
            }

            async fn namespace(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<NamespaceState>> {
                let row = sqlx::query("SELECT epoch, seq FROM namespaces WHERE project_id = $1 AND name = $2")
                    .bind(project.0)
                    .bind(namespace)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(state_from_row).transpose()
            }

            async fn embedding_model(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<String>> {
                let model: Option<Option<String>> =
                    sqlx::query_scalar("SELECT embedding_model FROM namespaces WHERE project_id = $1 AND name = $2")
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_optional(self.reader())
                        .await?;
                Ok(model.flatten())
            }

            async fn namespaces(&self, project: ProjectId) -> StoreResult<Vec<NamespaceInfo>> {
                let rows = sqlx::query(
                    "SELECT name, epoch, seq, live_count FROM namespaces WHERE project_id = $1 ORDER BY name",
                )
                .bind(project.0)
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|row| {
                        let count: i64 = row.try_get("live_count")?;
                        Ok(NamespaceInfo {
                            name: row.try_get("name")?,
                            epoch: row.try_get("epoch")?,
                            seq: row.try_get("seq")?,
                            count: u64::try_from(count).map_err(|e| corrupt("live_count", e))?,
                        })
                    })
                    .collect()
            }

            async fn delete_namespace(&self, project: ProjectId, namespace: &str) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                // Lock the namespace's row first (as writers and snapshots do), then the
                // records and snapshots, explicitly: a large namespace should not rely on
                // a cascade's plan.
                lock_namespace(&mut tx, project, namespace).await?;
                for table in ["records", "snapshot_chunks", "snapshots"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE project_id = $1 AND namespace = $2"))
                        .bind(project.0)
                        .bind(namespace)
                        .execute(&mut *tx)
                        .await?;
                }
                let done = sqlx::query("DELETE FROM namespaces WHERE project_id = $1 AND name = $2")
                    .bind(project.0)
                    .bind(namespace)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }
        }

        /// Locks a namespace's row until the transaction ends, by a no-op update (writers
        /// lock it by taking the next seq), and returns its epoch and horizon; `None`
        /// when there is no such namespace. Whoever also touches its records takes this
        /// lock first, so no two transactions wait on each other the other way round.
        async fn lock_namespace(
            tx: &mut Tx<'_>,
            project: ProjectId,
            namespace: &str,
        ) -> StoreResult<Option<(Uuid, i64)>> {
            let locked = sqlx::query_as(
                "UPDATE namespaces SET horizon = horizon WHERE project_id = $1 AND name = $2 RETURNING epoch, horizon",
            )
            .bind(project.0)
            .bind(namespace)
            .fetch_optional(&mut **tx)
            .await?;
            Ok(locked)
        }

        /// Deletes one snapshot's chunks (the current one's, or an upload that lost).
        async fn delete_chunks<'e>(executor: impl sqlx::Executor<'e, Database = $db>, id: Uuid) -> StoreResult<()> {
            sqlx::query("DELETE FROM snapshot_chunks WHERE snapshot_id = $1")
                .bind(id)
                .execute(executor)
                .await?;
            Ok(())
        }

        #[async_trait]
        impl Snapshots for $store {
            async fn save_snapshot(&self, project: ProjectId, namespace: &str, snapshot: &Snapshot) -> StoreResult<bool> {
                // Cheap refusal first, so pods that hold the same index upload it once.
                let stored: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM snapshots WHERE project_id = $1 AND namespace = $2")
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_optional(self.reader())
                        .await?;
                if stored.is_some_and(|seq| seq >= snapshot.seq) {
                    return Ok(false);
                }
                // Upload the chunks under a new id (a UUIDv7: it tells when the upload
                // began), a chunk a statement, so writers get in between them (on SQLite
                // they share one connection with this upload). Chunks nothing points to
                // yet are invisible; those of an upload that never got to its switch
                // (a crash) are deleted by `purge_orphan_chunks`.
                let id = Uuid::now_v7();
                let chunks: Vec<&[u8]> = snapshot.bytes.chunks($crate::SNAPSHOT_CHUNK).collect();
                for (i, chunk) in chunks.iter().enumerate() {
                    let inserted = sqlx::query(
                        "INSERT INTO snapshot_chunks (snapshot_id, chunk, project_id, namespace, bytes)
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(i as i32)
                    .bind(project.0)
                    .bind(namespace)
                    .bind(*chunk)
                    .execute(self.writer())
                    .await;
                    if let Err(err) = inserted.map_err(StoreError::from) {
                        delete_chunks(self.writer(), id).await?;
                        return match err {
                            // The namespace is gone.
                            StoreError::Invalid(_) => Ok(false),
                            err => Err(err),
                        };
                    }
                }
                let switched = self.switch_snapshot(project, namespace, snapshot, id, chunks.len()).await;
                // Not after an error: the switch may have committed with its answer
                // lost, and its chunks be the snapshot now. If it did not, nothing points
                // to them and `purge_orphan_chunks` deletes them.
                if let Ok(false) = switched {
                    delete_chunks(self.writer(), id).await?;
                }
                switched
            }

            async fn purge_orphan_chunks(&self, older_than: chrono::Duration) -> StoreResult<u64> {
                let orphans: Vec<Uuid> = sqlx::query_scalar(
                    "SELECT DISTINCT snapshot_id FROM snapshot_chunks
                     WHERE snapshot_id NOT IN (SELECT id FROM snapshots)",
                )
                .fetch_all(self.reader())
                .await?;
                let cutoff = Utc::now() - older_than;
                let mut purged = 0;
                for id in orphans {
                    // An upload in progress has no snapshot row yet either: only those
                    // begun long enough ago are abandoned.
                    let began = id.get_timestamp().map(|at| {
                        let (secs, nanos) = at.to_unix();
                        DateTime::<Utc>::from_timestamp(secs as i64, nanos).unwrap_or_default()
                    });
                    if began.is_some_and(|began| began < cutoff) {
                        delete_chunks(self.writer(), id).await?;
                        purged += 1;
                    }
                }
                Ok(purged)
            }

            async fn snapshot(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<Snapshot>> {
                // A newer snapshot may replace this one while its chunks are read: then
                // its chunks are gone, and the newer one is read instead. A snapshot
                // still there with a chunk missing, or of another size than it says, is
                // damaged: it is discarded (the records are the truth, and the index
                // rebuilt from them is snapshotted again), not an error on every load.
                let mut missing_a_chunk = None;
                for _ in 0..5 {
                    let Some(header) = sqlx::query(
                        "SELECT id, epoch, seq, size, chunks FROM snapshots WHERE project_id = $1 AND namespace = $2",
                    )
                    .bind(project.0)
                    .bind(namespace)
                    .fetch_optional(self.reader())
                    .await?
                    else {
                        return Ok(None);
                    };
                    let (id, epoch, seq): (Uuid, Uuid, i64) =
                        (header.try_get("id")?, header.try_get("epoch")?, header.try_get("seq")?);
                    let size: i64 = header.try_get("size")?;
                    let chunks: i32 = header.try_get("chunks")?;
                    let size = usize::try_from(size).map_err(|e| corrupt("snapshot size", e))?;
                    let mut bytes = Vec::with_capacity(size.min(chunks.max(0) as usize * $crate::SNAPSHOT_CHUNK));
                    let mut whole = true;
                    // Chunk by chunk, so no result set holds the whole snapshot twice over.
                    for i in 0..chunks {
                        let chunk: Option<Vec<u8>> = sqlx::query_scalar(
                            "SELECT bytes FROM snapshot_chunks WHERE snapshot_id = $1 AND chunk = $2",
                        )
                        .bind(id)
                        .bind(i)
                        .fetch_optional(self.reader())
                        .await?;
                        match chunk {
                            Some(chunk) => bytes.extend_from_slice(&chunk),
                            None => {
                                whole = false;
                                break;
                            }
                        }
                    }
                    let damage = if !whole && missing_a_chunk != Some(id) {
                        missing_a_chunk = Some(id);
                        continue; // replaced meanwhile, most likely: read again
                    } else if !whole {
                        format!("chunks missing of the {chunks} it has")
                    } else if bytes.len() != size {
                        format!("{} bytes stored, {size} expected", bytes.len())
                    } else {
                        return Ok(Some(Snapshot { epoch, seq, bytes }));
                    };
                    tracing::warn!(project_id = %project, namespace, seq, damage,
                        "the stored index snapshot is damaged: discarded, the index is rebuilt from the records");
                    self.discard_snapshot(project, namespace, seq).await?;
                    return Ok(None);
                }
                Err(StoreError::Other(anyhow::anyhow!(
                    "the snapshot of {namespace} kept changing while it was read"
                )))
            }

            async fn snapshot_size(&self, project: ProjectId, namespace: &str) -> StoreResult<Option<u64>> {
                let size: Option<i64> =
                    sqlx::query_scalar("SELECT size FROM snapshots WHERE project_id = $1 AND namespace = $2")
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_optional(self.reader())
                        .await?;
                size.map(|size| u64::try_from(size).map_err(|e| corrupt("snapshot size", e)))
                    .transpose()
            }

            async fn discard_snapshot(&self, project: ProjectId, namespace: &str, seq: i64) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                // The namespace's row first, as every writer of its snapshot takes it
                // (a namespace's delete locks it and then deletes the snapshot).
                if lock_namespace(&mut tx, project, namespace).await?.is_none() {
                    return Ok(false);
                }
                let id: Option<Uuid> = sqlx::query_scalar(
                    "DELETE FROM snapshots WHERE project_id = $1 AND namespace = $2 AND seq = $3 RETURNING id",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(seq)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(id) = id else {
                    return Ok(false);
                };
                delete_chunks(&mut *tx, id).await?;
                tx.commit().await?;
                Ok(true)
            }
        }

        impl $store {
            /// [`Records::upsert`], within `caps` when given (see
            /// [`Records::upsert_within`]), and only if the records `seen` are unchanged
            /// when given (`None` if not; see [`Records::upsert_unchanged`]).
            async fn upsert_capped(
                &self,
                project: ProjectId,
                namespace: &str,
                records: &[RecordWrite],
                caps: Option<&$crate::Caps>,
                seen: Option<&[$crate::Seen]>,
            ) -> StoreResult<Option<WriteOutcome>> {
                let batch = $crate::last_write_wins(records);
                let now = Utc::now();
                let mut tx = self.begin_write().await?;
                let usage = match caps {
                    None => None,
                    Some(caps) => {
                        // Capped writes of one project take turns from here to commit
                        // (on SQLite every write already does: one writer).
                        Self::lock_project(&mut tx, project).await?;
                        let row = sqlx::query(
                            "SELECT CAST(COALESCE(SUM(live_count), 0) AS BIGINT) AS vectors, COUNT(*) AS namespaces,
                                    CAST(COALESCE(SUM(CASE WHEN name = $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS this
                             FROM namespaces WHERE project_id = $1",
                        )
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_one(&mut *tx)
                        .await?;
                        let (vectors, namespaces, this): (i64, i64, i64) =
                            (row.try_get("vectors")?, row.try_get("namespaces")?, row.try_get("this")?);
                        if this == 0 && namespaces as u64 >= caps.namespaces {
                            return Err(StoreError::OverCap(format!(
                                "the {} plan allows {} namespaces and the project has {namespaces}: delete one or change plan",
                                caps.plan, caps.namespaces
                            )));
                        }
                        Some((caps, vectors))
                    }
                };
                let state = next_seq(&mut tx, project, namespace, true)
                    .await?
                    .ok_or_else(|| StoreError::Other(anyhow::anyhow!("namespace upsert returned no row")))?;
                if let Some(model) = caps.and_then(|caps| caps.embedding_model.as_deref()) {
                    // Dropping the transaction on a refusal rolls it back, the new seq too.
                    hold_model(&mut tx, project, namespace, model).await?;
                }
                if let Some(seen) = seen
                    && !unchanged(&mut tx, project, namespace, seen).await?
                {
                    // Dropping the transaction rolls it back, the namespace's new seq too.
                    return Ok(None);
                }
                // A write of records it has just seen live (NQL's UPDATE) knows how many
                // of them are: all. Otherwise count them.
                let seen_live: std::collections::HashSet<&str> =
                    seen.unwrap_or_default().iter().map(|s| s.id.as_str()).collect();
                let already_live: i64 = if seen.is_some() && batch.iter().all(|r| seen_live.contains(r.id.as_str())) {
                    batch.len() as i64
                } else {
                    sqlx::query_scalar(&format!(
                        "SELECT COUNT(*) FROM records
                         WHERE project_id = $1 AND namespace = $2 AND deleted = FALSE AND {}",
                        Self::ids_in("$3")
                    ))
                    .bind(project.0)
                    .bind(namespace)
                    .bind(ids_json(batch.iter().map(|r| &r.id)))
                    .fetch_one(&mut *tx)
                    .await?
                };
                let added = batch.len() as i64 - already_live;
                if let Some((caps, vectors)) = usage
                    && (vectors + added) as u64 > caps.vectors
                {
                    // Dropping the transaction rolls it back, the namespace's new seq too.
                    return Err(StoreError::OverCap(format!(
                        "the {} plan allows {} vectors; the project has {vectors} and this write adds {added}",
                        caps.plan, caps.vectors
                    )));
                }
                Self::insert_records(&mut tx, project, namespace, state.seq, now, &batch).await?;
                add_live(&mut tx, project, namespace, added).await?;
                tx.commit().await?;
                Ok(Some(WriteOutcome {
                    state,
                    affected: batch.len() as u64,
                }))
            }

            /// Points the namespace at uploaded chunks, in one short transaction that
            /// locks the namespace's row first (as writers do, so the two never
            /// deadlock), then purges the tombstones the snapshot covers. The horizon
            /// is the seq of the newest snapshot stored (kept when one is discarded).
            async fn switch_snapshot(
                &self,
                project: ProjectId,
                namespace: &str,
                snapshot: &Snapshot,
                id: Uuid,
                chunks: usize,
            ) -> StoreResult<bool> {
                let mut tx = self.begin_write().await?;
                // The horizon is the seq of the newest snapshot stored, so it also tells
                // whether a newer one got in first.
                let horizon = match lock_namespace(&mut tx, project, namespace).await? {
                    Some((epoch, horizon)) if epoch == snapshot.epoch => horizon,
                    _ => return Ok(false), // gone, or created anew
                };
                let previous: Option<(Uuid, i64)> =
                    sqlx::query_as("SELECT id, seq FROM snapshots WHERE project_id = $1 AND namespace = $2")
                        .bind(project.0)
                        .bind(namespace)
                        .fetch_optional(&mut *tx)
                        .await?;
                if horizon > snapshot.seq || previous.is_some_and(|(_, seq)| seq >= snapshot.seq) {
                    return Ok(false); // a newer one got in first
                }
                // Every chunk is there: one purged as an orphan mid-upload (an upload of
                // over an hour, or a purger whose clock runs an hour ahead) would leave
                // a snapshot that cannot be read.
                let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM snapshot_chunks WHERE snapshot_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?;
                if stored != chunks as i64 {
                    tracing::warn!(project_id = %project, namespace, stored, chunks,
                        "an index snapshot lost chunks while it was stored: not used");
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO snapshots (project_id, namespace, id, epoch, seq, size, chunks, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (project_id, namespace) DO UPDATE SET
                         id = excluded.id, epoch = excluded.epoch, seq = excluded.seq, size = excluded.size,
                         chunks = excluded.chunks, created_at = excluded.created_at",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(id)
                .bind(snapshot.epoch)
                .bind(snapshot.seq)
                .bind(snapshot.bytes.len() as i64)
                .bind(chunks as i32)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
                if let Some((previous, _)) = previous {
                    delete_chunks(&mut *tx, previous).await?;
                }
                // Those up to the horizon went with the snapshot that raised it: only the
                // seqs since are read, not the whole namespace under its lock.
                sqlx::query(
                    "DELETE FROM records WHERE project_id = $1 AND namespace = $2 AND deleted = TRUE
                     AND seq > $3 AND seq <= $4",
                )
                .bind(project.0)
                .bind(namespace)
                .bind(horizon)
                .bind(snapshot.seq)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE namespaces SET horizon = $3 WHERE project_id = $1 AND name = $2")
                    .bind(project.0)
                    .bind(namespace)
                    .bind(snapshot.seq)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
        }

        #[async_trait]
        impl Idempotency for $store {
            async fn begin(
                &self,
                project: ProjectId,
                key: &str,
                request_hash: &str,
                lease: chrono::Duration,
                ttl: chrono::Duration,
            ) -> StoreResult<IdempotencyBegin> {
                let now = Utc::now();
                let (now_ms, locked_until, expires_at) = (millis(now), millis(now + lease), millis(now + ttl));
                let claimed = sqlx::query(
                    "INSERT INTO idempotency_keys
                         (project_id, key, request_hash, locked_until_ms, expires_at_ms, started_at_ms)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project_id, key) DO NOTHING",
                )
                .bind(project.0)
                .bind(key)
                .bind(request_hash)
                .bind(locked_until)
                .bind(expires_at)
                .bind(now_ms)
                .execute(self.writer())
                .await?;
                if claimed.rows_affected() == 1 {
                    return Ok(IdempotencyBegin::Started {
                        first_started: now,
                        claim: Claim(locked_until),
                    });
                }
                // Take over an expired entry (a new request: it starts now), an
                // abandoned claim of the same request (which keeps its start), or a
                // released one (keeping its start if it is the same request). One
                // statement, so two takers cannot both win. Every expression in SET
                // reads the row as it was.
                let taken: Option<i64> = sqlx::query_scalar(
                    "UPDATE idempotency_keys
                     SET request_hash = $3, response_status = NULL, response_body = NULL,
                         locked_until_ms = $4, expires_at_ms = $5,
                         started_at_ms = CASE WHEN expires_at_ms <= $6 OR started_at_ms = 0 OR request_hash <> $3
                                              THEN $6 ELSE started_at_ms END
                     WHERE project_id = $1 AND key = $2
                       AND (expires_at_ms <= $6
                            OR (response_status IS NULL AND locked_until_ms <= $6
                                AND (request_hash = $3 OR locked_until_ms < 0)))
                     RETURNING started_at_ms",
                )
                .bind(project.0)
                .bind(key)
                .bind(request_hash)
                .bind(locked_until)
                .bind(expires_at)
                .bind(now_ms)
                .fetch_optional(self.writer())
                .await?;
                if let Some(started) = taken {
                    let first_started = DateTime::<Utc>::from_timestamp_millis(started)
                        .ok_or_else(|| corrupt("started_at_ms", format!("{started} is out of range")))?;
                    return Ok(IdempotencyBegin::Started {
                        first_started,
                        claim: Claim(locked_until),
                    });
                }
                let row = sqlx::query(
                    "SELECT request_hash, response_status, response_body FROM idempotency_keys
                     WHERE project_id = $1 AND key = $2",
                )
                .bind(project.0)
                .bind(key)
                .fetch_optional(self.writer())
                .await?;
                let Some(row) = row else {
                    // Purged between our statements: claim it afresh.
                    return Box::pin(self.begin(project, key, request_hash, lease, ttl)).await;
                };
                let stored_hash: String = row.try_get("request_hash")?;
                let status: Option<i32> = row.try_get("response_status")?;
                Ok(if stored_hash != request_hash {
                    IdempotencyBegin::Mismatch
                } else if let Some(status) = status {
                    IdempotencyBegin::Replay(StoredResponse {
                        status: u16::try_from(status).map_err(|e| corrupt("response_status", e))?,
                        body: row.try_get::<Option<Vec<u8>>, _>("response_body")?.unwrap_or_default(),
                    })
                } else {
                    IdempotencyBegin::InFlight
                })
            }

            async fn complete(
                &self,
                project: ProjectId,
                key: &str,
                claim: Claim,
                response: &StoredResponse,
            ) -> StoreResult<bool> {
                let stored = sqlx::query(
                    "UPDATE idempotency_keys SET response_status = $3, response_body = $4
                     WHERE project_id = $1 AND key = $2 AND locked_until_ms = $5",
                )
                .bind(project.0)
                .bind(key)
                .bind(i32::from(response.status))
                .bind(&response.body)
                .bind(claim.0)
                .execute(self.writer())
                .await?;
                Ok(stored.rows_affected() == 1)
            }

            async fn abort(&self, project: ProjectId, key: &str, claim: Claim) -> StoreResult<()> {
                // Kept, released (a lease of -1), so a retry of the same request keeps
                // its first start: a request that failed past its write's commit (a
                // statement timeout) is run again with the same ids.
                sqlx::query(
                    "UPDATE idempotency_keys SET locked_until_ms = -1
                     WHERE project_id = $1 AND key = $2 AND locked_until_ms = $3 AND response_status IS NULL",
                )
                .bind(project.0)
                .bind(key)
                .bind(claim.0)
                .execute(self.writer())
                .await?;
                Ok(())
            }

            async fn purge_expired(&self) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at_ms <= $1")
                    .bind(millis(Utc::now()))
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use sql_store;
