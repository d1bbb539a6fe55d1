//! A migration, once released, is never edited: sqlx refuses to start on a database
//! that applied an earlier text of it ("previously applied but has been modified").
//! Changes go in new migrations; `migrations/released.sha256` lists each one's hash.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

fn migrations_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

/// Every migration's hash, by its path under `migrations/`.
fn hashes() -> BTreeMap<String, String> {
    let mut hashes = BTreeMap::new();
    for backend in ["postgres", "sqlite"] {
        let dir = migrations_dir().join(backend);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display())) {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "sql") {
                let name = format!("{backend}/{}", path.file_name().expect("a name").to_string_lossy());
                let text = std::fs::read(&path).expect("readable");
                hashes.insert(name, hex::encode(Sha256::digest(&text)));
            }
        }
    }
    hashes
}

#[test]
fn released_migrations_are_never_edited() {
    let listed = std::fs::read_to_string(migrations_dir().join("released.sha256")).expect("migrations/released.sha256");
    let listed: BTreeMap<String, String> = listed
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (hash, name) = line.split_once("  ").expect("\"<sha256>  <backend>/<file>\"");
            (name.to_owned(), hash.to_owned())
        })
        .collect();
    let current = hashes();
    for (name, hash) in &listed {
        match current.get(name) {
            Some(now) => assert_eq!(
                now, hash,
                "migrations/{name} was edited after its release: undo that, and make the change in a new migration"
            ),
            None => panic!("migrations/{name} was released and is gone: a database that applied it will not start"),
        }
    }
    for (name, hash) in &current {
        assert!(
            listed.contains_key(name),
            "migrations/{name} is new: once it is final, add \"{hash}  {name}\" to migrations/released.sha256"
        );
    }
}
