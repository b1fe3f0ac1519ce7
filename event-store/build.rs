//! `sqlx::migrate!` embeds `../migrations` at compile time, but on stable Rust cargo cannot see
//! that dependency: without this a new migration file would not rebuild the crate.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
