"""Scaling beyond this machine: ring all-reduce against a parameter server, BytePS's terms, 2 to 512 workers.

Notation of BytePS (Jiang et al., "A Unified Architecture for Accelerating Distributed DNN Training in
Heterogeneous GPU/CPU Clusters", OSDI 2020, section 3): ``n`` workers, ``k`` parameter servers, a gradient (and
model) of ``M`` bytes, links of ``B`` bytes/s in each direction and ``alpha`` seconds of latency per message.

* ring all-reduce (Horovod, NCCL's ring, gloo, DDP): a reduce-scatter and an all-gather, ``2 (n - 1)`` dependent
  steps of ``M / n`` bytes, each rank sending to one neighbour while it receives from the other:

      T_ring = 2 (n - 1) alpha + 2 (n - 1) / n * M / B

  (BytePS's ``2 (n - 1) M / (n B)`` plus the latency of the steps). The bandwidth term tends to ``2 M / B``; the
  latency term grows with ``n`` (a flat ring: NCCL's trees and hierarchical rings, which cut it at scale, are not
  modelled).
* parameter server with ``k`` servers (non-colocated CPU servers in BytePS; chexnet.ps): each worker pushes ``M``
  bytes (``M / k`` to each server) and pulls ``M`` back; each server receives ``n M / k`` and sends ``n M / k``.
  One direction takes as long as the busier of a worker's link and a server's:

      t_dir = max(M / B, n M / (k B))                                     (BytePS's PS time)

  BytePS counts one direction: push and pull overlap (pipelined over tensors and partitions) on full-duplex links,
  which send and receive at once. chexnet.ps is synchronous and not pipelined: the workers push their whole
  gradient, the servers wait for every worker, update, then send the parameters back, so pull follows push:

      T_ps = 2 alpha + t_dir          --ps-protocol pipelined (the default: BytePS's, the best case for a PS)
      T_ps = 2 alpha + 2 t_dir        --ps-protocol sequential (chexnet.ps's push, then pull)

  (``2 alpha``: one push and one pull message between each worker and each server; a worker's ``k`` messages go
  out at once.) With ``k = n``, ``t_dir = M / B``: as many spare servers as workers let a pipelined PS move half
  the ring's ``2 (n - 1) / n M`` per direction (BytePS's case for spare CPU machines); with ``k = 1`` the server
  moves ``n M`` each way and its link saturates. A sequential PS's ``2 M / B`` is never below the ring's
  bandwidth term: it can only win on latency (``2 alpha`` against ``2 (n - 1) alpha``).

Both terms assume full-duplex links and a non-blocking fabric (full bisection bandwidth); half-duplex links would
double every bandwidth term alike.

Step and efficiency (weak scaling: a fixed batch per worker): ``step = t_c + max(0, T - overlap * 2/3 * t_c)``
(the backward pass, ~2/3 of the compute ``t_c``, can hide communication: DDP all-reduces buckets during it,
BytePS pushes layers as they finish); ``efficiency = t_c / step`` (the speed-up is ``n x efficiency``).
``--overlap 0`` (the default) waits for every byte, an upper bound on the cost, to 1. ``t_c`` comes from
:data:`REGIMES` (DenseNet-121 measurements), scaled for VGG-16 by torchvision's GFLOPS per 224 px image (15.47
against DenseNet-121's 2.834: x5.46).

Measured inputs: ``--strategies benchmarks/strategies.json`` (``bench_strategies.py``: this machine's gloo
all-reduce and chexnet.ps, 1-4 workers, with compute, exposed communication and counted bytes per step) fits this
machine's alpha and B to the measured times and counted bytes, adds "this machine (gloo, loopback)" as a network
and a regime, prints the model against every measured row and draws the measured points. ``--measured
scaling.json`` (``bench_scaling.py``) adds its 2-process all-reduce check. The Keras + Horovod report's point (64
processes, 47x, 0.73 per process) is drawn on the CPU-node panel.

    python benchmarks/scaling_model.py --strategies benchmarks/strategies.json --png benchmarks/scaling.png \\
        --json model.json
"""

