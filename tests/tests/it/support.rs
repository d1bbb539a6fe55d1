//! Helpers for writing one test body and running it on both backends.

/// `on_both_backends!(name, ...)` expands, for each `name`, to `name::sqlite` and
/// `name::postgres` tests that call `name(TestApp::start(backend))`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use quiver_tests::app::{Backend, TestApp};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name(TestApp::start(Backend::Sqlite).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name(TestApp::start(Backend::Postgres).await).await;
                }
            }
        )*
    };
}

pub(crate) use on_both_backends;

/// `on_a_cluster_pod!(name, ...)`, inside a module beside the bodies: for each `name`,
/// a test `name` that calls `super::name(TestApp::cluster(1))` (one pod, its budgets
/// leased from Redis, its notices over Redis).
macro_rules! on_a_cluster_pod {
    ($($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(quiver_tests::app::TestApp::cluster(1).await).await;
            }
        )*
    };
}

pub(crate) use on_a_cluster_pod;

/// `on_both_stores!(name, ...)`: like [`on_both_backends`], for bodies that take a
/// fresh, migrated store (`name(store: Arc<dyn Store>)`) rather than a whole app.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use quiver_tests::stores::{PostgresFixture, SqliteFixture};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let fixture = SqliteFixture::new().await;
                    super::$name(std::sync::Arc::clone(&fixture.store)).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    let fixture = PostgresFixture::new().await;
                    super::$name(std::sync::Arc::clone(&fixture.store)).await;
                }
            }
        )*
    };
}

pub(crate) use on_both_stores;

/// Asserts an error envelope with this status and code, and returns its message.
pub fn assert_error(status: u16, body: &serde_json::Value, expected_status: u16, code: &str) -> String {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["status"], expected_status, "{body}");
    body["error"]["message"].as_str().expect("a message").to_owned()
}
