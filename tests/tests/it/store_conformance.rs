//! The store conformance suite, once per backend.

mod sqlite {
    quiver_store::store_conformance_suite!(quiver_tests::stores::SqliteFixture::new());
}

mod postgres {
    quiver_store::store_conformance_suite!(quiver_tests::stores::PostgresFixture::new());
}
