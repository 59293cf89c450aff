//! Placeholder until the registry benchmark lands.
fn main() {}
