fn main() {
    println!("hil-agent {}", env!("CARGO_PKG_VERSION"));
}
