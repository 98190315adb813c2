"""This process's resident memory from /proc/self (Linux), for the benches' peak-memory figures."""
from pathlib import Path


def resident_bytes(field: str) -> int:
    """`VmRSS` (resident now) or `VmHWM` (high-water mark since the last reset), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} missing from /proc/self/status")


def reset_peak_resident() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # "5" resets VmHWM to the current RSS
