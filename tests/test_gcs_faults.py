"""gs:// faults through the command line: an object store that fails a fraction of requests
(503/429) or goes down for a few seconds (tests/gcs_fault_proxy.py in front of the emulator), and
the workdir lease. The clients' own retries (gcsfs: 6 tries, exponential backoff with jitter up
to 32 s; tensorstore: 32 tries, 1 s doubling to 32 s) carry the run through, and its end state is
bit-identical to an undisturbed run's. Skipped, not failed, when the emulator cannot start."""
from __future__ import annotations

import importlib.util
import os
import time

import pytest

if importlib.util.find_spec("gcsfs") is None or importlib.util.find_spec(
        "gcp_storage_emulator") is None:
    pytest.skip("gcsfs or gcp-storage-emulator is not installed", allow_module_level=True)

from etils import epath  # noqa: E402

import gcs_fault_proxy as gfp  # noqa: E402
from run_utils import TINY, final_state, free_port, state_differences  # noqa: E402

BUCKET = "igc-faults"
FLAGS = (*TINY, "--config.num_train_steps=8", "--config.checkpoint_every_steps=2",
         "--config.eval_every_steps=100")


@pytest.fixture(scope="module")
def emulator():
    """(port, gs:// root) of an emulator with write preconditions; this process uses it."""
    port = free_port()
    proc = gfp.start("emulator", str(port), BUCKET)
    if not gfp.wait_for_port(port, proc, 30):
        proc.kill()
        pytest.skip("gcp-storage-emulator did not start listening within 30 s")
    env = gfp.client_env(f"http://127.0.0.1:{port}")
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import gcsfs
    gcsfs.GCSFileSystem.clear_instance_cache()
    try:
        yield port, f"gs://{BUCKET}"
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        gcsfs.GCSFileSystem.clear_instance_cache()
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def reference(emulator):
    port, root = emulator
    r = gfp.run_through(port, f"{root}/ref", *FLAGS)
    assert r["rc"] == 0, r["stderr"][-3000:]
    return final_state(epath.Path(f"{root}/ref"))


@pytest.mark.parametrize("fault", ["flaky", "outage"])
def test_transient_store_errors_are_retried_and_the_end_state_is_identical(
        emulator, reference, fault):
    port, root = emulator
    kw = (dict(fail_rate=0.1) if fault == "flaky"
          else dict(down_for=4.0, outage_after_checkpoint=True))
    r = gfp.run_through(port, f"{root}/{fault}", *FLAGS, **kw)
    assert r["rc"] == 0, r["stderr"][-3000:]
    injected = r["http_503"] + r["http_429"] if fault == "flaky" else r["dropped"]
    assert injected > 0, r
    assert not state_differences(final_state(epath.Path(f"{root}/{fault}")), reference)


def test_the_gs_lease_refuses_a_live_holder_and_is_taken_over_once_expired(emulator):
    from igc_jax.errors import EnvironmentFailure
    from igc_jax.training.workdir_lock import GcsLease, WorkdirBusy

    wd = epath.Path(f"{emulator[1]}/leased")
    a = GcsLease(wd)
    a.acquire()
    b = GcsLease(wd)
    with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
        b.refuse_if_held()
    with pytest.raises(WorkdirBusy):
        b.acquire()
    # A holder that stops renewing (a lost VM): its lease expires and is taken over, and the old
    # holder, should it come back, finds out at its next renewal.
    short = GcsLease(epath.Path(f"{emulator[1]}/short"), beats=0.001)
    short.acquire()
    time.sleep(0.1)
    c = GcsLease(epath.Path(f"{emulator[1]}/short"))
    c.acquire()
    short.renew()
    with pytest.raises(EnvironmentFailure, match="lost the lease"):
        short.check()
    # Of two writers with the same generation, exactly one wins (the precondition).
    assert c._write("0") is None
    a.release()
    b.acquire()
    b.release()
    c.release()