from __future__ import annotations

import argparse
import json
import math

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def densenet121_params(num_classes: int = 14) -> int:
    """Parameters of torchvision's densenet121 (growth 32, blocks 6-12-24-16, bn_size 4) with a num_classes head."""
    p, c = 3 * 64 * 7 * 7 + 2 * 64, 64  # conv0 (no bias), norm0 (weight, bias; running stats are buffers)
    for block, layers in enumerate((6, 12, 24, 16)):
        for _ in range(layers):  # norm1, 1x1 conv to 4 x 32, norm2, 3x3 conv to 32
            p += 2 * c + c * 128 + 2 * 128 + 128 * 32 * 9
            c += 32
        if block < 3:  # transition: norm, 1x1 conv halving the channels
            p += 2 * c + c * (c // 2)
            c //= 2
    return p + 2 * c + c * num_classes + num_classes  # norm5, classifier


def vgg16_params(num_classes: int = 14, head: str = "fc") -> int:
    """Parameters of VGG-16 (no batch norm): torchvision's with its 3 fully connected layers (``head="fc"``), or
    chexnet's (``create_model("vgg16")``: the conv trunk, global average pooling, one Linear(512, num_classes))."""
    p, c = 0, 3
    for v in VGG16_CFG:
        if v != "M":
            p, c = p + c * v * 9 + v, v
    if head == "fc":
        return p + (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * num_classes + num_classes)
    return p + 512 * num_classes + num_classes


# name: parameters, forward GFLOPS per 224 px image (torchvision's weights metadata), what it is
MODELS = {
    "CheXNet DenseNet-121": {"params": densenet121_params(14), "gflops": 2.834,
                             "what": "chexnet's densenet121 (--config chexnet): torchvision's, 14-way head"},
    "VGG-16": {"params": vgg16_params(14, "fc"), "gflops": 15.47,
               "what": "torchvision vgg16(num_classes=14), fully connected head; with ImageNet's 1000-way head "
                       f"{vgg16_params(1000, 'fc'):,} parameters = {vgg16_params(1000, 'fc') * 4 / 1e6:.1f} MB = "
                       f"{vgg16_params(1000, 'fc') * 4 / 2 ** 20:.1f} MiB, the '528 MB' of Keras' model table"},
    "chexnet vgg16 (GAP head)": {"params": vgg16_params(14, "gap"), "gflops": 15.47,
                                 "what": "chexnet's vgg16 (--config vgg16, the report's variant): conv trunk, "
                                         "global average pooling, Linear(512, 14)"},
}
for _m in MODELS.values():
    _m["bytes"] = _m["params"] * 4  # fp32 gradient; bf16 compression halves it
GRAD_BYTES = MODELS["CheXNet DenseNet-121"]["bytes"]  # 6,968,206 x 4 = 27.9 MB
CHART_MODELS = ["CheXNet DenseNet-121", "VGG-16"]

# name: (alpha seconds, bandwidth bytes/s per direction), nominal link rates; latencies are typical MPI / NCCL
# small-message figures (TCP ones for Ethernet)
NETWORKS = {
    "Omni-Path 100 (Zenith)": (1.0e-6, 12.5e9),  # 100 Gb/s, ~1 us MPI latency: the report's cluster
    "EDR InfiniBand": (0.6e-6, 12.5e9),  # 100 Gb/s
    "HDR InfiniBand": (0.6e-6, 25.0e9),  # 200 Gb/s
    "NVLink 4 (H100, NVSwitch)": (3.0e-6, 450e9),  # 900 GB/s bidirectional per GPU; ~3 us NCCL launch/latency
    "10 GbE (TCP)": (30e-6, 1.25e9),
    "25 GbE (TCP)": (20e-6, 3.125e9),
    "100 GbE (TCP)": (10e-6, 12.5e9),
}
CHART_NETWORKS = ["NVLink 4 (H100, NVSwitch)", "HDR InfiniBand", "Omni-Path 100 (Zenith)", "100 GbE (TCP)",
                  "25 GbE (TCP)", "10 GbE (TCP)"]
MACHINE = "this machine (gloo, loopback)"

# DenseNet-121's compute seconds per step and per worker, with the batch it is for
REGIMES = {
    # the report: 1 process needed 50 h for 10 epochs of 77,871 images -> 4.33 img/s; batch 16 per worker
    "report CPU node (Keras, batch 16)": {"t_compute": 16 / (10 * 77_871 / (50 * 3600)), "batch": 16},
    # benchmarks/RESULTS.md: one H100, DenseNet-121 bf16, batch 256, 2,493 img/s through the full loop
    "H100, chexnet bf16 (batch 256)": {"t_compute": 256 / 2493.0, "batch": 256},
}
REPORT_POINT = (64, 47 / 64)  # 32 nodes x 2 processes: 47x over one process
STRATEGIES = ("ring", "PS k=1", "PS k=n")
TABLE_WORKERS = (8, 64, 512)


def ring_allreduce(n: int, m: float, alpha: float, bw: float) -> float:
    """2 (n - 1) alpha + 2 (n - 1) / n * M / B seconds (one worker alone: no communication)."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * alpha + 2 * (n - 1) / n * m / bw


def ps_direction(n: int, m: float, bw: float, servers: int) -> float:
    """BytePS's one-direction PS time: the busier of a worker's link (M / B) and a server's (n M / (k B))."""
    return max(m / bw, n * m / (servers * bw))


def parameter_server(n: int, m: float, alpha: float, bw: float, servers: int, protocol: str = "pipelined") -> float:
    """Push + pull with ``servers`` servers: 2 alpha + t_dir (pipelined, full duplex) or 2 alpha + 2 t_dir
    (sequential). The servers are other machines, so one worker communicates too."""
    if n < 1:
        return 0.0
    t = ps_direction(n, m, bw, servers)
    return 2 * alpha + (t if protocol == "pipelined" else 2 * t)


def efficiency(t_compute: float, t_comm: float, overlap: float = 1.0, backward_share: float = 2 / 3) -> float:
    exposed = max(0.0, t_comm - overlap * backward_share * t_compute)
    return t_compute / (t_compute + exposed)


def comm_time(strategy: str, n: int, m: float, alpha: float, bw: float, protocol: str = "pipelined") -> float:
    if strategy == "ring":
        return ring_allreduce(n, m, alpha, bw)
    servers = 1 if strategy == "PS k=1" else n
    return parameter_server(n, m, alpha, bw, servers, protocol)


def t_compute(model: str, regime: dict) -> float:
    """The regime's DenseNet-121 step, scaled by the model's GFLOPS (this machine's regime: measured as is)."""
    if regime.get("measured"):
        return regime["t_compute"]
    return regime["t_compute"] * MODELS[model]["gflops"] / MODELS["CheXNet DenseNet-121"]["gflops"]


def project(workers, regime: dict, network: str, scheme: str, servers: int = 1, overlap: float = 1.0,
            n: float = GRAD_BYTES, protocol: str = "pipelined") -> list[float]:
    alpha, bw = NETWORKS[network]
    out = []
    for p in workers:
        t = ring_allreduce(p, n, alpha, bw) if scheme == "ring" else parameter_server(p, n, alpha, bw, servers,
                                                                                      protocol)
        out.append(efficiency(regime["t_compute"], t, overlap))
    return out


def crossovers(m: float, t_c: float, alpha: float, bw: float, overlap: float, protocol: str,
               n_max: int = 512) -> dict:
    """Where each strategy wins (communication time; efficiency for 'below 0.9'), n = 2 .. n_max."""
    ns = range(2, n_max + 1)

    def first(pred):
        return next((n for n in ns if pred(n)), None)

    ring = lambda n: ring_allreduce(n, m, alpha, bw)  # noqa: E731
    ps = lambda n, k, proto=protocol: parameter_server(n, m, alpha, bw, k, proto)  # noqa: E731
    tol = 1e-9
    out = {
        "ring_beats_ps1_from": first(lambda n: ring(n) < ps(n, 1) * (1 - tol)),
        "ring_beats_psn_from": first(lambda n: ring(n) < ps(n, n) * (1 - tol)),
        "psn_beats_ring_from": first(lambda n: ps(n, n) < ring(n) * (1 - tol)),
        "sequential_psn_beats_ring_from": first(lambda n: ps(n, n, "sequential") < ring(n) * (1 - tol)),
        "ring_below_0.9_from": first(lambda n: efficiency(t_c, ring(n), overlap) < 0.9),
        "ps1_below_0.9_from": first(lambda n: efficiency(t_c, ps(n, 1), overlap) < 0.9),
        "psn_below_0.9_from": first(lambda n: efficiency(t_c, ps(n, n), overlap) < 0.9),
        "servers_to_match_ring": {},
        "winner": {},
    }
    for n in TABLE_WORKERS:
        if n > n_max:
            continue
        out["servers_to_match_ring"][n] = next((k for k in range(1, n + 1) if ps(n, k) <= ring(n)), None)
        eff = {"ring": efficiency(t_c, ring(n), overlap), "PS k=1": efficiency(t_c, ps(n, 1), overlap),
               "PS k=n": efficiency(t_c, ps(n, n), overlap)}
        best = max(eff, key=eff.get)
        # the ring needs no extra machines: it wins ties (within 0.005 of the best efficiency)
        out["winner"][n] = "ring" if eff[best] - eff["ring"] < 0.005 else best
    return out


def fit_machine(strategies: dict) -> dict:
    """This machine's alpha and B, least squares over bench_strategies.py's rows: exposed comm time =
    alpha x messages-in-sequence + bytes-in-sequence / B, where a ring rank sends 2 (n - 1) messages and its
    counted bytes (2 (n - 1) / n M), and a chexnet.ps step (sequential) is 2 messages and 2 x the busiest link's
    counted bytes per direction (a worker's M, a server's n M / k)."""
    import numpy as np

    rows, terms = [], []
    for r in strategies["rows"]:
        n, k = r["workers"], r["servers"]
        procs = r["per_process"]
        workers = [p for p in procs if p["role"] == "worker"]
        if r["strategy"] == "allreduce":
            counted = max(p["os_sent_per_step"] for p in workers)
            lat, byts = 2 * (n - 1), counted
        else:
            m = max(p["ps_sent_per_step"] for p in workers)
            busiest = max([m] + [p["ps_recv_per_step"] for p in procs if p["role"] == "server"])
            lat, byts = 2, 2 * busiest
        rows.append({"strategy": r["strategy"], "workers": n, "servers": k, "latency_terms": lat,
                     "bytes_in_sequence": byts, "exposed_comm_s": r["exposed_comm_s"],
                     "compute_step_s": r["compute_step_s"], "step_s": r["step_s"]})
        terms.append((lat, byts, r["exposed_comm_s"]))
    a = np.array([[t[0], t[1]] for t in terms], dtype=float)
    t = np.array([x[2] for x in terms])
    (alpha, inv_b), *_ = np.linalg.lstsq(a, t, rcond=None)
    if alpha < 0 or inv_b <= 0:  # no negative latency: bandwidth alone
        alpha, inv_b = 0.0, float((a[:, 1] @ t) / (a[:, 1] @ a[:, 1]))
    alpha, bw = float(alpha), float(1 / inv_b)
    for row in rows:
        row["model_comm_s"] = alpha * row["latency_terms"] + row["bytes_in_sequence"] / bw
        row["model_over_measured"] = row["model_comm_s"] / row["exposed_comm_s"]
        row["efficiency_measured"] = row["compute_step_s"] / row["step_s"]
        row["efficiency_model"] = row["compute_step_s"] / (row["compute_step_s"] + row["model_comm_s"])
        row["effective_bw_bytes_s"] = row["bytes_in_sequence"] / row["exposed_comm_s"]
    by = {s: [r["effective_bw_bytes_s"] for r in rows if r["strategy"] == s] for s in ("allreduce", "ps")}
    computes = sorted(r["compute_step_s"] for r in rows)
    mid = len(computes) // 2
    t_c = computes[mid] if len(computes) % 2 else (computes[mid - 1] + computes[mid]) / 2
    ratios = [r["model_over_measured"] for r in rows]
    return {"alpha_s": alpha, "bandwidth_bytes_s": bw, "rows": rows, "t_compute_median_s": t_c,
            "effective_bw_by_strategy_bytes_s": {s: (min(v), max(v)) for s, v in by.items() if v},
            "model_over_measured_range": (min(ratios), max(ratios)),
            "rms_relative_error": math.sqrt(sum((x - 1) ** 2 for x in ratios) / len(ratios)),
            "source": {"date": strategies.get("date"), "command": strategies.get("command"),
                       "machine": strategies.get("machine")}}


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


def build(workers, overlap: float, protocol: str, machine: dict | None = None) -> dict:
    """Efficiency and communication time of every model x regime x network x strategy, and the crossovers."""
    regimes = dict(REGIMES)
    networks = dict(NETWORKS)
    cases = [(mo, rg, net) for mo in MODELS for rg in REGIMES for net in NETWORKS]
    if machine:
        networks[MACHINE] = (machine["alpha_s"], machine["bandwidth_bytes_s"])
        regimes[MACHINE] = {"t_compute": machine["t_compute_median_s"], "batch": None, "measured": True}
        cases.append(("CheXNet DenseNet-121", MACHINE, MACHINE))
    eff, comm, cross = {}, {}, {}
    for mo, rg, net in cases:
        m, t_c = MODELS[mo]["bytes"], t_compute(mo, regimes[rg])
        alpha, bw = networks[net]
        proto = "sequential" if net == MACHINE else protocol  # what was measured here is chexnet.ps
        key = f"{mo} | {rg} | {net}"
        comm[key] = {s: [comm_time(s, n, m, alpha, bw, proto) for n in workers] for s in STRATEGIES}
        eff[key] = {s: [efficiency(t_c, t, overlap) for t in comm[key][s]] for s in STRATEGIES}
        cross[key] = crossovers(m, t_c, alpha, bw, overlap, proto, n_max=max(workers))
    return {"efficiency": eff, "comm_s": comm, "crossovers": cross, "networks": networks, "regimes": regimes}


def _fmt_n(n) -> str:
    return "-" if n is None else str(n)


def print_table(res: dict, workers: list[int]) -> None:
    idx = [workers.index(n) for n in TABLE_WORKERS if n in workers]
    head = "  ".join(f"{'ring/PS1/PSn @' + str(workers[i]):>18}" for i in idx)
    print(f"{'model | regime | network':<82}{head}  ring<0.9  PSn<0.9  k=ring@64  winner@8/64/512")
    for key, e in res["efficiency"].items():
        c = res["crossovers"][key]
        cells = "  ".join(f"{e['ring'][i]:6.3f}{e['PS k=1'][i]:6.3f}{e['PS k=n'][i]:6.3f}" for i in idx)
        win = "/".join(c["winner"].get(n, "-").replace("PS k=n", "PSn").replace("PS k=1", "PS1")
                       for n in TABLE_WORKERS)
        print(f"{key:<82}{cells}  {_fmt_n(c['ring_below_0.9_from']):>8}  {_fmt_n(c['psn_below_0.9_from']):>7}  "
              f"{_fmt_n(c['servers_to_match_ring'].get(64)):>9}  {win}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategies", default=None, help="bench_strategies.py --json output (benchmarks/strategies.json)")
    ap.add_argument("--measured", default=None, help="bench_scaling.py --json output")
    ap.add_argument("--png", default="benchmarks/scaling.png")
    ap.add_argument("--json", default=None)
    ap.add_argument("--overlap", type=float, default=0.0, help="fraction of the backward pass that hides communication")
    ap.add_argument("--ps-protocol", choices=("pipelined", "sequential"), default="pipelined",
                    help="pipelined: BytePS, push and pull overlap on full-duplex links (T = t_dir); sequential: "
                         "chexnet.ps, pull after push (T = 2 t_dir)")
    args = ap.parse_args(argv)
    workers = [2 ** k for k in range(1, 10)]  # 2 .. 512
    measured = json.load(open(args.measured)) if args.measured else None
    machine = fit_machine(json.load(open(args.strategies))) if args.strategies else None
    res = build(workers, args.overlap, args.ps_protocol, machine)

    for name, mo in MODELS.items():
        print(f"{name}: {mo['params']:,} parameters = {mo['bytes'] / 1e6:.1f} MB fp32 ({mo['what']})")
    print(f"\nefficiency (per-worker throughput / one worker's), overlap with backward {args.overlap:g}; ring, PS with "
          f"k = 1 server, PS with k = n servers (BytePS's spare servers), PS {args.ps_protocol}; "
          f"crossovers over n = 2..{workers[-1]}: ring<0.9 / PSn<0.9 = first n below 0.9; k=ring@64 = servers a "
          f"PS needs to match the ring at 64 workers; winner: ring unless another is 0.005 better")
    print_table(res, workers)
    cr = res["crossovers"]
    always = sorted({c["ring_beats_ps1_from"] for c in cr.values()}, key=lambda x: (x is None, x or 0))
    print(f"\nring beats PS k=1 from n = {'/'.join(map(_fmt_n, always))} in every case; "
          f"PS k=n beats the ring from n = "
          f"{'/'.join(map(_fmt_n, sorted({c['psn_beats_ring_from'] for c in cr.values()}, key=lambda x: x or 0)))}"
          f" (a tie at n = 2: both M / B); chexnet.ps's sequential push-then-pull with k = n beats the ring from: "
          + ", ".join(f"{k.split(' | ')[2]} n={c['sequential_psn_beats_ring_from']}"
                      for k, c in cr.items() if k.startswith("CheXNet DenseNet-121 | H100")
                      and c["sequential_psn_beats_ring_from"]) + " (latency only), never on bandwidth")
    rep = res["efficiency"]["CheXNet DenseNet-121 | report CPU node (Keras, batch 16) | Omni-Path 100 (Zenith)"]
    print(f"the report's point: 64 processes, 47x = {REPORT_POINT[1]:.2f} per process; the ring model on Omni-Path "
          f"100 predicts {rep['ring'][workers.index(64)]:.3f}: the all-reduce explains almost none of the report's "
          f"27% loss")
    if machine:
        print(f"\n{MACHINE}, fitted to {len(machine['rows'])} rows of {args.strategies} ({machine['source']['date']}): "
              f"alpha {machine['alpha_s'] * 1e3:.1f} ms per message, B {machine['bandwidth_bytes_s'] / 1e6:.0f} MB/s; "
              f"compute (median) {machine['t_compute_median_s'] * 1e3:.0f} ms")
        print(f"{'layout':<24}{'bytes in sequence':>18}{'measured comm':>15}{'model':>9}{'model/meas':>11}"
              f"{'eff meas':>9}{'eff model':>10}{'MB/s':>7}")
        for r in machine["rows"]:
            lay = (f"all-reduce {r['workers']}" if r["strategy"] == "allreduce"
                   else f"PS {r['workers']} w + {r['servers']} s")
            print(f"{lay:<24}{r['bytes_in_sequence'] / 1e6:>15.1f} MB{r['exposed_comm_s'] * 1e3:>12.0f} ms"
                  f"{r['model_comm_s'] * 1e3:>6.0f} ms{r['model_over_measured']:>11.2f}{r['efficiency_measured']:>9.2f}"
                  f"{r['efficiency_model']:>10.2f}{r['effective_bw_bytes_s'] / 1e6:>7.0f}")
        lo, hi = machine["model_over_measured_range"]
        bws = machine["effective_bw_by_strategy_bytes_s"]
        print(f"model / measured {lo:.2f} .. {hi:.2f} (rms relative error {machine['rms_relative_error'] * 100:.0f}%); "
              f"effective MB/s: all-reduce {bws['allreduce'][0] / 1e6:.0f}-{bws['allreduce'][1] / 1e6:.0f}, "
              f"PS {bws['ps'][0] / 1e6:.0f}-{bws['ps'][1] / 1e6:.0f}: one alpha and B do not fit both strategies on "
              f"this loaded 2-vCPU VM (processes outnumber cores; 'bandwidth' is memory copies and gloo's reduction)")
    check = None
    if measured:
        check = check_against_measured(measured)
        print(f"bench_scaling (gloo, loopback, 2 processes): all-reduce of {measured['grad_mb']:.1f} MB measured "
              f"{check['allreduce_measured_s'] * 1e3:.0f} ms, alpha-beta fit {check['allreduce_model_s'] * 1e3:.0f} ms; "
              f"2-process efficiency measured {check['efficiency_measured']:.2f}, model "
              f"{check['efficiency_model_full_overlap']:.2f} (full overlap) .. {check['efficiency_model_no_overlap']:.2f} "
              f"(none)")
    _plot(workers, res, machine, measured, args.png, args.overlap, args.ps_protocol)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workers": workers, "models": MODELS, "networks": res["networks"], "regimes": res["regimes"],
                       "overlap": args.overlap, "ps_protocol": args.ps_protocol,
                       "assumptions": "full-duplex links, non-blocking fabric; ring 2(n-1)alpha + 2(n-1)/n M/B; PS "
                                      "2 alpha + t_dir (pipelined) or 2 t_dir (sequential), t_dir = max(M/B, nM/(kB));"
                                      " VGG-16 compute = DenseNet-121's x GFLOPS ratio",
                       "efficiency": res["efficiency"], "comm_s": res["comm_s"], "crossovers": res["crossovers"],
                       "machine_fit": machine, "report_point": REPORT_POINT, "check": check}, f, indent=2)
    print(f"wrote {args.png}")


