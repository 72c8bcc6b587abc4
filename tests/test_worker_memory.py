"""A worker returns the memory a task freed (glibc keeps it otherwise)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

# In a process of its own, so that nothing else shares its heap: 256 MiB in
# 64 KiB blocks (below glibc's mmap threshold, so on the heap), all freed but
# the last (which pins the top of the heap, so glibc cannot shrink it by
# itself); resident size after the frees, then after the release.
PROGRAM = textwrap.dedent(
    """
    import json
    from imagine.queue.memory import release_freed_memory

    def resident_mib():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024

    blocks = [bytearray(64 * 1024) for _ in range(4096)]
    last = blocks.pop()
    del blocks
    freed = resident_mib()
    released = release_freed_memory()
    print(json.dumps({"freed": freed, "after": resident_mib(), "released": released}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_memory_freed_by_a_task_goes_back_to_the_system() -> None:
    result = json.loads(
        subprocess.run(
            [sys.executable, "-c", PROGRAM], check=True, capture_output=True, text=True
        ).stdout
    )
    assert result["released"]
    assert result["freed"] - result["after"] > 200, result
