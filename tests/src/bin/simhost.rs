//! `simhost PRESET`: lays out a simulated GPU host in a new temp directory and prints its
//! root, for trying `kata-gpu --host-root` by hand and for the demo.

use std::process::ExitCode;

use kata_gpu_tests::SimHost;

fn main() -> ExitCode {
    let preset = std::env::args().nth(1).unwrap_or_default();
    match SimHost::preset(&preset) {
        Some(host) => {
            println!("{}", host.keep().display());
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "usage: simhost PRESET (one of: {})",
                SimHost::PRESETS.join(", ")
            );
            ExitCode::from(2)
        }
    }
}
