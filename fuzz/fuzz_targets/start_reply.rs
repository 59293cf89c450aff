//! The shim's start handshake: a downstream's reply (any bytes), containerd's stdin and
//! flags. No panic on any input; an address read from a reply survives every reply form.
#![no_main]

use kata_gpu_shim::bootstrap::{encode_reply, parse_flags, parse_reply, reply_form, ReplyForm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = String::from_utf8_lossy(data)
        .split('\0')
        .map(str::to_owned)
        .collect();
    let flags = parse_flags(&args).unwrap_or_default();
    let _ = reply_form(data, &flags, Some("3"));
    let _ = reply_form(data, &flags, None);
    if let Ok(reply) = parse_reply(data) {
        for form in [
            ReplyForm::Plain,
            ReplyForm::Json(2),
            ReplyForm::Json(3),
            ReplyForm::Protobuf,
        ] {
            let again = parse_reply(&encode_reply(&reply.address, form));
            if form == ReplyForm::Plain && reply.address.trim() != reply.address {
                continue;
            }
            assert_eq!(
                again.map(|r| r.address).ok().as_deref(),
                Some(reply.address.as_str()),
                "{form:?}"
            );
        }
    }
});
