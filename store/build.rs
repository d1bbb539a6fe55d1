//! `sqlx::migrate!` embeds the migrations when this crate compiles, and cargo does not
//! know it read them: without this, a migration added to a built tree would not be in
//! the next build.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
