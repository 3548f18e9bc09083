//! The guest agent binary (see docs/agent.md).

fn main() {}
