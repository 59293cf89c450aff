//! `recording-shim`: a downstream for tests that stands where Kata's shim would. It
//! records every CreateTaskRequest it receives (what Kata would have seen: the id and the
//! runtime options with their `config_path`) as JSON in `$RECORDING_SHIM_DIR/<id>.json`,
//! drops Kata's runtime options (runc cannot read them), and hands over to runc's shim.
//!
//! Its settings come from `$RECORDING_SHIM_CONFIG` (same keys as the proxy's), so that it
//! and the proxy under test keep separate state and sockets.
//!
//! A slow Delete, for tests: while `$RECORDING_SHIM_DIR/hold-delete-<id>` exists, the
//! answer to the Delete of task `<id>` is held back (after runc carried it out), and
//! `held-<id>` says that it is.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use containerd_shim_protos::protobuf::rt::skip_field_for_tag;
use containerd_shim_protos::protobuf::{CodedInputStream, MessageField};
use containerd_shim_protos::shim::shim::CreateTaskRequest;
use kata_gpu_plan::settings::Settings;
use kata_gpu_shim::actions::{delete_with, serve_with, start_with, SERVE_ACTION};
use kata_gpu_shim::bootstrap::parse_flags;
use kata_gpu_shim::proxy::CreateHook;

struct Recorder {
    dir: PathBuf,
}

/// Reads field 2 (`config_path`) of an encoded `runtimeoptions.v1.Options`.
fn config_path(options: &[u8]) -> Option<String> {
    let mut input = CodedInputStream::from_bytes(options);
    while let Some(tag) = input.read_raw_tag_or_eof().ok()? {
        if tag == 0x12 {
            return input.read_string().ok();
        }
        skip_field_for_tag(tag, &mut input).ok()?;
    }
    None
}

impl CreateHook for Recorder {
    fn on_create(&self, mut request: CreateTaskRequest) -> Result<CreateTaskRequest, String> {
        let options = request.options.as_ref();
        let record = serde_json::json!({
            "id": request.id,
            "bundle": request.bundle,
            "options_type_url": options.map(|o| o.type_url.clone()),
            "config_path": options.and_then(|o| config_path(&o.value)),
        });
        if !kata_gpu_shim::create::is_path_safe_id(&request.id) {
            return Err(format!("recording-shim: bad task id {:?}", request.id));
        }
        let path = self.dir.join(format!("{}.json", request.id));
        std::fs::write(&path, record.to_string())
            .map_err(|e| format!("recording-shim: cannot write {}: {e}", path.display()))?;
        if options.is_some_and(|o| o.type_url.ends_with("runtimeoptions.v1.Options")) {
            request.options = MessageField::none();
        }
        Ok(request)
    }

    fn on_deleted(&self, id: &str) {
        if !kata_gpu_shim::create::is_path_safe_id(id) {
            return;
        }
        let hold = self.dir.join(format!("hold-delete-{id}"));
        if !hold.exists() {
            return;
        }
        let _ = std::fs::write(self.dir.join(format!("held-{id}")), "");
        // Runs before the answer is passed back: holding here holds the answer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while hold.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fail = |m: String| {
        let _ = writeln!(std::io::stderr(), "recording-shim: {m}");
        ExitCode::from(1)
    };
    let flags = match parse_flags(&args) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    let settings_path = std::env::var_os("RECORDING_SHIM_CONFIG").map(PathBuf::from);
    let settings = match settings_path.as_ref().map(|p| {
        std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| Settings::parse(&t, p).map_err(|e| e.to_string()))
    }) {
        Some(Ok(s)) => s,
        Some(Err(e)) => return fail(e),
        None => return fail("RECORDING_SHIM_CONFIG is not set".into()),
    };
    let recorder = Recorder {
        dir: std::env::var_os("RECORDING_SHIM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    };
    let mut stdin = Vec::new();
    if matches!(flags.action.as_deref(), Some("start" | "delete")) {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let emit = |bytes: Vec<u8>| {
        let _ = std::io::stdout().write_all(&bytes);
        ExitCode::SUCCESS
    };
    match flags.action.as_deref() {
        Some("start") => start_with(&settings, &settings_path, &flags, &args, &stdin)
            .map_or_else(|e| fail(e.to_string()), emit),
        Some("delete") => delete_with(&settings, &settings_path, &flags, &args, &stdin, &recorder)
            .map_or_else(|e| fail(e.to_string()), emit),
        Some(SERVE_ACTION) => serve_with(&settings, &flags, Box::new(recorder))
            .map_or_else(|e| fail(e.to_string()), |()| ExitCode::SUCCESS),
        other => fail(format!("unexpected action {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::config_path;

    #[test]
    fn config_path_is_read_past_other_fields_and_a_cut_message_has_none() {
        let ours = kata_gpu_shim::create::runtime_options("/run/kata-gpu/x.toml").expect("encode");
        assert_eq!(config_path(&ours).as_deref(), Some("/run/kata-gpu/x.toml"));
        // Field 1 (a string) and field 3 (a varint) before it are skipped.
        let mut theirs = vec![0x0a, 0x01, b'k', 0x18, 0x96, 0x01];
        theirs.extend_from_slice(&ours);
        assert_eq!(
            config_path(&theirs).as_deref(),
            Some("/run/kata-gpu/x.toml")
        );
        assert_eq!(config_path(&ours[..ours.len() - 1]), None);
        assert_eq!(config_path(&[]), None);
    }
}
