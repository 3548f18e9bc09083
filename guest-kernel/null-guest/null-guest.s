/*
 * vmm's null guest: the smallest guest that boots through the PVH entry
 * point (32-bit protected mode, paging off, EBX = hvm_start_info), says it
 * is up, and ends the way its command line says. It measures a VMM's own
 * overhead: on a KVM-PVM host it runs natively, unlike a stock kernel.
 *
 * 1. Writes boot marker 1 to vmm's debug device (MMIO 0xd0000000).
 * 2. Prints "NULL-GUEST-READY" on COM1 (0x3f8).
 * 3. Reads the command line (hvm_start_info.cmdline_paddr); the last of
 *    these words wins:
 *      exit      exit with status 0 (the default)
 *      exit=N    exit with status N (0-255)
 *      idle      halt forever with interrupts off (the host kills the VMM)
 *      reboot    reset through the i8042 (port 0x64, value 0xfe)
 *    and the modifier
 *      wait      first wait for one byte of input on COM1 (receive
 *                interrupt enabled in the IER, the LSR polled)
 * 4. Exit: status to vmm's debug device (MMIO 0xd0000004); then to QEMU's
 *    isa-debug-exit (port 0xf4, QEMU exits with 2*N+1); then a triple fault
 *    (QEMU with -no-reboot exits 0). Reboot: i8042 reset, then a triple fault.
 *
 * GNU as (AT&T syntax, no C preprocessor); 32-bit code in an ELF64 x86-64
 * file (what VMMs expect of a PVH kernel), linked at 1 MiB by build.sh with
 * link.ld.
 */

	.equ DEBUG_MARKER, 0xd0000000
	.equ DEBUG_EXIT, 0xd0000004
	.equ COM1, 0x3f8
	.equ COM1_IER, (COM1 + 1)
	.equ IER_RX_AVAILABLE, 0x01
	.equ COM1_LSR, (COM1 + 5)
	.equ LSR_DATA_READY, 0x01
	.equ I8042_CMD, 0x64
	.equ I8042_RESET, 0xfe
	.equ ISA_DEBUG_EXIT, 0xf4
	.equ XEN_HVM_START_MAGIC, 0x336ec578
	.equ START_INFO_CMDLINE, 24 /* hvm_start_info.cmdline_paddr (u64) */

	.equ MODE_EXIT, 0
	.equ MODE_IDLE, 1
	.equ MODE_REBOOT, 2

/* The PVH entry point: an ELF note of type XEN_ELFNOTE_PHYS32_ENTRY (18),
 * name "Xen", descriptor the 32-bit physical entry address (stored as 8
 * bytes, as Linux does, which QEMU reads). */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4, 8, 18
	.asciz "Xen"
	.balign 4
	.quad pvh_start

	.text
	.code32
	.globl pvh_start
pvh_start:
	cli
	cld
	movl $stack_top, %esp
	movb $1, DEBUG_MARKER

	movl $ready_msg, %esi
	call puts

	/* Defaults: exit with status 0, no wait. EDI = mode, EBP = status,
	 * ECX = wait flag. */
	xorl %edi, %edi
	xorl %ebp, %ebp
	xorl %ecx, %ecx
	cmpl $XEN_HVM_START_MAGIC, (%ebx)
	jne act
	cmpl $0, START_INFO_CMDLINE+4(%ebx)  /* above 4 GiB: unreachable */
	jne act
	movl START_INFO_CMDLINE(%ebx), %esi
	testl %esi, %esi
	jz act

	/* Walk the words of the command line. */
next_word:
	movb (%esi), %al
	testb %al, %al
	jz act
	cmpb $' ', %al
	jne word
	incl %esi
	jmp next_word
word:
	movl $w_exit, %edx
	call match                 /* ZF: the word is "exit"; AL: what follows */
	jne 1f
	cmpb $'=', %al
	je 3f
	call word_end
	jne skip_word
	movl $MODE_EXIT, %edi      /* exit */
	xorl %ebp, %ebp
	jmp skip_word
3:	movl $MODE_EXIT, %edi      /* exit=N: decimal, low byte kept */
	xorl %ebp, %ebp
	incl %esi
2:	movzbl (%esi), %eax
	subl $'0', %eax
	cmpl $9, %eax
	ja skip_word
	imull $10, %ebp
	addl %eax, %ebp
	incl %esi
	jmp 2b
1:	movl $w_idle, %edx
	call match
	jne 1f
	call word_end
	jne skip_word
	movl $MODE_IDLE, %edi
	jmp skip_word
1:	movl $w_reboot, %edx
	call match
	jne 1f
	call word_end
	jne skip_word
	movl $MODE_REBOOT, %edi
	jmp skip_word
1:	movl $w_wait, %edx
	call match
	jne skip_word
	call word_end
	jne skip_word
	movl $1, %ecx
skip_word:
	movb (%esi), %al
	testb %al, %al
	jz act
	cmpb $' ', %al
	je next_word
	incl %esi
	jmp skip_word

act:
	testl %ecx, %ecx
	jz 1f
	/* Wait for a byte of input. Enable the receive interrupt first, as a
	 * driver that wants input does: vmm forwards console input only then.
	 * It is never taken (interrupts are off); the LSR is polled. */
	movb $IER_RX_AVAILABLE, %al
	movw $COM1_IER, %dx
	outb %al, %dx
	movw $COM1_LSR, %dx
2:	pause
	inb %dx, %al
	testb $LSR_DATA_READY, %al
	jz 2b
1:	cmpl $MODE_IDLE, %edi
	je idle
	cmpl $MODE_REBOOT, %edi
	je reboot

exit:
	movl %ebp, %eax
	movb %al, DEBUG_EXIT
	outb %al, $ISA_DEBUG_EXIT
	jmp triple_fault

reboot:
	movb $I8042_RESET, %al
	outb %al, $I8042_CMD
	jmp triple_fault

idle:
	hlt
	jmp idle

/* An exception with an empty IDT: #UD, then #DF, then a shutdown. (ud2,
 * not int3: KVM-PVM's emulator fails on int3 instead of faulting.) */
triple_fault:
	lidt null_idt
	ud2
	jmp triple_fault

/* puts: print the NUL-terminated string at ESI on COM1. */
puts:
	movw $COM1, %dx
1:	lodsb
	testb %al, %al
	jz 2f
	outb %al, %dx
	jmp 1b
2:	ret

/* match: does the word at ESI start with the NUL-terminated string at EDX?
 * If so: ZF set, ESI advanced past it, AL = the character after it.
 * If not: ZF clear, ESI unchanged. */
match:
	pushl %esi
1:	movb (%edx), %al
	testb %al, %al
	jz 2f
	cmpb (%esi), %al
	jne 3f
	incl %esi
	incl %edx
	jmp 1b
2:	movb (%esi), %al
	addl $4, %esp              /* drop the saved ESI; ZF is still set */
	cmpb %al, %al
	ret
3:	popl %esi                  /* ZF is still clear from the cmpb */
	ret

/* word_end: ZF set when ESI is at the end of a word (space or NUL). */
word_end:
	movb (%esi), %al
	testb %al, %al
	jz 1f
	cmpb $' ', %al
1:	ret

	.section .rodata
ready_msg: .asciz "NULL-GUEST-READY\n"
w_exit:    .asciz "exit"
w_idle:    .asciz "idle"
w_reboot:  .asciz "reboot"
w_wait:    .asciz "wait"
	.balign 8
null_idt:  .word 0
	.long 0

	.bss
	.balign 16
	.skip 256
stack_top:
