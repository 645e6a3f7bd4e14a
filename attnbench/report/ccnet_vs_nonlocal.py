"""Report section for suites that sweep both CCNet and non-local attention.

Sets the CCNet paper's comparison (769×769 input → 97×97 map, C = 512,
C′ = 64: non-local block ≈ 108 GFLOPs and ≈ 1411 MB, RCCA (R = 2) ≈ 16.5 GFLOPs
and ≈ 127 MB) next to the analytic cost model (specs/ccnet.md §4) and the
measured sweeps of this run: ratio at each size, the crossover, and the
extrapolation of the measured time to 97×97 with a 95 % prediction interval.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attnbench.checks.scaling import model_fit, predict
from attnbench.report import scaling_section

PAPER = {"nonlocal_gflops": 108.0, "rcca_gflops": 16.5, "nonlocal_mb": 1411.0, "rcca_mb": 127.0}
S_PAPER, C_PAPER, CQ_PAPER = 97, 512, 64


def analytic() -> dict[str, float]:
    """Paper counting: FLOP = 2·MAC; q/k/v 1×1 convs and both products; no softmax/bias/residual."""
    n = S_PAPER * S_PAPER
    length = 2 * S_PAPER - 1
    convs = n * C_PAPER * (2 * CQ_PAPER + C_PAPER)
    cca = n * length * (CQ_PAPER + C_PAPER)
    nonlocal_attn = n * n * (CQ_PAPER + C_PAPER)
    return {
        "nonlocal_gflops": 2 * (nonlocal_attn + convs) / 1e9,
        "rcca_gflops": 2 * 2 * (cca + convs) / 1e9,
        "cca_core_gflops": 2 * cca / 1e9,
        "nonlocal_core_gflops": 2 * nonlocal_attn / 1e9,
        # one fp32 map; energy + attention + their gradients ≈ 4 maps for the non-local block
        "nonlocal_map_mib": n * n * 4 / 2**20,
        "nonlocal_4maps_mib": 4 * n * n * 4 / 2**20,
        "cca_map_mib": n * length * 4 / 2**20,
        "feature_map_mib": n * C_PAPER * 4 / 2**20,
    }


def _flops_at(mechanism: str, s: int) -> float:
    from attnbench.cases import Case
    from attnbench.registry import REGISTRY

    mech = REGISTRY.mechanisms[mechanism]
    params: dict[str, Any]
    if mechanism == "ccnet":
        params = {"B": 1, "Cq": CQ_PAPER, "C": C_PAPER, "H": s, "W": s}
    else:
        params = {
            "B": 1,
            "Ck": CQ_PAPER,
            "Cv": C_PAPER,
            "H": s,
            "W": s,
            "Hk": s,
            "Wk": s,
            "mode": "embedded_gaussian",
            "scaled": False,
        }
    assert mech.flops is not None
    return float(mech.flops(Case(mechanism, mech.core, params)))


def comparison_plot(out: Path, pairs: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> Path:
    """Both mechanisms on one log-log figure: time (left) and peak extra memory (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"ccnet": ("o-", "criss-cross"), "nonlocal": ("s-", "non-local")}
    for impl, cc, nl in pairs:
        for mech, rec in (("ccnet", cc), ("nonlocal", nl)):
            marker, name = styles[mech]
            xs = [p["value"] for p in rec["points"]]
            fit = rec["fits"]["time"]
            label = f"{name}, {impl}" + (f" (b={fit.exponent:.2f})" if fit else "")
            line = ax_t.loglog(xs, [p["median_s"] for p in rec["points"]], marker, label=label)[0]
            mem = [max(p["peak_bytes"] or 0.0, 1.0) for p in rec["points"]]
            ax_m.loglog(xs, mem, marker, color=line.get_color(), label=f"{name}, {impl}")
            # analytic slope through the last point
            power = 3 if mech == "ccnet" else 4
            x_end, t_end = xs[-1], rec["points"][-1]["median_s"]
            ax_t.loglog(xs, [t_end * (x / x_end) ** power for x in xs], ":", color=line.get_color(), alpha=0.6)
    for ax, ylabel in ((ax_t, "median time per forward call [s]"), (ax_m, "peak extra memory [bytes]")):
        ax.set_xlabel("H = W (log)")
        ax.set_ylabel(ylabel + " (log)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ax_t.set_title("criss-cross vs non-local: time (dotted: S³ and S⁴)", fontsize=9)
    ax_m.set_title("criss-cross vs non-local: peak extra memory", fontsize=9)
    fig.tight_layout()
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ccnet_vs_nonlocal.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(out: Path, env: dict[str, Any]) -> list[str]:
    mechanisms = set((env.get("suite") or {}).get("mechanisms", []))
    if not {"ccnet", "nonlocal"} <= mechanisms:
        return []
    records = [r for r in scaling_section.collect(out, env) if r["key"][5] == "fwd"]
    by = {(r["key"][0], r["key"][2]): r for r in records}
    a = analytic()
    lines = [
        "## CCNet versus non-local attention",
        "",
        "### The paper's table (97×97 feature map, C = 512, C′ = 64)",
        "",
        "| item | paper | analytic (cost model) | note |",
        "|---|---|---|---|",
        f"| non-local block FLOPs | {PAPER['nonlocal_gflops']:.0f} G | {a['nonlocal_gflops']:.1f} G | "
        f"attention {a['nonlocal_core_gflops']:.1f} G + q/k/v convs |",
        f"| RCCA (R = 2) FLOPs | {PAPER['rcca_gflops']:.1f} G | {a['rcca_gflops']:.1f} G | "
        f"2 × (criss-cross {a['cca_core_gflops']:.2f} G + convs) |",
        f"| FLOP saving | 85 % | {100 * (1 - a['rcca_gflops'] / a['nonlocal_gflops']):.1f} % | |",
        f"| non-local memory | {PAPER['nonlocal_mb']:.0f} MB | {a['nonlocal_4maps_mib']:.0f} MiB | "
        f"4 fp32 N×N maps of {a['nonlocal_map_mib']:.1f} MiB (energy, attention, their gradients) |",
        f"| RCCA memory | {PAPER['rcca_mb']:.0f} MB | ≈ {a['cca_map_mib']:.1f} MiB per map | "
        f"+ {a['feature_map_mib']:.1f} MiB per C-channel feature map; "
        "measured GPU increments, order of magnitude only |",
        "",
    ]
    pairs = [
        (impl, by[("ccnet", impl)], by[("nonlocal", impl)])
        for impl in ("vectorized", "ext")
        if ("ccnet", impl) in by and ("nonlocal", impl) in by
    ]
    if not pairs:
        return lines + ["(no matching sweeps of both mechanisms in this run)", ""]
    png = comparison_plot(out, pairs)
    lines += [
        f"![criss-cross vs non-local](plots/{png.name})",
        "",
        "Time and peak extra memory of one forward call along H = W (log-log), both mechanisms with the same "
        "channels; dotted lines: the analytic slopes S³ (criss-cross, HW·(H+W−1)) and S⁴ (non-local, (HW)²).",
        "",
    ]
    for impl, cc, nl in pairs:
        cpts = {p["value"]: p for p in cc["points"]}
        npts = {p["value"]: p for p in nl["points"]}
        sizes = sorted(set(cpts) & set(npts))
        lines += [
            f"### Measured on this machine ({impl}, forward, float32)",
            "",
            "| H = W | criss-cross time | non-local time | time ratio NL/CC | criss-cross peak | "
            "non-local peak | memory ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        crossover = None
        for s in sizes:
            c, n = cpts[s], npts[s]
            tr = n["median_s"] / c["median_s"] if c["median_s"] else float("nan")
            mr = n["peak_bytes"] / c["peak_bytes"] if c["peak_bytes"] else float("nan")
            if crossover is None and tr > 1:
                crossover = s
            lines.append(
                f"| {s} | {c['median_s'] * 1e3:.3f} ms | {n['median_s'] * 1e3:.3f} ms | {tr:.2f}× | "
                f"{c['peak_bytes'] / 2**20:.2f} MiB | {n['peak_bytes'] / 2**20:.2f} MiB | {mr:.2f}× |"
            )
        lines.append("")
        lines.append(
            f"Crossover: non-local is slower from H = W = {crossover} on."
            if crossover
            else "Crossover: non-local was not slower at any measured size."
        )
        lines.append("")
        extrap = []
        for mech, rec in (("ccnet", cc), ("nonlocal", nl)):
            pts = rec["points"]
            if len(pts) < 3 or not all(p["flops"] for p in pts):
                continue
            c, t0, r2, cov, sigma2 = model_fit([p["flops"] for p in pts], [p["median_s"] for p in pts])
            value, half = predict(c, t0, cov, sigma2, _flops_at(mech, S_PAPER), len(pts) - 2)
            extrap.append((mech, value, half, r2))
        if extrap:
            lines += [
                "Extrapolation to the paper's 97×97 map with C = 512, C′ = 64 (model fit time = c·FLOPs + t0 "
                "on this sweep, evaluated at the paper's FLOPs; 95 % prediction interval; extrapolating "
                "across channel counts too, so treat as an estimate):",
                "",
                "| mechanism | predicted time | 95 % interval | R² of fit |",
                "|---|---|---|---|",
            ]
            for mech, value, half, r2 in extrap:
                lines.append(
                    f"| {mech} | {value:.3f} s | [{max(value - half, 0):.3f}, {value + half:.3f}] s | {r2:.3f} |"
                )
            if len(extrap) == 2 and extrap[0][1] > 0:
                lines.append("")
                lines.append(
                    f"Predicted non-local / criss-cross time ratio at 97×97: {extrap[1][1] / extrap[0][1]:.1f}× "
                    f"(analytic FLOP ratio of the cores: "
                    f"{a['nonlocal_core_gflops'] / a['cca_core_gflops']:.1f}×)."
                )
            lines.append("")
    return lines
