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

/// Why a `redis-server` that was started is not serving.
enum NotServing {
    /// It exited: on its first start, most likely because something else took the
    /// port between the probe that found it free and the server's bind.
    Exited(std::process::ExitStatus),
    /// It did not answer a PING within the time allowed.
    Silent(String),
}

impl PrivateRedis {
    /// Starts a server on a free port. Finding a free port (binding port 0 and letting
    /// it go) races with every other process on the machine: when the server cannot
    /// have the port after all, it exits, and this tries again on another.
    pub async fn start() -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|listener| listener.local_addr())
                .expect("a free port")
                .port();
            let mut redis = Self { port, child: None };
            match redis.launch().await {
                Ok(()) => return redis,
                Err(NotServing::Exited(status)) => last = format!("redis-server on port {port} exited: {status}"),
                Err(NotServing::Silent(why)) => panic!("redis-server on port {port} did not answer: {why}"),
            }
        }
        panic!("redis-server could not start on a free port in 5 tries; the last: {last}");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on its port (the test's clients know only that one)
    /// and waits until it answers.
    pub async fn resume(&mut self) {
        match self.launch().await {
            Ok(()) => {}
            Err(NotServing::Exited(status)) => panic!(
                "redis-server exited on restarting on port {} ({status}): has another process taken the port?",
                self.port
            ),
            Err(NotServing::Silent(why)) => panic!("redis-server on port {} did not answer: {why}", self.port),
        }
    }

    /// Spawns `redis-server` on [`PrivateRedis::port`] and waits until it is alive and
    /// it, not some other server on the port, answers a PING.
    async fn launch(&mut self) -> Result<(), NotServing> {
        self.stop();
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
        let pid = child.id();
        let child = self.child.insert(child);
        let mut why = String::from("no attempt");
        for _ in 0..100 {
            if let Some(status) = child.try_wait().expect("the state of redis-server") {
                self.child = None;
                return Err(NotServing::Exited(status));
            }
            match tokio::time::timeout(std::time::Duration::from_secs(1), ping(self.port, pid)).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(err)) => why = err,
                Err(_) => why = "no answer within 1 s".into(),
            }
            // Polling the server's own answer: there is no other signal of readiness.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.stop();
        Err(NotServing::Silent(format!("not within 5 s (last: {why})")))
    }

    /// Kills the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends PING to the Redis on `port`, expects PONG, and checks the server that
/// answered is process `pid`: another process may hold the port our server was
/// meant to have.
async fn ping(port: u16, pid: u32) -> Result<(), String> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|err| format!("connect: {err}"))?;
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .get_mut()
        .write_all(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .await
        .map_err(|err| format!("send: {err}"))?;
    let mut line = String::new();
    stream
        .read_line(&mut line)
        .await
        .map_err(|err| format!("read: {err}"))?;
    if line != "+PONG\r\n" {
        return Err(format!("PING answered {line:?}"));
    }
    line.clear();
    stream
        .read_line(&mut line)
        .await
        .map_err(|err| format!("read: {err}"))?;
    let length: usize = line
        .strip_prefix('$')
        .and_then(|n| n.trim_end().parse().ok())
        .ok_or_else(|| format!("INFO answered {line:?}"))?;
    let mut info = vec![0; length];
    stream
        .read_exact(&mut info)
        .await
        .map_err(|err| format!("read: {err}"))?;
    let info = String::from_utf8_lossy(&info);
    let serving = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|id| id.trim().parse::<u32>().ok());
    if serving != Some(pid) {
        return Err(format!(
            "the server on port {port} is process {serving:?}, not the redis-server started ({pid})"
        ));
    }
    Ok(())
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of a Redis whose connections can go silent as across a network
/// fault: they stay open (no FIN, no RST) and carry nothing, in either direction, for
/// good ([`SilentProxy::go_silent`]). Connections made after that carry bytes.
pub struct SilentProxy {
    /// A Redis URL that reaches the server through the proxy.
    pub url: String,
    /// The generation whose connections may speak; older ones are silent for good.
    speaking: std::sync::Arc<std::sync::atomic::AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl SilentProxy {
    /// A proxy to the Redis at `url`.
    pub async fn start(url: &str) -> Self {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};

        let mut proxied = url::Url::parse(url).expect("a Redis URL");
        let target = format!(
            "{}:{}",
            proxied.host_str().expect("a host"),
            proxied.port().unwrap_or(6379)
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("an address").port();
        proxied.set_host(Some("127.0.0.1")).expect("a host");
        proxied.set_port(Some(port)).expect("a port");
        let speaking = Arc::new(AtomicU64::new(1));
        let generation = Arc::clone(&speaking);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let born = generation.load(Ordering::SeqCst);
                let (generation, alive) = (Arc::clone(&generation), move |g: &AtomicU64| {
                    g.load(Ordering::SeqCst) == born
                });
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    // Bytes are read either way and, once the connection's generation
                    // is past, dropped: the sockets stay open and carry nothing.
                    let pump = async |from: &mut tokio::net::tcp::OwnedReadHalf,
                                      to: &mut tokio::net::tcp::OwnedWriteHalf| {
                        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                        let mut buffer = vec![0u8; 16 * 1024];
                        loop {
                            let Ok(read) = from.read(&mut buffer).await else { return };
                            if read == 0 {
                                return;
                            }
                            if alive(&generation) && to.write_all(&buffer[..read]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::join!(
                        pump(&mut client_read, &mut server_write),
                        pump(&mut server_read, &mut client_write)
                    );
                });
            }
        });
        Self {
            url: proxied.to_string(),
            speaking,
            accept,
        }
    }

    /// Every connection made so far goes silent for good.
    pub fn go_silent(&self) {
        self.speaking.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SilentProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
