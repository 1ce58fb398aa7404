//! The `dockerproxy` binary.

fn main() {
    println!("dockerproxy {}", dockerproxy_core::VERSION);
}
