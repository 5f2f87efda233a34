"""The baselines a reviewer expects (issue 34): test quality at their default settings,
fit and test time, and the fitting process's peak memory; and their fit at ml-20m's shape.

Each quality row is one `python -m orchestrator train` run (the command a user runs, with
its default refit on train + val: validation picks nothing for a baseline at its defaults),
in a process of its own so that its peak resident memory is its own:

- ml-100k, leave-last, full ranking of all items (HR@10 / NDCG@10);
- the NCF authors' ml-1m files (`ncf-ml-1m-a`: users 0..1499 of their release), their 99
  test negatives (the sampled protocol).

`--ml20m` adds the fit alone at ml-20m's shape (138,493 users, 26,744 items, 20,000,000
synthetic interactions, generated once): per model, in a process of its own, the time of
its fit (`examples`: the closed form, the similarities, the SVD or the ALS sweeps, at the
model's defaults) and the process's peak resident memory. No evaluation there: a full
ranking of 26,744 items for 138,493 users is the scale bench's subject.

Run: `python bench/baselines_bench.py [--models ease,rp3beta,puresvd,itemknn,ials,pop]
[--ml20m]` (about two minutes on 2 CPU cores; `--ml20m` adds about 20). The data comes
from $RECSWEEP_SHARED_DATA or ../shared/data (never copied into the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RECSWEEP_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = {
    "ml-100k leave-last, full": [
        "--dataset", "ml-100k", "--data-dir", str(SHARED), "--split", "leave-last",
    ],
    "ncf-ml-1m-a, sampled (99)": [
        "--dataset", f"ncf:{SHARED / 'ncf-ml-1m-a' / 'ml-1m-a'}", "--split", "ncf",
        "--protocol", "sampled",
    ],
}  # fmt: skip
# a child's peak resident memory, in its own process (ru_maxrss of the one child it waits)
MEASURE = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def run(model: str, flags: list[str], out: Path) -> dict:
    command = [sys.executable, "-m", "orchestrator", "train", "--model", model, *flags]
    command += ["--json", "--out", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, *command],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{model}: {proc.stderr[-2000:]}")
    *lines, peak_kb = proc.stdout.strip().splitlines()
    metrics = json.loads(lines[-1])
    return {**metrics, "seconds": seconds, "peak_mb": int(peak_kb) / 1024}


ML20M = (138_493, 26_744, 20_000_000)


def generate(path: Path) -> None:
    """In this process: ml-20m-shaped synthetic interactions, saved as (user, item)."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from orchestrator.data.synthetic import generate as synthetic
    from orchestrator.data.synthetic import parse_spec

    users, items, size = ML20M
    raw = synthetic(parse_spec(f"synthetic:users={users},items={items},interactions={size}"))
    i = raw.raw.interactions
    np.savez(path, user=np.asarray(i.user), item=np.asarray(i.item))


def fit_once(model: str, path: Path) -> None:
    """In this process: fit `model` at its defaults on the saved interactions; print the
    fit's seconds and the process's peak resident memory as JSON."""
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from orchestrator.data.types import Split
    from orchestrator.models import DataSpec, create_model

    saved = np.load(path)
    _, user = np.unique(saved["user"], return_inverse=True)
    _, item = np.unique(saved["item"], return_inverse=True)
    n = len(user)
    train = Split(
        torch.from_numpy(user.astype(np.int64)),
        torch.from_numpy(item.astype(np.int64)),
        torch.ones(n),
        torch.zeros(n, dtype=torch.int64),
    )
    spec = DataSpec(int(user.max()) + 1, int(item.max()) + 1)
    built = create_model(model, spec, "ranking")
    start = time.perf_counter()
    built.examples(train)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        json.dumps(
            {"fit_s": seconds, "peak_gb": peak, "users": spec.n_users, "items": spec.n_items}
        )
    )


def ml20m_rows(models: list[str], work: Path) -> None:
    data = work / "ml20m.npz"
    subprocess.run([sys.executable, __file__, "--generate", str(data)], check=True, cwd=ROOT)
    print("\n| data | model | fit_s | peak_gb (the process, data included) |")
    print("|---|---|---|---|")
    for model in models:
        proc = subprocess.run(
            [sys.executable, __file__, "--fit", model, str(data)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            print(f"| ml-20m shape | {model} | failed: {proc.stderr.strip().splitlines()[-1]} | |")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"| ml-20m shape ({r['users']:,} x {r['items']:,}) | {model} "
            f"| {r['fit_s']:.1f} | {r['peak_gb']:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="ease,rp3beta,puresvd,itemknn,ials,pop")
    parser.add_argument("--ml20m", action="store_true", help="also the fit at ml-20m's shape")
    parser.add_argument("--quality", default="true", help="false: the ml-20m rows alone")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fit", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        return generate(args.generate)
    if args.fit:
        return fit_once(args.fit[0], Path(args.fit[1]))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, no GPU used")
    flags = " --ml20m" if args.ml20m else ""
    flags += " --quality false" if args.quality == "false" else ""
    print(f"command: python bench/baselines_bench.py --models {args.models}{flags}\n")
    if args.ml20m:
        with tempfile.TemporaryDirectory() as tmp:
            ml20m_rows(args.models.split(","), Path(tmp))
    if args.quality == "false":
        return
    print()
    print("| data | model | test/hr@10 | test/ndcg@10 | seconds (whole command) | peak MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for data, flags in DATASETS.items():
            for model in args.models.split(","):
                r = run(model, flags, Path(tmp) / f"{model}-{len(flags)}")
                print(
                    f"| {data} | {model} | {r['test/hr@10']:.4f} | {r['test/ndcg@10']:.4f} "
                    f"| {r['seconds']:.1f} | {r['peak_mb']:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
