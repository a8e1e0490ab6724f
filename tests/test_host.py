"""`reuse_freed_memory`: freed large blocks are reused instead of being faulted in again."""

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import ctypes, ctypes.util, resource, sys
    applied = None
    if sys.argv[1] == "reuse":  # (the default mode imports nothing of jaxflows: a fast process)
        from jaxflows.train.host import reuse_freed_memory
        applied = reuse_freed_memory()
    if sys.argv[1] == "config":  # what every entry point does with TrainConfig.reuse_freed_memory
        from jaxflows.train import TrainConfig
        from jaxflows.train.host import apply_process_settings
        apply_process_settings(TrainConfig(reuse_freed_memory=True))
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    size = 300 * 2**20  # a 300 MB block, like one train step's temporaries on XLA:CPU

    def use_and_free():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)  # touch every page
        libc.free(block)

    use_and_free()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    use_and_free()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_without_page_faults():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        applied, count = out.stdout.split()
        return applied, int(count)

    applied, with_reuse = faults("reuse")
    _, without = faults("default")
    _, from_config = faults("config")
    assert applied == "True"
    assert without > 10_000  # the pages of 300 MB faulted in again (4 KiB pages: 76,800)
    assert with_reuse < 1_000 and from_config < 1_000


def test_process_settings_from_the_environment_are_checked_before_anything_starts(monkeypatch):
    from jaxflows.train import DistributedInitError, initialize_distributed
    from jaxflows.train.host import distributed_requested

    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    assert distributed_requested()
    with pytest.raises(
        DistributedInitError, match=r"num_processes \(or JAX_NUM_PROCESSES\): expected an integer"
    ):
        initialize_distributed()
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(DistributedInitError, match="process_id 3 is not below num_processes 2"):
        initialize_distributed(process_id=3)
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    assert not distributed_requested() and distributed_requested(multihost=True)
