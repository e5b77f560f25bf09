"""CLI command modules. Each keeps heavy imports (torch, pybamm) inside its functions
so that ``bsoc --help`` and unrelated commands start fast."""
