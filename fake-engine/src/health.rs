//! `grpc.health.v1.Health`: SERVING for any service name, like Longhorn's proxy.

use std::pin::Pin;

use futures::{Stream, StreamExt, stream};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::state::FakeEngine;

pub(crate) struct AlwaysServing {
    engine: FakeEngine,
}

impl AlwaysServing {
    pub(crate) fn new(engine: FakeEngine) -> Self {
        AlwaysServing { engine }
    }
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

#[tonic::async_trait]
impl Health for AlwaysServing {
    async fn check(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let _call = self.engine.begin_call("Health/Check");
        Ok(Response::new(serving()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // One SERVING, then nothing until the client goes away.
        let updates = stream::once(async { Ok(serving()) }).chain(stream::pending());
        Ok(Response::new(Box::pin(updates)))
    }
}
