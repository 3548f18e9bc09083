//! vmm's guest agent: the host<->agent protocol ([`protocol`]), a host-side
//! client ([`client`]) and the agent itself, which runs containers inside a
//! tenant VM.
//!
//! See docs/agent.md.

pub mod protocol;
