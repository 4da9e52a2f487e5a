//! What every controller gets: the API client, the process's shared
//! informers and an event recorder.

use kube::Client;
use rudder_runtime::events::EventRecorder;
use rudder_runtime::Informers;

#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub recorder: EventRecorder,
}

impl Context {
    pub fn new(client: Client) -> Self {
        Context {
            informers: Informers::new(client.clone()),
            recorder: EventRecorder::new(client.clone(), "controller-manager"),
            client,
        }
    }
}
