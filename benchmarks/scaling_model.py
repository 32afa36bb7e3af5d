"""Scaling beyond this machine: an alpha-beta model of ring all-reduce and of a parameter server, 2 to 512 workers.

Per optimizer step each of ``p`` workers computes for ``t_c`` seconds (weak scaling: a fixed batch per worker) and
the gradient of ``n`` bytes is combined over links of latency ``alpha`` (s) and bandwidth ``B`` (bytes/s, one
direction):

* ring all-reduce (Horovod, NCCL, gloo): ``T = 2 (p - 1) alpha + 2 (p - 1) / p * n / B`` -- a reduce-scatter and an
  all-gather; the bandwidth term hardly grows with ``p``, the latency term does;
* parameter server with ``S`` servers (the report's companion survey's first approach): every worker pushes its
  ``n`` bytes (split over the servers) and pulls ``n`` back; each server receives and sends ``p n / S``:
  ``T = 2 alpha + 2 n / B * max(1, p / S)`` -- the servers' links saturate as ``p`` grows.

The step takes ``t_c + max(0, T - overlap * t_backward)`` (DDP and Horovod start all-reducing buckets during the
backward pass, ``t_backward ~ 2/3 t_c``); efficiency ``= t_c / step`` (the speed-up is ``p x efficiency``).
``--overlap 0`` (the default: every byte waited for, an upper bound on the cost) to 1 (hidden behind backward
as long as it is shorter); the overlap measured on this machine's CPUs is far below 0 (see RESULTS.md).

Inputs are documented in :data:`NETWORKS` and :data:`REGIMES`. ``--measured scaling.json`` (from
``bench_scaling.py``) adds this machine's 2-process point and checks the model against the gloo times measured
here; the Keras + Horovod report's point (64 processes, 47x, 73% per process) is drawn on the CPU panel.

    python benchmarks/scaling_model.py --measured scaling.json --png benchmarks/scaling.png --json model.json
"""

from __future__ import annotations

import argparse
import json

GRAD_BYTES = 6_968_206 * 4  # DenseNet-121 with a 14-way head, fp32 (27.9 MB); bf16 compression halves it

# name: (alpha seconds, bandwidth bytes/s per direction), nominal link rates; latencies are typical MPI / NCCL
# small-message figures (TCP ones for Ethernet)
NETWORKS = {
    "Omni-Path 100 (Zenith)": (1.0e-6, 12.5e9),  # 100 Gb/s, ~1 us MPI latency: the report's cluster
    "EDR InfiniBand": (0.6e-6, 12.5e9),  # 100 Gb/s
    "HDR InfiniBand": (0.6e-6, 25.0e9),  # 200 Gb/s
    "NVLink 4 (H100, NVSwitch)": (3.0e-6, 450e9),  # 900 GB/s bidirectional per GPU; ~3 us NCCL launch/latency
    "10 GbE (TCP)": (30e-6, 1.25e9),
    "100 GbE (TCP)": (10e-6, 12.5e9),
}

# compute seconds per step and per worker, with the batch it is for
REGIMES = {
    # the report: 1 process needed 50 h for 10 epochs of 77,871 images -> 4.33 img/s; batch 16 per worker
    "report CPU node (Keras, batch 16)": {"t_compute": 16 / (10 * 77_871 / (50 * 3600)), "batch": 16},
    # benchmarks/RESULTS.md: one H100, DenseNet-121 bf16, batch 256, 2,493 img/s through the full loop
    "H100, chexnet bf16 (batch 256)": {"t_compute": 256 / 2493.0, "batch": 256},
}
REPORT_POINT = (64, 47 / 64)  # 32 nodes x 2 processes: 47x over one process


def ring_allreduce(p: int, n: float, alpha: float, bw: float) -> float:
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / bw


def parameter_server(p: int, n: float, alpha: float, bw: float, servers: int) -> float:
    if p <= 1:
        return 0.0
    return 2 * alpha + 2 * n / bw * max(1.0, p / servers)


def efficiency(t_compute: float, t_comm: float, overlap: float = 1.0, backward_share: float = 2 / 3) -> float:
    exposed = max(0.0, t_comm - overlap * backward_share * t_compute)
    return t_compute / (t_compute + exposed)


def project(workers, regime: dict, network: str, scheme: str, servers: int = 1, overlap: float = 1.0,
            n: float = GRAD_BYTES) -> list[float]:
    alpha, bw = NETWORKS[network]
    out = []
    for p in workers:
        t = ring_allreduce(p, n, alpha, bw) if scheme == "ring" else parameter_server(p, n, alpha, bw, servers)
        out.append(efficiency(regime["t_compute"], t, overlap))
    return out


