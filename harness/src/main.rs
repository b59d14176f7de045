fn main() {
    println!("hil {}", env!("CARGO_PKG_VERSION"));
}
