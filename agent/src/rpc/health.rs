//! The Health service: liveness and the API version the agent speaks.

use async_trait::async_trait;
use hull_protocols::health::{
    CheckRequest, HealthCheckResponse, VersionCheckResponse, health_check_response::ServingStatus,
};
use hull_protocols::{API_VERSION, health_ttrpc};
use ttrpc::r#async::TtrpcContext;

pub struct HealthService;

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        let mut r = HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        let mut r = VersionCheckResponse::new();
        r.api_version = API_VERSION.to_string();
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }
}
