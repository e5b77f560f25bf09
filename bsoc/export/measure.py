"""What an exported C library costs on its targets, measured with the real toolchains.

* instructions per step on x86: the host build (``cc -O2``) streamed under valgrind's
  callgrind, counting only inside ``bsoc_step`` (repeatable, unlike times);
* flash and RAM on a Cortex-M4F: ``arm-none-eabi-gcc -mcpu=cortex-m4 -mfpu=fpv4-sp-d16
  -mfloat-abi=hard -O2``, sections from ``arm-none-eabi-size``: flash = text + rodata +
  data (initial values), RAM = data + bss + the caller's state;
* the same Cortex-M4 code run on QEMU's MPS2 AN386 board (``c/mps2/``: vector table,
  FPU enable, memory map), samples in and SOCs out through semihosting;
* Cortex-M4 instructions per step: the same build with ``c/mps2/count_steps.c``, run with
  ``-icount shift=0`` (one instruction = 1 ns of virtual time) and timed by SysTick, whose
  25 MHz processor clock makes one tick 40 instructions (repeatable, like callgrind's).

Each needs Debian packages (``valgrind``, ``gcc-arm-none-eabi`` with
``libnewlib-arm-none-eabi``, ``qemu-system-arm``); :func:`missing_tools` names the absent
ones so that callers can skip with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np

from bsoc.export.c_source import HEADER_FILE, RUNNER_FILE, SOURCE_FILE

HOST_CC = ("gcc", "cc")
CORTEX_M4_FLAGS = ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-mthumb", "-O2",
                   "-std=c99")
TOOLS = {"host": (), "callgrind": ("valgrind",),
         "cortex-m4": ("arm-none-eabi-gcc", "arm-none-eabi-size"),
         "qemu": ("arm-none-eabi-gcc", "qemu-system-arm")}


def missing_tools(measure: str) -> list[str]:
    """The programs ``measure`` ("host", "callgrind", "cortex-m4", "qemu") needs and cannot
    find (every measure builds on the host first, so a C compiler is always needed)."""
    needed = list(TOOLS[measure]) + ([] if any(shutil.which(c) for c in HOST_CC) else ["cc"])
    return [tool for tool in needed if shutil.which(tool) is None]


def _host_cc() -> str:
    return next(c for c in HOST_CC if shutil.which(c))


def compiler_versions() -> dict[str, str]:
    """First line of ``--version`` of each compiler found here (what made the figures)."""
    compilers = [c for c in HOST_CC if shutil.which(c)][:1]
    compilers += ["arm-none-eabi-gcc"] if shutil.which("arm-none-eabi-gcc") else []
    return {tool: subprocess.run([tool, "--version"], capture_output=True, text=True,
                                 check=True).stdout.splitlines()[0] for tool in compilers}


def sample_lines(samples: np.ndarray) -> str:
    """``run_cycle``'s input: ``V I T`` per line, float32 values written exactly."""
    rows = samples[:, 1:4].astype(np.float32)
    return "".join(f"{v:.9e} {i:.9e} {t:.9e}\n" for v, i, t in rows)


def parse_run(output: str) -> tuple[np.ndarray, np.ndarray]:
    """SOC per sample and final state from ``run_cycle``'s output."""
    words = output.split()
    split = words.index("state")
    return np.array(words[:split], float), np.array(words[split + 1 :], float)


def _built(folder: Path, target: str, command: list[str], sources: tuple[str, ...]) -> Path:
    """``folder / target``, made by ``command`` unless it is newer than all its ``sources``:
    a measure reuses what an earlier one compiled from the same export (a dense network's
    library is megabytes of C)."""
    out = folder / target
    made = out.stat().st_mtime_ns if out.exists() else -1
    if any((folder / source).stat().st_mtime_ns >= made for source in sources):
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
    return out


def host_build(folder: Path) -> Path:
    """``run_cycle`` for this machine, from the exported sources in ``folder``."""
    return _built(folder, "run_cycle", [
        _host_cc(), "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror", SOURCE_FILE,
        RUNNER_FILE, "-o", "run_cycle"], (SOURCE_FILE, HEADER_FILE, RUNNER_FILE))


