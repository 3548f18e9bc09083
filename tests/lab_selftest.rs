//! Self-tests of the lab (tests/lab/lab, docs/lab.md): the nested test host must boot a
//! guest with KVM, report what the guest said and its status, and fail loudly and in
//! bounded time when something is broken.
//!
//! Each group of assertions shares one L1 boot (`OnceLock`), because every L1 boot costs
//! emulated seconds. Set `VMM_SKIP_LAB=1` to skip these tests (they print SKIPPED).

mod common;

use common::{
    lab_skipped, prepare, scenario, LabResult, LabRun, GUEST_RUN_NO_READY, STATUS_L1_NO_KVM,
    STATUS_NO_QEMU, STATUS_TIMEOUT,
};
use std::sync::OnceLock;

/// Group A, one L1 boot: QEMU microvm (KVM, nested) boots the project's kernel and rootfs
/// twice: once running a command that succeeds, once running `exit 3`.
fn guest_boot(test: &str) -> Option<&'static LabResult> {
    static RUN: OnceLock<LabResult> = OnceLock::new();
    if lab_skipped(test) {
        return None;
    }
    Some(RUN.get_or_init(|| {
        LabRun::new("selftest-guest-boot")
            .guest_files(prepare())
            .collect_out()
            .timeout(600)
            .script(
                scenario("qemu-microvm.sh"),
                [
                    "ok",
                    r#"root=/dev/vda run="uname -r; echo lab-ok""#,
                    "exit3",
                    r#"root=/dev/vda run="exit 3""#,
                ],
            )
            .run()
    }))
}

#[test]
fn guest_reaches_ready_marker() {
    let Some(run) = guest_boot("guest_reaches_ready_marker") else {
        return;
    };
    common::assert_has_line(
        &run.out_file("ok.log"),
        "VMM-GUEST-READY",
        "/out/ok.log (guest console)",
    );
    common::assert_has_line(
        &run.out_file("exit3.log"),
        "VMM-GUEST-READY",
        "/out/exit3.log (guest console)",
    );
}

#[test]
fn guest_runs_the_command_and_reports_exit_0() {
    let Some(run) = guest_boot("guest_runs_the_command_and_reports_exit_0") else {
        return;
    };
    let console = run.out_file("ok.log");
    common::assert_has_line(&console, "lab-ok", "/out/ok.log");
    common::assert_has_line(&console, "VMM-GUEST-EXIT 0", "/out/ok.log");
    let release_line = console.lines().find(|l| l.starts_with("6.1."));
    assert!(
        release_line.is_some(),
        "no `uname -r` output (6.1.x) in the guest console:\n{console}"
    );
    assert_eq!(run.out_file("ok.status").trim(), "0", "{}", run.describe());
    let summary = run.guest_run("ok");
    assert_eq!(
        summary.get("result").map(String::as_str),
        Some("ok"),
        "{}",
        run.describe()
    );
    assert_eq!(
        summary.get("guest_exit").map(String::as_str),
        Some("0"),
        "{}",
        run.describe()
    );
}

#[test]
fn nonzero_guest_status_passes_through_to_the_runner() {
    let Some(run) = guest_boot("nonzero_guest_status_passes_through_to_the_runner") else {
        return;
    };
    common::assert_has_line(
        &run.out_file("exit3.log"),
        "VMM-GUEST-EXIT 3",
        "/out/exit3.log",
    );
    assert_eq!(
        run.out_file("exit3.status").trim(),
        "3",
        "{}",
        run.describe()
    );
    // The scenario exits with its last case's status, and the runner with the scenario's.
    run.assert_kind("scenario");
    run.assert_status(3);
}

#[test]
fn qemu_exits_by_itself_after_the_guest_powers_off() {
    let Some(run) = guest_boot("qemu_exits_by_itself_after_the_guest_powers_off") else {
        return;
    };
    for case in ["ok", "exit3"] {
        let summary = run.guest_run(case);
        assert_eq!(
            summary.get("result").map(String::as_str),
            Some("ok"),
            "case {case}\n{}",
            run.describe()
        );
        assert_eq!(
            summary.get("vmm_status").map(String::as_str),
            Some("0"),
            "case {case}\n{}",
            run.describe()
        );
    }
}

#[test]
fn guest_console_is_streamed_to_the_runner() {
    let Some(run) = guest_boot("guest_console_is_streamed_to_the_runner") else {
        return;
    };
    run.assert_line("VMM-GUEST-READY");
    run.assert_line("lab-ok");
    run.assert_line("VMM-GUEST-EXIT 3");
}

/// Group B, one L1 boot: the guest's root device does not exist.
#[test]
fn broken_guest_boot_is_reported_not_waited_for() {
    if lab_skipped("broken_guest_boot_is_reported_not_waited_for") {
        return;
    }
    let run = LabRun::new("selftest-broken-boot")
        .guest_files(prepare())
        .timeout(300)
        .script(
            scenario("qemu-microvm.sh"),
            ["broken", r#"root=/dev/vdz run="echo never""#],
        )
        .run();
    run.assert_kind("scenario");
    run.assert_status(GUEST_RUN_NO_READY);
    run.assert_stdout_contains("no VMM-GUEST-READY marker: the guest did not boot");
    run.assert_no_line("never");
    run.assert_no_line("VMM-GUEST-READY");
}

/// Group C, one L1 boot: a scenario that never ends.
#[test]
fn hanging_scenario_is_killed_by_timeout() {
    if lab_skipped("hanging_scenario_is_killed_by_timeout") {
        return;
    }
    let run = LabRun::new("selftest-hang")
        .timeout(10)
        .command(["sh", "-c", "echo hang-start; sleep 100000; echo hang-end"])
        .run();
    run.assert_status(STATUS_TIMEOUT);
    run.assert_kind("timeout");
    run.assert_line("hang-start");
    run.assert_no_line("hang-end");
    run.assert_stderr_contains("did not finish within --timeout 10 s");
}

/// Group D, one L1 boot: an L1 CPU without SVM cannot give the scenario /dev/kvm.
#[test]
fn l1_without_kvm_is_reported() {
    if lab_skipped("l1_without_kvm_is_reported") {
        return;
    }
    let run = LabRun::new("selftest-no-kvm")
        .runner_env("LAB_CPU", "EPYC-Rome,-svm")
        .boot_timeout(180)
        .command(["echo", "unreachable"])
        .run();
    run.assert_status(STATUS_L1_NO_KVM);
    run.assert_kind("l1-no-kvm");
    run.assert_stderr_contains("no /dev/kvm");
    run.assert_no_line("unreachable");
}

/// No L1 boot: the host has no such QEMU.
#[test]
fn missing_qemu_is_reported() {
    if lab_skipped("missing_qemu_is_reported") {
        return;
    }
    let run = LabRun::new("selftest-no-qemu")
        .runner_env("LAB_QEMU", "/nonexistent/qemu-system-x86_64")
        .command(["true"])
        .run();
    run.assert_status(STATUS_NO_QEMU);
    run.assert_kind("qemu-missing");
    run.assert_stderr_contains("/nonexistent/qemu-system-x86_64 not found");
}
