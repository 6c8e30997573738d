"""Environment faults: a disk that fills up (and SIGKILLs) on a tmpfs, and a flaky object store.

    python -m benchmarks.fault_injection_env [--disk_fulls=3] [--fail_rate=0.1]

Full disk (needs root to mount a 40 MB tmpfs; skipped with the reason otherwise): the shrunk quick
start trains on the tmpfs; `disk_fulls` times the disk is filled to 48 KiB free (less than a
checkpoint), the same command is run (it must exit 3 with one line) and space is freed; between
them one run is SIGKILLed at a random moment; the final run finishes. Steps lost per disk-full:
the steps trained past the intact checkpoint. Flaky store: the same run on a gs:// workdir through
tests/gcs_fault_proxy.py (a seeded `fail_rate` of requests answered 503/429), against an
undisturbed one through the same proxy at rate 0. Both compare the final saved state bit for bit
with an undisturbed run's. Results: benchmarks/results/fault_injection_env.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import gcs_fault_proxy as gfp  # noqa: E402
from run_utils import TINY, final_state, free_port, run_main, state_differences  # noqa: E402

from benchmarks import fault_injection  # noqa: E402

STEPS = 24
FLAGS = (*TINY, f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=4")


def full_disk(tmp: Path, disk_fulls: int, rng: random.Random) -> dict:
    disk = tmp / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(disk)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs: {r.stderr.strip()}"}
    try:
        assert run_main(tmp / "ref", *FLAGS).returncode == 0
        wd = disk / "run"
        fulls, kills = [], []
        for i in range(disk_fulls):
            if i == 1:
                kills.append(fault_injection.run_with_kill(wd, rng, aim_at_write=False))
            fulls.append(fill_during_run(disk, wd))
        r = run_main(wd, *FLAGS)
        differ = state_differences(final_state(wd), final_state(tmp / "ref"))
        return {"disk_fulls": fulls, "kills": kills, "final_rc": r.returncode,
                "identical": not differ, "differences": differ[:5]}
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_during_run(disk: Path, wd: Path) -> dict:
    """Start the run, fill the disk once it has written a new checkpoint, free it after."""
    from run_utils import ROOT, env_with_devices, main_cmd
    before = fault_injection.resumed_step(wd) if wd.exists() else 0
    proc = subprocess.Popen(main_cmd(wd, *FLAGS), env=env_with_devices(1), cwd=ROOT, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and (
            not (wd / "checkpoints").exists() or fault_injection.resumed_step(wd) <= before):
        time.sleep(0.05)
    filler = fault_injection.fill_disk(disk, leave_kib=48)
    _, err = proc.communicate(timeout=600)
    filler.unlink()
    st = json.loads((wd / "status.json").read_text())
    lines = [x for x in err.splitlines() if x.strip()]
    return {"rc": proc.returncode, "line": lines[-1] if lines else "",
            "one_line": sum(x.startswith("error:") for x in lines) == 1,
            "status": st["status"], "step": st["step"],
            "steps_lost": st["step"] - (st.get("last_checkpoint") or 0)}


def flaky_store(tmp: Path, fail_rate: float) -> dict:
    port = free_port()
    emulator = gfp.start("emulator", str(port), "igc-bench")
    import os
    try:
        if not gfp.wait_for_port(port, emulator, 30):
            return {"skipped": "the GCS emulator did not start"}
        os.environ.update(gfp.client_env(f"http://127.0.0.1:{port}"))
        flags = (*TINY, "--config.num_train_steps=12", "--config.checkpoint_every_steps=2",
                 "--config.eval_every_steps=100")
        ref = gfp.run_through(port, "gs://igc-bench/ref", *flags)
        flaky = gfp.run_through(port, "gs://igc-bench/flaky", *flags, fail_rate=fail_rate)
        from etils import epath
        differ = state_differences(final_state(epath.Path("gs://igc-bench/flaky")),
                                   final_state(epath.Path("gs://igc-bench/ref")))
        return {"fail_rate": fail_rate, "requests": flaky["requests"],
                "faults_injected": flaky["http_503"] + flaky["http_429"],
                "http_503": flaky["http_503"], "http_429": flaky["http_429"],
                "rc": flaky["rc"], "ref_rc": ref["rc"],
                "seconds_undisturbed": round(ref["seconds"], 1),
                "seconds_flaky": round(flaky["seconds"], 1),
                "seconds_added": round(flaky["seconds"] - ref["seconds"], 1),
                "identical": not differ, "differences": differ[:5]}
    finally:
        emulator.kill()
        emulator.wait()


def markdown(disk: dict, store: dict) -> str:
    out = ["## Full disk (40 MB tmpfs)", ""]
    if "skipped" in disk:
        out.append(f"skipped: {disk['skipped']}")
    else:
        fulls = disk["disk_fulls"]
        survived = sum(f["rc"] == 3 and f["one_line"] and f["status"] == "failed" for f in fulls)
        out += ["| disk-fulls survived (exit 3, one line, status failed) | SIGKILLs survived "
                "| steps lost per disk-full | end state identical |", "|---|---|---|---|",
                f"| {survived}/{len(fulls)} | {sum(k['killed'] for k in disk['kills'])} | "
                f"{', '.join(str(f['steps_lost']) for f in fulls)} | {disk['identical']} |", "",
                f"Example line: `{fulls[0]['line']}`"]
    out += ["", "## Flaky object store (gs:// through the fault proxy)", ""]
    if "skipped" in store:
        out.append(f"skipped: {store['skipped']}")
    else:
        out += ["| failure rate injected | requests | faults injected (= retries) "
                "| time added | end state identical |", "|---|---|---|---|---|",
                f"| {store['fail_rate']:.0%} | {store['requests']} | {store['faults_injected']} "
                f"({store['http_503']}× 503, {store['http_429']}× 429) | "
                f"{store['seconds_added']:+.1f} s ({store['seconds_undisturbed']:.1f} → "
                f"{store['seconds_flaky']:.1f} s) | {store['identical']} |"]
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--disk_fulls", type=int, default=3)
    p.add_argument("--fail_rate", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        disk = full_disk(Path(tmp), args.disk_fulls, random.Random(args.seed))
    with tempfile.TemporaryDirectory() as tmp:
        store = flaky_store(Path(tmp), args.fail_rate)
    summary = {"full_disk": disk, "flaky_store": store, "wall_seconds": round(time.time() - t0)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_injection_env.json").write_text(json.dumps(summary, indent=1))
    (out / "fault_injection_env.md").write_text(markdown(disk, store))
    print(markdown(disk, store))


if __name__ == "__main__":
    main()