def _plot(workers, res, machine, measured, path, overlap, protocol) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(2, 3, figsize=(17, 10))
    styles = {"ring": "-", "PS k=1": ":", "PS k=n": "--"}
    colours = dict(zip(CHART_NETWORKS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for row, model in enumerate(CHART_MODELS):
        for col, regime in enumerate(REGIMES):
            ax = axes[row][col]
            for net in CHART_NETWORKS:
                if regime.startswith("report") and net.startswith("NVLink"):
                    continue  # a GPU interconnect
                e = res["efficiency"][f"{model} | {regime} | {net}"]
                for s, style in styles.items():
                    ax.plot(workers, e[s], style, color=colours[net], lw=1.6)
            t_c = t_compute(model, REGIMES[regime])
            ax.set_title(f"{model}, {MODELS[model]['bytes'] / 1e6:.1f} MB gradient\n{regime}: "
                         f"{t_c * 1e3:.0f} ms compute per step", fontsize=9.5)
            ax.set_xscale("log", base=2)
            ax.set_xticks(workers, [str(p) for p in workers])
            ax.set_xlabel("workers n")
            ax.set_ylim(0, 1.03)
            ax.grid(alpha=0.3)
        axes[row][0].set_ylabel("scaling efficiency (speed-up / workers)")
    axes[0][0].plot(*REPORT_POINT, "r*", markersize=14)
    axes[0][0].annotate("Keras + Horovod report: 64 processes, 47x (measured)", REPORT_POINT,
                        textcoords="offset points", xytext=(-190, -22), fontsize=8, color="red")

    ax = axes[0][2]
    if machine:
        alpha, bw = res["networks"][MACHINE]
        m, t_c = MODELS["CheXNet DenseNet-121"]["bytes"], machine["t_compute_median_s"]
        few = list(range(1, 9))
        for s, style in styles.items():
            ax.plot(few, [efficiency(t_c, comm_time(s, n, m, alpha, bw, "sequential"), overlap) for n in few],
                    style, color="k", lw=1.6)
        marks = {("allreduce", "ring"): "o", ("ps", "k=1"): "^", ("ps", "k=n"): "s"}
        for r in machine["rows"]:
            kind = "ring" if r["strategy"] == "allreduce" else ("k=1" if r["servers"] == 1 else "k=n")
            if kind == "k=n" and r["servers"] != r["workers"]:
                continue  # 1 worker + 2 servers: k > n
            mk = marks[(r["strategy"], kind)]
            ax.plot(r["workers"] if r["workers"] > 1 else 1.0, r["efficiency_measured"], mk, color="tab:red", ms=8)
            ax.plot(r["workers"] if r["workers"] > 1 else 1.0, r["efficiency_model"], mk, mfc="none", color="k", ms=9)
        ax.set_title(f"CheXNet DenseNet-121 on {MACHINE}, 2 vCPUs; fitted alpha {machine['alpha_s'] * 1e3:.0f} ms,"
                     f" B {machine['bandwidth_bytes_s'] / 1e6:.0f} MB/s\nPS = chexnet.ps (sequential); lines at the "
                     f"median compute {machine['t_compute_median_s'] * 1e3:.0f} ms per step", fontsize=9.5)
        ax.legend(handles=[Line2D([], [], ls="", marker=m, color="tab:red", label=f"measured, {lab}")
                           for m, lab in (("o", "all-reduce"), ("^", "PS, 1 server"), ("s", "PS, k = n"))]
                  + [Line2D([], [], ls="", marker="o", mfc="none", color="k",
                            label="model, with the layout's own compute")],
                  fontsize=8, loc="upper right")
    if measured:
        ax.plot(2, measured["efficiency_2"], "D", color="tab:purple", ms=7)
        ax.annotate("bench_scaling, 2 processes", (2, measured["efficiency_2"]), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlim(0.7, 8.3)
    ax.set_xticks(range(1, 9))
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("workers n")
    ax.grid(alpha=0.3)

    ax = axes[1][2]
    ax.axis("off")
    handles = [Line2D([], [], color=colours[n], lw=2.5, label=n) for n in CHART_NETWORKS]
    handles += [Line2D([], [], color="k", ls=s, lw=1.6, label={"ring": "ring all-reduce",
                                                               "PS k=1": "PS, 1 server",
                                                               "PS k=n": "PS, k = n servers (spare machines)"}[k])
                for k, s in styles.items()]
    ax.legend(handles=handles, loc="upper left", fontsize=10, frameon=False)
    ax.text(0, 0.18, f"ring: 2(n-1) alpha + 2(n-1)/n M/B\nPS: 2 alpha + max(M/B, nM/(kB)), push and pull\n"
                     f"    overlapped on full-duplex links (BytePS){'' if protocol == 'pipelined' else ' x2'}\n"
                     f"overlap with backward {overlap:g}; VGG-16 compute = DenseNet-121's x {15.47 / 2.834:.2f}\n"
                     f"(GFLOPS); NVLink 4 not drawn for CPU nodes", fontsize=9.5, family="monospace",
            transform=ax.transAxes, va="bottom")
    fig.suptitle(f"Data-parallel scaling efficiency: ring all-reduce vs parameter server (BytePS's terms, PS "
                 f"{protocol}), alpha-beta model", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
