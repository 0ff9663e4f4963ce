"""The end of a torchrun test script (imported from the script's own folder, which torchrun puts on `sys.path`)."""

import os
import sys

import torch.distributed as dist


def finish() -> None:
    """Wait for every rank, tear the process group down and leave without the interpreter's teardown.

    Once a script's work was done and written, gloo's threads have now and then aborted the process at interpreter
    exit ("terminate called without an active exception", exit -6), also after `destroy_process_group()`; leaving
    with `os._exit(0)` skips that teardown. Call it only after the script finished normally: an exception before it
    still fails the run.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
