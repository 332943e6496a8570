//! One process of a task, as the shim tracks it: status, exit status and time, and the
//! stdio bridge to the agent.

use std::sync::Mutex;

use containerd_shim_protos::types::task::Status;
use hull_protocols::agent_ttrpc::AgentServiceClient;
use protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use super::io::{Bridge, StdioPaths};

pub struct Process {
    pub exec_id: String,
    /// What containerd sees as the pid: the shim's own (guest pids mean nothing on the host).
    pub pid: u32,
    pub paths: StdioPaths,
    status: Mutex<Status>,
    exit: watch::Sender<Option<(u32, Timestamp)>>,
    bridge: tokio::sync::Mutex<Option<Bridge>>,
}

impl Process {
    pub fn new(exec_id: &str, paths: StdioPaths) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            pid: std::process::id(),
            paths,
            status: Mutex::new(Status::CREATED),
            exit: watch::channel(None).0,
            bridge: tokio::sync::Mutex::new(None),
        }
    }

    pub fn display_id(&self, cid: &str) -> String {
        if self.exec_id.is_empty() {
            cid.to_string()
        } else {
            format!("{cid}/{}", self.exec_id)
        }
    }

    pub fn status(&self) -> Status {
        *self.status.lock().expect("status lock")
    }

    pub fn set_running(&self) {
        *self.status.lock().expect("status lock") = Status::RUNNING;
    }

    pub fn set_paused(&self, paused: bool) {
        let mut s = self.status.lock().expect("status lock");
        if *s != Status::STOPPED {
            *s = if paused {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
    }

    pub fn start_io(&self, agent: &AgentServiceClient, cid: &str) {
        let bridge = Bridge::start(agent, cid, &self.exec_id, &self.paths);
        if let Ok(mut b) = self.bridge.try_lock() {
            *b = Some(bridge);
        }
    }

    pub async fn drain_output(&self) {
        if let Some(b) = self.bridge.lock().await.as_mut() {
            b.drained().await;
        }
    }

    pub fn abort_io(&self) {
        if let Ok(mut b) = self.bridge.try_lock()
            && let Some(b) = b.as_mut()
        {
            b.abort();
        }
    }

    pub async fn close_stdin(&self, agent: &AgentServiceClient, cid: &str) {
        if let Some(b) = self.bridge.lock().await.as_mut() {
            b.close_stdin(agent, cid, &self.exec_id).await;
        }
    }

    /// Records the exit; returns its time.
    pub fn set_exited(&self, status: i32) -> Timestamp {
        let at = Timestamp::now();
        *self.status.lock().expect("status lock") = Status::STOPPED;
        self.exit.send_replace(Some((status as u32, at.clone())));
        at
    }

    /// Exit status and time; zeros while the process runs.
    pub fn exit_info(&self) -> (u32, Timestamp) {
        self.exit.borrow().clone().unwrap_or_default()
    }

    pub async fn wait(&self) -> (u32, Timestamp) {
        let mut rx = self.exit.subscribe();
        let v = rx
            .wait_for(|e| e.is_some())
            .await
            .expect("sender lives in self");
        v.clone().expect("waited for Some")
    }
}
