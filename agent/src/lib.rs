//! vmm's guest agent: the host<->agent protocol ([`protocol`]), a host-side
//! client ([`client`]) and the agent itself ([`server`] and the modules it
//! uses), which runs containers inside a tenant VM.
//!
//! See docs/agent.md.

pub mod caps;
pub mod cgroup;
pub mod client;
pub mod container;
pub mod init;
pub mod layers;
pub mod protocol;
pub mod seccomp;
pub mod server;
pub mod stream;
pub mod sys;
