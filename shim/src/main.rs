//! `containerd-shim-kata-qemu-nvidia-gpu-snp-v2`: the binary containerd runs for every pod
//! of the runtime class. Installed under the tdx and gpu profiles' names too, it serves
//! those profiles. Prints nothing but what containerd reads.

use std::io::{Read, Write};
use std::process::ExitCode;

use kata_gpu_plan::Profile;
use kata_gpu_shim::actions::{delete, serve, start, SERVE_ACTION};
use kata_gpu_shim::bootstrap::parse_flags;

/// containerd never sends more than this on stdin.
const MAX_STDIN: u64 = 10 << 20;

fn read_stdin() -> Vec<u8> {
    let mut input = Vec::new();
    let _ = std::io::stdin().take(MAX_STDIN).read_to_end(&mut input);
    input
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    // containerd shows this text as the error of the pod's sandbox.
    let _ = writeln!(std::io::stderr(), "{message}");
    ExitCode::from(1)
}

fn emit(bytes: &[u8]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("cannot write the reply: {e}")),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let argv0 = std::env::args().next().unwrap_or_default();
    // The profile is the name this binary runs under (a link or a copy too; the proxy
    // `start` spawns is given the same name). Guessing one would plan a pod for the wrong TEE.
    let Some(profile) = Profile::from_binary_name(&argv0) else {
        let names: Vec<String> = Profile::ALL.iter().map(|p| p.shim_binary()).collect();
        return fail(format!(
            "{argv0}: the binary's name names no profile; install or link it as {}",
            names.join(", ")
        ));
    };
    let flags = match parse_flags(&args) {
        Ok(f) => f,
        Err(e) => return fail(format!("{argv0}: {e}")),
    };
    if flags.version {
        println!(
            "{} {} (commit {}), profile {}",
            profile.shim_binary(),
            env!("CARGO_PKG_VERSION"),
            env!("KATA_GPU_COMMIT"),
            profile.name()
        );
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return match kata_gpu_shim::info::info(profile, &read_stdin()) {
            Ok(reply) => emit(&reply),
            Err(e) => fail(e),
        };
    }
    match flags.action.as_deref() {
        Some("start") => match start(profile, &flags, &args, &read_stdin()) {
            Ok(reply) => emit(&reply),
            Err(e) => fail(e),
        },
        Some("delete") => match delete(profile, &flags, &args, &read_stdin()) {
            Ok(reply) => emit(&reply),
            Err(e) => fail(e),
        },
        Some(SERVE_ACTION) => match serve(profile, &flags) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Some(other) => fail(format!(
            "{argv0}: unknown action {other:?}; containerd calls start and delete"
        )),
        None => fail(format!(
            "{argv0}: no action; containerd calls start and delete, and -v prints the version"
        )),
    }
}
