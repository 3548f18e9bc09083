//! x86_64 specifics: memory layout, boot protocols, vCPU registers, CPUID
//! and the MP table.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod pvh_note;
pub mod regs;
