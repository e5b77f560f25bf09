/* Reset for the exported library on an emulated MPS2 AN386 (Cortex-M4F) board: enable the
 * FPU, then newlib's semihosting start-up (rdimon), which zeroes .bss and calls main. */
extern void _start(void);
extern char __StackTop;

static void hang(void)
{
    for (;;) {
    }
}

void Reset_Handler(void)
{
    *(volatile unsigned int *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
    __asm volatile("dsb\n\tisb");
    _start();
    hang();
}

/* initial stack pointer, reset, then the faults (a fault hangs: the run's timeout reports it) */
__attribute__((section(".vectors"), used)) void (*const vectors[16])(void) = {
    (void (*)(void))&__StackTop, Reset_Handler, hang, hang, hang, hang, hang, 0, 0, 0, 0,
    hang, hang, 0, hang, hang};
