"""IS_P2P (eq. 7) forward+backward: the dense reference against the blocked `is_p2p_loss`.

Each (method, N, A) run is a fresh subprocess, which creates the (N, C, H, W) student and
teacher maps, runs a tiny warm-up, resets and reads its peak RSS (VmHWM after clear_refs on Linux,
ru_maxrss elsewhere), times one loss + backward and reads the peak RSS again: the difference is the
extra peak memory above the inputs. The loss and
the gradient of both methods are compared where the dense one fits (estimated need <= --dense-limit-gb).
On a CPU run it with one thread per process for stable timings:

    OMP_NUM_THREADS=1 python benchmarks/isp2p.py --out benchmarks/isp2p_results.md
    python benchmarks/isp2p.py --cases 128x64 --channels 1920
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CASES = [(n, a) for n in (32, 64, 128, 256, 512) for a in (16, 64)]
# Dense peak is about 8 (N, N, A, A) float32 tensors (relations, log-probabilities, autograd buffers).
DENSE_TENSORS = 8


def dense_need_bytes(n: int, a: int, c: int) -> int:
    return DENSE_TENSORS * n * n * a * a * 4 + 4 * n * a * c * 4


def peak_rss_kib(reset: bool = False) -> int:
    """Peak RSS of this process. On Linux the peak is first reset to the current RSS (clear_refs),
    so that transients before the measurement do not count; elsewhere ru_maxrss."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def worker(args) -> None:
    import torch

    from rdd.losses import is_p2p_loss, is_p2p_loss_dense
    from rdd.losses.is_p2p import choose_block_rows

    torch.set_num_threads(args.threads)
    fn = is_p2p_loss_dense if args.method == "dense" else is_p2p_loss
    side = int(round(args.a ** 0.5))
    assert side * side == args.a, "A must be a square (H = W)"

    def maps(n, seed):
        g = torch.Generator().manual_seed(seed)
        map_t = torch.randn(n, args.channels, side, side, generator=g)
        map_s = torch.randn(map_t.shape, generator=g).mul_(0.5).add_(map_t)  # no temporaries
        return map_s.requires_grad_(True), map_t

    small_s, small_t = maps(2, 1)  # warm-up: kernels and thread pools, not timed
    fn(small_s, small_t, args.tau).backward()
    del small_s, small_t
    map_s, map_t = maps(args.n, 0)
    before = peak_rss_kib(reset=True)
    start = time.perf_counter()
    loss = fn(map_s, map_t, args.tau)
    loss.backward()
    seconds = time.perf_counter() - start
    after = peak_rss_kib()
    if args.save:
        torch.save({"loss": loss.detach(), "grad": map_s.grad}, args.save)
    block = choose_block_rows(args.n, args.a, 4) if args.method == "ours" else None
    print(json.dumps({"seconds": seconds, "extra_mib": (after - before) / 1024, "loss": loss.item(),
                      "block_rows": block, "threads": torch.get_num_threads()}))


