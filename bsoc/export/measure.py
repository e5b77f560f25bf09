"""What an exported C library costs on its targets, measured with the real toolchains.

* instructions per step on x86: the host build (``cc -O2``) streamed under valgrind's
  callgrind, counting only inside ``bsoc_step`` (repeatable, unlike times);
* flash and RAM on a Cortex-M4F: ``arm-none-eabi-gcc -mcpu=cortex-m4 -mfpu=fpv4-sp-d16
  -mfloat-abi=hard -O2``, sections from ``arm-none-eabi-size``: flash = text + rodata +
  data (initial values), RAM = data + bss + the caller's state;
* the same Cortex-M4 code run on QEMU's MPS2 AN386 board (``c/mps2/``: vector table,
  FPU enable, memory map), samples in and SOCs out through semihosting.

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

from bsoc.export.c_source import RUNNER_FILE, SOURCE_FILE

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


def host_build(folder: Path) -> Path:
    """``run_cycle`` for this machine, from the exported sources in ``folder``."""
    subprocess.run([_host_cc(), "-std=c99", "-O2", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    SOURCE_FILE, RUNNER_FILE, "-o", "run_cycle"], cwd=folder, check=True,
                   capture_output=True)
    return folder / "run_cycle"


def host_run(folder: Path, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SOCs and final state of the host build of the library in ``folder`` over ``samples``."""
    run = subprocess.run([str(host_build(folder))], input=sample_lines(samples),
                         capture_output=True, text=True, check=True)
    return parse_run(run.stdout)


def instructions_per_step(folder: Path, samples: np.ndarray) -> float:
    """x86 instructions one ``bsoc_step`` costs, averaged over ``samples`` (callgrind)."""
    program = host_build(folder)
    out_file = folder / "callgrind.out"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}",
                    "--toggle-collect=bsoc_step", str(program)], cwd=folder,
                   input=sample_lines(samples), capture_output=True, text=True, check=True)
    totals = [line for line in out_file.read_text().splitlines()
              if line.startswith(("totals:", "summary:"))]
    return int(totals[0].split()[1]) / len(samples)


def cortex_m4_sizes(folder: Path, state_size: int) -> dict[str, int]:
    """Flash and RAM bytes of the library compiled for a Cortex-M4F (state included in RAM)."""
    subprocess.run(["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "-c", SOURCE_FILE, "-o",
                    "bsoc_model_m4.o"], cwd=folder, check=True, capture_output=True)
    out = subprocess.run(["arm-none-eabi-size", "-A", "bsoc_model_m4.o"], cwd=folder,
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


def qemu_run(folder: Path, samples: np.ndarray, *, timeout_s: float = 600.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """SOCs and final state of the Cortex-M4 build run on QEMU's MPS2 AN386 over ``samples``."""
    board = resources.files("bsoc.export").joinpath("c", "mps2")
    startup, script = folder / "startup_m4.c", folder / "mps2_an386.ld"
    startup.write_text(board.joinpath("startup_m4.c").read_text())
    script.write_text(board.joinpath("mps2_an386.ld").read_text())
    subprocess.run(["arm-none-eabi-gcc", *CORTEX_M4_FLAGS, "--specs=rdimon.specs", "-T",
                    script.name, startup.name, SOURCE_FILE, RUNNER_FILE, "-o", "run_cycle.elf"],
                   cwd=folder, check=True, capture_output=True)
    run = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor",
                          "none", "-serial", "none", "-semihosting-config",
                          "enable=on,target=native", "-kernel", "run_cycle.elf"], cwd=folder,
                         input=sample_lines(samples), capture_output=True, text=True,
                         check=True, timeout=timeout_s)
    return parse_run(run.stdout)
