//! Reports the processes of a dead downstream as exited to containerd, through its events
//! service, so that containerd's waits end.

use containerd_shim_protos::events::task::TaskExit;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;

use crate::proxy::{now, Tracked, DEAD_EXIT_STATUS};

/// Reports each process of a dead downstream as exited (status 255) to containerd.
pub(super) fn publish_exits(namespace: &str, tracked: &[Tracked]) {
    let Ok(address) = std::env::var("TTRPC_ADDRESS") else {
        tracing::error!("TTRPC_ADDRESS is not set; cannot report the dead downstream's tasks");
        return;
    };
    let address = if address.contains("://") {
        address
    } else {
        format!("unix://{address}")
    };
    let client = match ttrpc::Client::connect(&address) {
        Ok(c) => containerd_shim_protos::shim_sync::EventsClient::new(c),
        Err(e) => {
            tracing::error!("cannot reach containerd at {address} to report exits: {e}");
            return;
        }
    };
    for t in tracked {
        let exit = TaskExit {
            container_id: t.container_id.clone(),
            id: t.exec_id.clone(),
            pid: t.pid,
            exit_status: DEAD_EXIT_STATUS,
            exited_at: MessageField::some(now()),
            ..TaskExit::default()
        };
        let Ok(value) = exit.write_to_bytes() else {
            continue;
        };
        let request = ForwardRequest {
            envelope: MessageField::some(Envelope {
                timestamp: MessageField::some(now()),
                namespace: namespace.to_owned(),
                topic: containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC.to_owned(),
                event: MessageField::some(Any {
                    type_url: "containerd.events.TaskExit".to_owned(),
                    value,
                    ..Any::default()
                }),
                ..Envelope::default()
            }),
            ..ForwardRequest::default()
        };
        match client.forward(ttrpc::context::with_timeout(5_000_000_000), &request) {
            Ok(_) => tracing::warn!(
                "reported {}/{} exited ({DEAD_EXIT_STATUS})",
                t.container_id,
                t.exec_id
            ),
            Err(e) => tracing::error!("cannot report {}/{} exited: {e}", t.container_id, t.exec_id),
        }
    }
}
