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

/// A Redis of one test's own (`redis-server` on a free port), which the test may
/// stop and start again without disturbing the tests that share the machine's Redis.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut redis = Self { port, child: None };
        redis.resume().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn resume(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("this test runs its own redis-server, which failed to start ({err}): install Redis")
            });
        self.child = Some(child);
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not listen on {} within 5 s", self.port);
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
