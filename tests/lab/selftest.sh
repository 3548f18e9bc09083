#!/usr/bin/env bash
# Self-tests of the lab (run by `tests/lab/lab selftest`; the same checks exist as Rust
# tests in tests/lab_selftest.rs). Each group is one L1 boot; groups run one at a time.
#   A  QEMU microvm in L1 boots the project's kernel + rootfs: markers, command output,
#      VMM-GUEST-EXIT 0 and 3, QEMU exits by itself, /out comes back, status passes through
#   B  a guest with a missing root device is reported (no VMM-GUEST-READY), not waited for
#   C  a hanging scenario is killed by --timeout with status 124
#   D  an L1 CPU without SVM is reported as "no /dev/kvm" (status 103)
#   E  a missing QEMU on the host is reported at once (status 100)
# Ends with the line "N passed, N failed"; exits non-zero when anything failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lab=$here/lab
work=$(mktemp -d "${TMPDIR:-/tmp}/lab-selftest.XXXXXX")
trap 'rm -rf "$work"' EXIT
passed=0 failed=0

say() { echo "selftest: $*" >&2; }
ok() { passed=$((passed + 1)); say "ok   $*"; }
bad() { failed=$((failed + 1)); say "FAIL $*"; }
# check NAME CONDITION... — run a test command, count it.
check() { local name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
has_line() { grep -qxF -- "$2" "$1"; }      # FILE LINE: an exact line
has_text() { grep -qF -- "$2" "$1"; }       # FILE TEXT: a substring
is_status() { [ "$1" = "$2" ]; }

# run NAME [lab run options] -- SCENARIO...: sets st; output in $work/NAME.{out,err}
run() {
    local name=$1; shift
    local t0=$SECONDS
    say "group $name: tests/lab/lab run $*"
    st=0
    "$lab" run --log "$work/$name.l1.log" "$@" >"$work/$name.out" 2>"$work/$name.err" || st=$?
    say "group $name: status $st after $((SECONDS - t0)) s"
}
show() { # on failure, show what the group printed
    local name=$1
    sed "s/^/  $name stdout: /" "$work/$name.out" | tail -n 40 >&2
    sed "s/^/  $name stderr: /" "$work/$name.err" | tail -n 10 >&2
    cp "$work/$name.l1.log" "${TMPDIR:-/tmp}/lab-selftest-$name.l1.log" 2>/dev/null \
        && say "L1 log kept: ${TMPDIR:-/tmp}/lab-selftest-$name.l1.log"
}

t_start=$SECONDS
prep=$("$lab" prepare) || { say "FAIL prepare: tests/lab/lab prepare failed"; echo "0 passed, 1 failed"; exit 1; }
GUEST_VMLINUX=$(sed -n 's/^GUEST_VMLINUX=//p' <<<"$prep")
ROOTFS=$(sed -n 's/^ROOTFS=//p' <<<"$prep")
guest_files=(--file "$GUEST_VMLINUX:/lab/vmlinux" --file "$ROOTFS:/lab/rootfs.ext4")

# --- A -------------------------------------------------------------------------------
f0=$failed
run A --timeout 600 --out "$work/A.outdir" "${guest_files[@]}" -- "$here/scenarios/qemu-microvm.sh" \
    ok 'root=/dev/vda run="uname -r; echo lab-ok"' \
    exit3 'root=/dev/vda run="exit 3"'
o=$work/A.outdir
check "A: status of the last guest (exit 3) passes through L1 to the runner" is_status "$st" 3
check "A: ok guest printed VMM-GUEST-READY" has_line "$o/ok.log" VMM-GUEST-READY
check "A: ok guest ran the command (lab-ok)" has_line "$o/ok.log" lab-ok
check "A: ok guest ran uname -r (6.1.x)" grep -qE '^6\.1\.[0-9]+' "$o/ok.log"
check "A: ok guest reported VMM-GUEST-EXIT 0" has_line "$o/ok.log" "VMM-GUEST-EXIT 0"
check "A: ok guest: QEMU exited by itself with 0" has_text "$work/A.out" "GUEST-RUN name=ok result=ok guest_exit=0 vmm_status=0 "
check "A: exit3 guest reported VMM-GUEST-EXIT 3" has_line "$o/exit3.log" "VMM-GUEST-EXIT 3"
check "A: exit3 guest: QEMU exited by itself with 0" has_text "$work/A.out" "GUEST-RUN name=exit3 result=ok guest_exit=3 vmm_status=0 "
check "A: /out came back (status files)" test "$(cat "$o/ok.status" 2>/dev/null)/$(cat "$o/exit3.status" 2>/dev/null)" = 0/3
check "A: guest output was streamed to the runner's stdout" has_line "$work/A.out" lab-ok
[ "$failed" = "$f0" ] || show A
grep -h '^GUEST-RUN' "$work/A.out" >&2 || true
grep -h 'timings' "$work/A.err" >&2 || true

# --- B -------------------------------------------------------------------------------
f0=$failed
run B --timeout 300 "${guest_files[@]}" -- "$here/scenarios/qemu-microvm.sh" \
    broken 'root=/dev/vdz run="echo never"'
check "B: broken guest boot gives status 90 (no boot marker)" is_status "$st" 90
check "B: the message names the missing VMM-GUEST-READY marker" has_text "$work/B.out" "no VMM-GUEST-READY marker"
check "B: the guest never ran its command" eval "! grep -qx never '$work/B.out'"
[ "$failed" = "$f0" ] || show B

# --- C -------------------------------------------------------------------------------
f0=$failed
run C --timeout 10 -- sh -c 'echo hang-start; sleep 100000; echo hang-end'
check "C: a hanging scenario ends with status 124" is_status "$st" 124
check "C: it had started" has_line "$work/C.out" hang-start
check "C: it was killed, not finished" eval "! grep -qx hang-end '$work/C.out'"
check "C: the message names the timeout" has_text "$work/C.err" "did not finish within --timeout 10 s"
[ "$failed" = "$f0" ] || show C

# --- D -------------------------------------------------------------------------------
f0=$failed
LAB_CPU=EPYC-Rome,-svm run D --timeout 60 --boot-timeout 120 -- true
check "D: L1 without SVM is reported with status 103" is_status "$st" 103
check "D: the message says /dev/kvm is missing" has_text "$work/D.err" "no /dev/kvm"
[ "$failed" = "$f0" ] || show D

# --- E -------------------------------------------------------------------------------
f0=$failed
LAB_QEMU=/nonexistent/qemu-system-x86_64 run E --timeout 60 -- true
check "E: a missing QEMU is reported with status 100" is_status "$st" 100
check "E: the message names QEMU" has_text "$work/E.err" "qemu-system-x86_64 not found"
[ "$failed" = "$f0" ] || show E

say "total $((SECONDS - t_start)) s"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
