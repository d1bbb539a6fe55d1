use std::sync::OnceLock;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::ContainerAsync;
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use tokio::sync::OnceCell;
use url::Url;

/// What to tell a developer whose machine offers no Postgres.
const NO_POSTGRES: &str = "the Postgres tests need a server: set DATABASE_URL (for example \
     DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres) or start Docker so testcontainers can run one";

static CONTAINER: OnceCell<(ContainerAsync<Postgres>, String)> = OnceCell::const_new();

/// The URL of a server the tests may create databases on.
async fn server_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    if !docker_answers() {
        panic!("{NO_POSTGRES}");
    }
    let (_, url) = CONTAINER
        .get_or_init(|| async {
            let container = Postgres::default()
                .start()
                .await
                .unwrap_or_else(|err| panic!("starting a Postgres container failed ({err}); {NO_POSTGRES}"));
            let port = container
                .get_host_port_ipv4(5432)
                .await
                .expect("the Postgres container exposes 5432");
            let url = format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres");
            (container, url)
        })
        .await;
    url.clone()
}

fn docker_answers() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(|| {
        if std::env::var_os("DOCKER_HOST").is_some() {
            return true;
        }
        std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
    })
}

/// A database created for one test and dropped when this is dropped.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates an empty database with a unique name on the test server.
    pub async fn create() -> Self {
        let admin_url = server_url().await;
        let name = format!("quiver_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot connect to {admin_url} ({err}); {NO_POSTGRES}"));
        // Text sorts by a language's rules here, as on most managed servers (en_US.UTF-8
        // or ICU), not byte by byte as on a server initialised with the C locale, so a
        // query that depends on byte order without asking for it fails its test. A
        // server without ICU (or older than Postgres 15) gets its own default.
        let icu = format!("CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'");
        if let Err(err) = sqlx::query(&icu).execute(&admin).await {
            eprintln!("no ICU collation ({err}); the server's default it is");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .expect("CREATE DATABASE");
        }
        admin.close().await;
        let mut url = Url::parse(&admin_url).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        Self {
            admin_url,
            name,
            url: url.into(),
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop runs inside the test's runtime; a thread with its own runtime can block.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for dropping the test database");
            runtime.block_on(async {
                if let Ok(admin) = sqlx::PgPool::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            });
        });
        let _ = dropped.join();
    }
}
