/* count_steps.c: Cortex-M4 instructions per bsoc_step, on QEMU's MPS2 AN386 board.
 *
 * Run with `qemu-system-arm -icount shift=0`: every instruction then advances the virtual
 * clock by 1 ns, and SysTick, clocked by the board's 25 MHz processor clock, counts one
 * tick per 40 instructions. Reads up to BSOC_MAX_SAMPLES lines "V I T" (semihosting stdin)
 * into memory first, so that no input or output falls inside the count, then steps one
 * cell through them and prints "ticks T samples N". The ticks are summed step by step, so
 * the 24-bit counter wraps harmlessly (one step would have to exceed 671 million
 * instructions); they include the loop's few instructions around each call.
 */
#include <stdint.h>
#include <stdio.h>

#include "bsoc_model.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_MASK 0xFFFFFFu
#define BSOC_MAX_SAMPLES 4096

static float samples[BSOC_MAX_SAMPLES][3];

int main(void)
{
    static bsoc_state state;
    int n = 0;
    while (n < BSOC_MAX_SAMPLES &&
           scanf("%f %f %f", &samples[n][0], &samples[n][1], &samples[n][2]) == 3) {
        ++n;
    }
    bsoc_init(&state);
    volatile float soc = 0.0f; /* kept, so that no step is optimised away */
    SYST_RVR = SYST_MASK;
    SYST_CVR = 0u;
    SYST_CSR = 5u; /* enabled, processor clock, no interrupt */
    uint32_t ticks = 0u, before = SYST_CVR;
    for (int k = 0; k < n; ++k) {
        soc = bsoc_step(&state, samples[k][0], samples[k][1], samples[k][2]);
        const uint32_t now = SYST_CVR; /* counts down */
        ticks += (before - now) & SYST_MASK;
        before = now;
    }
    printf("ticks %lu samples %d soc %.9e\n", (unsigned long)ticks, n, (double)soc);
    return 0;
}
