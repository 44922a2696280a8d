/* Multiboot v1 entry for memwalk. The loader (QEMU's -kernel) enters in
 * 32-bit protected mode with flat segments and paging off; EAX holds the
 * bootloader magic and EBX the physical address of the multiboot info. */

#define MB_MAGIC 0x1BADB002
/* bit 0: page-align modules (we load none, harmless); bit 1: we need
 * mem_upper and the memory map. */
#define MB_FLAGS 0x00000003

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .bss
    .align 16
stack_bottom:
    .skip 16384
stack_top:

    .text
    .globl _start
    .type _start, @function
_start:
    cli
    cld
    mov $stack_top, %esp
    mov %eax, %edx          /* keep the magic and info pointer across */
    mov %ebx, %esi          /* the bss clear, which needs EAX/ECX/EDI */
    /* Not every multiboot loader zeroes .bss; do it here, before any C. */
    mov $__bss_start, %edi
    mov $__bss_end, %ecx
    sub %edi, %ecx
    xor %eax, %eax
    rep stosb
    push %esi
    push %edx
    call memwalk_main
    /* memwalk_main never returns; if it did, stop rather than run off. */
1:  cli
    hlt
    jmp 1b
    .size _start, . - _start

    /* The guest needs no executable stack; say so to the linker. */
    .section .note.GNU-stack, "", @progbits
