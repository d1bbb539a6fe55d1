use std::sync::OnceLock;

use testcontainers_modules::redis::Redis;
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::OnceCell;

const NO_REDIS: &str = "the Redis tests need a server: set REDIS_URL (for example REDIS_URL=redis://127.0.0.1:6379) \
     or start Docker so testcontainers can run one";

static CONTAINER: OnceCell<(ContainerAsync<Redis>, String)> = OnceCell::const_new();

/// The URL of a Redis the tests may use; each test takes its own key prefix from [`prefix`].
pub async fn url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL")
        && !url.is_empty()
    {
        return url;
    }
    static DOCKER: OnceLock<bool> = OnceLock::new();
    let docker = *DOCKER.get_or_init(|| {
        std::env::var_os("DOCKER_HOST").is_some()
            || std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
    });
    if !docker {
        panic!("{NO_REDIS}");
    }
    let (_, url) = CONTAINER
        .get_or_init(|| async {
            let container = Redis::default()
                .start()
                .await
                .unwrap_or_else(|err| panic!("starting a Redis container failed ({err}); {NO_REDIS}"));
            let port = container.get_host_port_ipv4(6379).await.expect("Redis exposes 6379");
            (container, format!("redis://127.0.0.1:{port}"))
        })
        .await;
    url.clone()
}

/// A key and channel prefix no other test uses.
pub fn prefix() -> String {
    format!("quiver-test:{}:", uuid::Uuid::new_v4().simple())
}
