"""An impl that never returns: killed after the per-task --timeout."""

import time

import attnbench


@attnbench.register("ccnet", kind="user", name="hangs")
def cca_hangs(q, k, v):
    while True:
        time.sleep(1.0)