def check_against_measured(m: dict) -> dict:
    """The model with this machine's fitted alpha/beta and measured compute and overlap, against the 2-process run."""
    alpha, beta = m["alpha_s"], m["beta_s_per_byte"]
    n = m["grad_mb"] * 1e6
    predicted_reduce = alpha + beta * n  # the fit is of whole 2-process all-reduce times
    t_c = m["two_no_sync_step_s"]
    exposed = m["two_ddp_step_s"] - t_c
    return {
        "allreduce_measured_s": m["allreduce_grad_s"], "allreduce_model_s": predicted_reduce,
        "efficiency_measured": m["efficiency_2"],
        "efficiency_model_full_overlap": efficiency(m["one_process_step_s"], predicted_reduce, 1.0),
        "efficiency_model_no_overlap": efficiency(m["one_process_step_s"], predicted_reduce, 0.0),
        "exposed_wait_measured_s": exposed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", default=None, help="bench_scaling.py --json output")
    ap.add_argument("--png", default="benchmarks/scaling.png")
    ap.add_argument("--json", default=None)
    ap.add_argument("--overlap", type=float, default=0.0, help="fraction of the backward pass that hides communication")
    args = ap.parse_args()
    workers = [2 ** k for k in range(1, 10)]  # 2 .. 512
    measured = json.load(open(args.measured)) if args.measured else None

    table = {}
    panels = [
        ("report CPU node (Keras, batch 16)", ["Omni-Path 100 (Zenith)", "10 GbE (TCP)"]),
        ("H100, chexnet bf16 (batch 256)", ["NVLink 4 (H100, NVSwitch)", "HDR InfiniBand", "100 GbE (TCP)", "10 GbE (TCP)"]),
    ]
    for regime, nets in panels:
        for net in nets:
            r, o = REGIMES[regime], args.overlap
            table[f"{regime} | {net} | ring"] = project(workers, r, net, "ring", overlap=o)
            table[f"{regime} | {net} | PS, 1 server"] = project(workers, r, net, "ps", servers=1, overlap=o)
            table[f"{regime} | {net} | PS, p/8 servers"] = [
                project([p], r, net, "ps", servers=max(1, p // 8), overlap=o)[0] for p in workers]

    print("efficiency (per-worker throughput / one worker's), DenseNet-121 fp32 gradient "
          f"{GRAD_BYTES / 1e6:.1f} MB, overlap with backward {args.overlap:g}")
    print(f"{'regime | network | scheme':<75}" + "".join(f"{p:>7}" for p in workers))
    for name, effs in table.items():
        print(f"{name:<75}" + "".join(f"{e:7.3f}" for e in effs))
    report_model = table["report CPU node (Keras, batch 16) | Omni-Path 100 (Zenith) | ring"][workers.index(64)]
    print(f"\nthe report's point: 64 processes, 47x = {REPORT_POINT[1]:.2f} per process; the ring model on Omni-Path "
          f"100 predicts {report_model:.3f}: the all-reduce explains almost none of the report's 27% loss")
    check = None
    if measured:
        check = check_against_measured(measured)
        print(f"this machine (gloo, loopback, 2 processes): all-reduce of {measured['grad_mb']:.1f} MB measured "
              f"{check['allreduce_measured_s'] * 1e3:.0f} ms, alpha-beta fit {check['allreduce_model_s'] * 1e3:.0f} ms; "
              f"2-process efficiency measured {check['efficiency_measured']:.2f}, model "
              f"{check['efficiency_model_full_overlap']:.2f} (full overlap) .. {check['efficiency_model_no_overlap']:.2f} "
              f"(none)")
    _plot(workers, table, panels, measured, args.png, args.overlap)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": workers, "efficiency": table, "networks": NETWORKS, "regimes": REGIMES,
                       "report_point": REPORT_POINT, "check": check}, f, indent=2)
    print(f"wrote {args.png}")


def _plot(workers, table, panels, measured, path, overlap) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    styles = {"ring": "-", "PS, 1 server": ":", "PS, p/8 servers": "--"}
    for ax, (regime, nets) in zip(axes, panels):
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for colour, net in zip(colours, nets):
            for scheme, style in styles.items():
                ax.plot(workers, table[f"{regime} | {net} | {scheme}"], style, color=colour,
                        label=f"{net}, {scheme}")
        t_c = REGIMES[regime]["t_compute"]
        ax.set_title(f"{regime}: {t_c * 1e3:.0f} ms compute per step", fontsize=10)
        ax.set_xscale("log", base=2)
        ax.set_xticks(workers, [str(p) for p in workers])
        ax.set_xlabel("workers")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].plot(*REPORT_POINT, "r*", markersize=14, label="Keras + Horovod report (measured)")
    axes[0].annotate("report: 64 processes, 47x", REPORT_POINT, textcoords="offset points", xytext=(-60, -18),
                     fontsize=8, color="red")
    if measured:
        axes[0].plot(2, measured["efficiency_2"], "ko", markersize=7)
        axes[0].annotate("this 2-core machine, gloo (measured)", (2, measured["efficiency_2"]),
                         textcoords="offset points", xytext=(6, 6), fontsize=8)
    axes[0].set_ylabel("scaling efficiency (speed-up / workers)")
    fig.suptitle(f"DenseNet-121 data-parallel scaling: ring all-reduce vs parameter server "
                 f"({GRAD_BYTES / 1e6:.1f} MB gradient, alpha-beta model, overlap {overlap:g})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