def _cortex_m4_object(folder: Path) -> str:
    """The library compiled for the Cortex-M4F (``bsoc_model_m4.o``), once per export."""
    return _built(folder, "bsoc_model_m4.o", ["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "-c",
                                              SOURCE_FILE, "-o", "bsoc_model_m4.o"],
                  (SOURCE_FILE, HEADER_FILE)).name


def host_run(folder: Path, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SOCs and final state of the host build of the library in ``folder`` over ``samples``."""
    run = subprocess.run([f"./{host_build(folder).name}"], cwd=folder,
                         input=sample_lines(samples), capture_output=True, text=True, check=True)
    return parse_run(run.stdout)


def instructions_per_step(folder: Path, samples: np.ndarray) -> float:
    """x86 instructions one ``bsoc_step`` costs, averaged over ``samples`` (callgrind)."""
    program = host_build(folder)
    subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=callgrind.out",
                    "--toggle-collect=bsoc_step", f"./{program.name}"], cwd=folder,
                   input=sample_lines(samples), capture_output=True, text=True, check=True)
    totals = [line for line in (folder / "callgrind.out").read_text().splitlines()
              if line.startswith(("totals:", "summary:"))]
    return int(totals[0].split()[1]) / len(samples)


def cortex_m4_sizes(folder: Path, state_size: int) -> dict[str, int]:
    """Flash and RAM bytes of the library compiled for a Cortex-M4F (state included in RAM)."""
    out = subprocess.run(["arm-none-eabi-size", "-A", _cortex_m4_object(folder)], cwd=folder,
                         check=True, capture_output=True, text=True).stdout
    sections: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].startswith("."):
            sections[parts[0]] = int(parts[1])

    def total(*prefixes: str) -> int:
        return sum(size for name, size in sections.items() if name.startswith(prefixes))

    text, rodata, data, bss = total(".text"), total(".rodata"), total(".data"), total(".bss")
    return {"text": text, "rodata": rodata, "data": data, "bss": bss,
            "state": 4 * state_size, "flash": text + rodata + data,
            "ram": data + bss + 4 * state_size}


# MPS2 AN386: 25 MHz processor clock; with -icount shift=0 one instruction takes 1 ns
INSTRUCTIONS_PER_SYSTICK = 40
COUNTED_SAMPLES_MAX = 4096  # count_steps.c's buffer


def _qemu(folder: Path, runner: str, samples: np.ndarray, timeout_s: float,
          icount: bool = False) -> str:
    """Build the library with ``runner`` (in ``folder``, or the board's ``c/mps2/``) for the
    MPS2 AN386 and run it on QEMU with ``samples`` on its stdin; returns its stdout."""
    board = resources.files("bsoc.export").joinpath("c", "mps2")
    for name in ("startup_m4.c", "mps2_an386.ld", "count_steps.c"):
        (folder / name).write_text(board.joinpath(name).read_text())
    elf = f"{Path(runner).stem}.elf"
    subprocess.run(["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "--specs=rdimon.specs", "-T",
                    "mps2_an386.ld", "startup_m4.c", _cortex_m4_object(folder), runner, "-o",
                    elf], cwd=folder, check=True, capture_output=True)
    run = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor",
                          "none", "-serial", "none", "-semihosting-config",
                          "enable=on,target=native", *(["-icount", "shift=0"] if icount else []),
                          "-kernel", elf], cwd=folder, input=sample_lines(samples),
                         capture_output=True, text=True, check=True, timeout=timeout_s)
    return run.stdout


def qemu_run(folder: Path, samples: np.ndarray, *, timeout_s: float = 600.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """SOCs and final state of the Cortex-M4 build run on QEMU's MPS2 AN386 over ``samples``."""
    return parse_run(_qemu(folder, RUNNER_FILE, samples, timeout_s))


def cortex_m4_instructions_per_step(folder: Path, samples: np.ndarray, *,
                                    timeout_s: float = 600.0) -> float:
    """Cortex-M4 instructions one ``bsoc_step`` call costs, averaged over the first
    ``COUNTED_SAMPLES_MAX`` of ``samples``, counted by QEMU's instruction clock (SysTick)."""
    words = _qemu(folder, "count_steps.c", samples[:COUNTED_SAMPLES_MAX], timeout_s,
                  icount=True).split()
    ticks, steps = int(words[words.index("ticks") + 1]), int(words[words.index("samples") + 1])
    return INSTRUCTIONS_PER_SYSTICK * ticks / steps