def run_case(method: str, n: int, a: int, args, save: Path | None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--n", str(n), "--a", str(a),
           "--channels", str(args.channels), "--tau", str(args.tau), "--threads", str(args.threads)]
    if save:
        cmd += ["--save", str(save)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{method} N={n} A={a} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(dense_file: Path, ours_file: Path) -> tuple[float, float]:
    import torch

    d, o = torch.load(dense_file), torch.load(ours_file)
    loss = ((o["loss"] - d["loss"]).abs() / d["loss"].abs()).item()
    grad = ((o["grad"] - d["grad"]).abs().max() / d["grad"].abs().max()).item()
    return loss, grad


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_cases(text: str | None) -> list[tuple[int, int]]:
    if not text:
        return DEFAULT_CASES
    return [tuple(int(x) for x in case.lower().split("x")) for case in text.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=1920, help="C of the feature maps")
    p.add_argument("--cases", help="comma-separated NxA, e.g. 128x64,512x64 (default: N in 32..512, A in 16, 64)")
    p.add_argument("--tau", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per method (fresh process each), best kept")
    p.add_argument("--repeat-below", type=float, default=30.0, help="only repeat cases whose runs take under this (s)")
    p.add_argument("--dense-limit-gb", type=float, default=16.0, help="skip dense above this estimated need")
    p.add_argument("--out", help="also write the report (Markdown) to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", choices=["dense", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--a", type=int, help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import torch

    lines = [
        f"IS_P2P forward+backward, float32, C = {args.channels}, tau = {args.tau}, "
        f"{args.threads} thread(s) per process, torch {torch.__version__}",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores visible.",
        "Extra peak = peak RSS growth above the inputs during one loss + backward, in a fresh process per "
        "case (VmHWM reset with /proc/self/clear_refs just before). "
        "Rel. diff: |loss_ours - loss_dense| / |loss_dense| and max|g_ours - g_dense| / max|g_dense| "
        "for the gradient with respect to the student map. Time: one loss + backward, best of "
        f"{args.repeats} runs alternating the methods (1 run where a run takes over {args.repeat_below:g} s); "
        "memory: the first run.",
        "",
        "| N | A | dense time (s) | ours time (s) | speed-up | dense extra peak (MiB) | ours extra peak (MiB) "
        "| memory ratio | loss rel. diff | grad rel. diff | ours block_rows |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, a in parse_cases(args.cases):
            need = dense_need_bytes(n, a, args.channels)
            fits = need <= args.dense_limit_gb * 1e9
            dense_file, ours_file = Path(tmp, "dense.pt"), Path(tmp, "ours.pt")
            dense = run_case("dense", n, a, args, dense_file) if fits else None
            ours = run_case("ours", n, a, args, ours_file if fits else None)
            # Further runs alternate the two methods (the load of a shared machine drifts); best time.
            for _ in range(args.repeats - 1):
                if max(ours["seconds"], dense["seconds"] if dense else 0) > args.repeat_below:
                    break
                for method, result in (("dense", dense), ("ours", ours)):
                    if result:
                        result["seconds"] = min(result["seconds"], run_case(method, n, a, args, None)["seconds"])
            if dense:
                loss_diff, grad_diff = compare(dense_file, ours_file)
                speed, mem = dense["seconds"] / ours["seconds"], dense["extra_mib"] / max(ours["extra_mib"], 1e-9)
                summary[(n, a)] = (speed, mem)
                row = (f"| {n} | {a} | {dense['seconds']:.3g} | {ours['seconds']:.3g} | {speed:.2f}x "
                       f"| {dense['extra_mib']:.1f} | {ours['extra_mib']:.1f} | {mem:.1f}x "
                       f"| {loss_diff:.1e} | {grad_diff:.1e} | {ours['block_rows']} |")
            else:
                skipped = f"skipped (needs {need / 1e9:.0f} GB)"
                row = (f"| {n} | {a} | {skipped} | {ours['seconds']:.3g} | - | {skipped} | {ours['extra_mib']:.1f} "
                       f"| - | - | - | {ours['block_rows']} |")
            lines.append(row)
            print(row, flush=True)
            for f in (dense_file, ours_file):
                f.unlink(missing_ok=True)
    lines.append("")
    for (n, a), (speed, mem) in summary.items():
        line = (f"N = {n}, A = {a}: speed-up (dense time / ours) {speed:.2f}x, "
                f"extra peak memory ratio (dense / ours) {mem:.1f}x.")
        lines.append(line)
        print(line)
    if args.out:
        command = f"OMP_NUM_THREADS={args.threads} python {' '.join(sys.argv)}"
        text = "# IS_P2P: dense reference vs blocked `is_p2p_loss`\n\n"
        text += f"Command: `{command}`\n\n" + "\n".join(lines) + "\n"
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
