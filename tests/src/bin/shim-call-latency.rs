//! `shim-call-latency N ADDRESS ID [ADDRESS ID …]`: times N `State` calls (task API v2, or
//! the service `TASK_SERVICE` names, e.g. `containerd.task.v3.Task` for containerd 2.x's
//! runc shim) to each shim address for task ID, and prints p50 and p99 per address in
//! microseconds, one line each: `ADDRESS p50_us p99_us`. Used by `bench/shim.sh` to measure what the
//! proxy adds to a forwarded call, against runc's shim called directly in the same run.

use std::process::ExitCode;
use std::time::Instant;

use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::shim::StateRequest;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(n) = args
        .first()
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
    else {
        eprintln!("usage: shim-call-latency N ADDRESS ID [ADDRESS ID …]");
        return ExitCode::from(2);
    };
    let service =
        std::env::var("TASK_SERVICE").unwrap_or_else(|_| "containerd.task.v2.Task".to_owned());
    for pair in args[1..].chunks(2) {
        let [address, id] = pair else {
            eprintln!("every ADDRESS needs an ID");
            return ExitCode::from(2);
        };
        let client = match ttrpc::Client::connect(address) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{address}: {e}");
                return ExitCode::from(1);
            }
        };
        let payload = StateRequest {
            id: id.clone(),
            ..StateRequest::default()
        }
        .write_to_bytes()
        .unwrap_or_default();
        let mut times = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let req = ttrpc::Request {
                service: service.clone(),
                method: "State".into(),
                payload: payload.clone(),
                timeout_nano: 5_000_000_000,
                ..ttrpc::Request::default()
            };
            let start = Instant::now();
            if let Err(e) = client.request(req) {
                eprintln!("{address}: State {id}: {e}");
                return ExitCode::from(1);
            }
            // The first tenth warms up.
            if i >= n / 10 {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{address} {:.1} {:.1}",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
    }
    ExitCode::SUCCESS
}
