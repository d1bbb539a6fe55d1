//! The local embedding model for tests: fetched once per machine into a shared
//! directory (`QUIVER_MODELS_DIR`, else `/var/cache/quiver-models`), so tests that
//! embed text use the real model.

use std::path::PathBuf;

/// Where tests keep models.
pub fn dir() -> PathBuf {
    std::env::var_os("QUIVER_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/quiver-models"))
}

/// Makes sure the default local model is in [`dir`], fetching it if needed.
pub async fn ensure_default_model() {
    // One fetch at a time in this process; `pull` itself is atomic across processes.
    static PULLING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _guard = PULLING.lock().await;
    let dir = dir();
    if !quiver_embed::is_installed(&dir, quiver_embed::DEFAULT_MODEL) {
        quiver_embed::pull(&dir, quiver_embed::DEFAULT_MODEL)
            .await
            .unwrap_or_else(|err| panic!("fetching the embedding model into {} failed: {err:#}", dir.display()));
    }
}
