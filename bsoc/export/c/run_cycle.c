/* run_cycle.c: stream samples through the exported SOC library on a host (or under an
 * emulator with semihosting) to check it against bsoc.
 *
 * Reads lines "voltage_v current_a temperature_c" from stdin, one cell, state carried
 * from sample to sample; prints one SOC per line, then the final state, one value a line
 * after a line "state". Build: cc -std=c99 -O2 bsoc_model.c run_cycle.c -o run_cycle
 */
#include <stdio.h>

#include "bsoc_model.h"

int main(void)
{
    static bsoc_state state; /* static: a microcontroller's stack may be smaller than it */
    float v, i, t;
    bsoc_init(&state);
    while (scanf("%f %f %f", &v, &i, &t) == 3) {
        printf("%.9e\n", (double)bsoc_step(&state, v, i, t));
    }
    printf("state\n");
    for (int k = 0; k < BSOC_STATE_SIZE; ++k) printf("%.9e\n", (double)state.values[k]);
    return 0;
}
