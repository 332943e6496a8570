//! Short forms of the agent calls tests make over and over: create+start, read a stream
//! to its end, wait, and the ttrpc status code of a refused request.

use hull_protocols::agent::*;
use hull_protocols::agent_ttrpc::AgentServiceClient;
use oci_spec::runtime::Spec;

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(0)
}

/// The ttrpc status code of a failed call; panics if the call succeeded.
pub fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> ttrpc::Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code.enum_value_or_default(),
        other => panic!("expected an RPC error status, got {other:?}"),
    }
}

pub fn message<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> String {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.message.clone(),
        other => panic!("expected an RPC error status, got {other:?}"),
    }
}

pub async fn create(a: &AgentServiceClient, id: &str, spec: &Spec) -> ttrpc::Result<Empty> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.to_string();
    req.oci_spec = crate::bundle::to_json(spec);
    a.create_container(ctx(), &req).await
}

pub async fn start(a: &AgentServiceClient, id: &str) -> ttrpc::Result<Empty> {
    let mut req = StartContainerRequest::new();
    req.container_id = id.to_string();
    a.start_container(ctx(), &req).await
}

pub async fn remove(a: &AgentServiceClient, id: &str) -> ttrpc::Result<Empty> {
    let mut req = RemoveContainerRequest::new();
    req.container_id = id.to_string();
    a.remove_container(ctx(), &req).await
}

pub async fn wait(a: &AgentServiceClient, id: &str, exec: &str) -> i32 {
    let mut req = WaitProcessRequest::new();
    req.container_id = id.to_string();
    req.exec_id = exec.to_string();
    a.wait_process(ctx(), &req)
        .await
        .expect("WaitProcess")
        .status
}

pub async fn signal(
    a: &AgentServiceClient,
    id: &str,
    exec: &str,
    sig: i32,
    all: bool,
) -> ttrpc::Result<Empty> {
    let mut req = SignalProcessRequest::new();
    req.container_id = id.to_string();
    req.exec_id = exec.to_string();
    req.signal = sig as u32;
    req.all = all;
    a.signal_process(ctx(), &req).await
}

pub async fn write_stdin(a: &AgentServiceClient, id: &str, exec: &str, data: &[u8]) {
    let mut req = WriteStreamRequest::new();
    req.container_id = id.to_string();
    req.exec_id = exec.to_string();
    req.data = data.to_vec();
    a.write_stdin(ctx(), &req).await.expect("WriteStdin");
}

pub async fn close_stdin(a: &AgentServiceClient, id: &str, exec: &str) {
    let mut req = CloseStdinRequest::new();
    req.container_id = id.to_string();
    req.exec_id = exec.to_string();
    a.close_stdin(ctx(), &req).await.expect("CloseStdin");
}

/// Reads stdout (or stderr) until end of stream.
pub async fn read_all(a: &AgentServiceClient, id: &str, exec: &str, stderr: bool) -> String {
    let mut out = Vec::new();
    loop {
        let mut req = ReadStreamRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec.to_string();
        req.len = 64 * 1024;
        let r = if stderr {
            a.read_stderr(ctx(), &req).await
        } else {
            a.read_stdout(ctx(), &req).await
        };
        let data = r.expect("reading output").data;
        if data.is_empty() {
            return String::from_utf8_lossy(&out).into_owned();
        }
        out.extend(data);
    }
}

/// Output of a whole run: stdout, stderr and exit status.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub status: i32,
}

/// Creates and starts `id`, closes its stdin, collects its output and waits for it.
pub async fn run(a: &AgentServiceClient, id: &str, spec: &Spec) -> Run {
    create(a, id, spec).await.expect("CreateContainer");
    start(a, id).await.expect("StartContainer");
    close_stdin(a, id, "").await;
    let (stdout, stderr) = tokio::join!(read_all(a, id, "", false), read_all(a, id, "", true));
    let status = wait(a, id, "").await;
    Run {
        stdout,
        stderr,
        status,
    }
}
