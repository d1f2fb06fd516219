//! Passes the target triple to the tidy test, so `cargo metadata` resolves only this
//! platform's dependencies.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=TARGET_TRIPLE={target}");
}
