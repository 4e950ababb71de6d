"""The memory and throughput table: largest per-chip batch of the DPR-shaped bi-encoder train step
per model, target and precision, from compile-only targets (`dualenc.aot`, no accelerator).

Shapes: two towers (DPR), 1 hard negative, q64 / p256, every text at its max length (the step's
peak), FSDP over all chips (params and Adam moments sharded, `configs.FSDP_RULES`), AdamW.
Per-chip memory is linear in the per-chip batch at a fixed mesh, so each cell walks that line
(`largest_batch`: two or three compiles, fewer when `--prior` names an earlier run whose cells give
first guesses) and reports the largest batch verified to fit. Prints one JSON object (and a
markdown table on stderr); each cell also carries flops per step and the roofline step time at
that batch, and every compile's (batch, bytes) point.

python benchmarks/compile_table.py [--models BERT-base,...] [--targets tpu:v5e-16,...]
    [--settings f32,bf16,bf16+remat] [--out benchmarks/results/compile_table.json]
    [--prior earlier.json] [--max_compiles 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dualenc  # noqa: E402,F401  (pins JAX to the CPU before jax starts)

MODELS = {
    "MiniLM-L6": "sentence-transformers/all-MiniLM-L6-v2",
    "BERT-base": "google-bert/bert-base-uncased",
    "DeBERTa-v3-base": "microsoft/deberta-v3-base",
    "DeBERTa-v3-large": "microsoft/deberta-v3-large",
}
TARGETS = ("tpu:v5e-16", "tpu:v4-32", "gpu:h100x8")
SETTINGS = {
    "f32": {"model.dtype": "float32", "model.remat": False},
    "bf16": {"model.dtype": "bfloat16", "model.remat": False},
    "bf16+remat": {"model.dtype": "bfloat16", "model.remat": True},
}
HEADROOM = 0.97  # of a TPU's HBM: XLA's runtime and fragmentation
GPU_MEM_FRACTION = 0.75  # JAX's default GPU preallocation
REMAT_GAIN = 3.0  # batch with remat / without, a first guess only (measured 3.2x-6.75x on v5e)


def make_config(model: str, setting: str, per_chip: int, chips: int):
    import configs
    from configs import dpr_nq_tpu

    c = dpr_nq_tpu.get_config()
    c.model.name_or_path = MODELS[model]
    c.model.pooling = "cls"
    c.train.batch_size = per_chip * chips
    c.mesh.shape = (1, -1)
    c.mesh.rules = configs.FSDP_RULES
    for key, value in SETTINGS[setting].items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def compile_at(model, setting, target, per_chip):
    from dualenc.aot import programs, report, targets

    chips = targets.get(target).num_chips
    config = make_config(model, setting, per_chip, chips)
    mesh = report.make_mesh(target, config.mesh.shape)
    rep, _ = report.compile_report(programs.build(config, mesh), mesh, target)
    return rep


def _floor8(x: float) -> int:
    return max(0, int(x) // 8 * 8)


def _platform(target: str) -> str:
    return target.split(":")[0]


def first_guess(model, setting, target, priors) -> tuple[int, float | None]:
    """(first per-chip batch to compile, bytes per per-chip query or None) from earlier cells of
    the same model: the same setting's batch on this target, else on another target scaled by HBM
    (its slope carried over only within a platform, whose programs match), else another setting's
    on this target (x REMAT_GAIN into or out of remat); 16 without any."""
    done = [c for c in priors if c["model"] == model and c.get("per_chip_batch")]
    same = [c for c in done if c["setting"] == setting]
    same.sort(key=lambda c: (c["target"] != target, _platform(c["target"]) != _platform(target)))
    if same:
        c = same[0]
        slope = c.get("slope_bytes") if _platform(c["target"]) == _platform(target) else None
        return max(8, _floor8(c["per_chip_batch"] * _hbm(target) / (c["hbm_gib"] * 2**30))), slope
    for c in done:
        if c["target"] == target:
            remat = ("remat" in setting) - ("remat" in c["setting"])
            return max(8, _floor8(c["per_chip_batch"] * REMAT_GAIN**remat)), None
    return 16, None


def _hbm(target) -> float:
    from dualenc.aot import targets

    return float(targets.get(target).chip.hbm_bytes)


def budget(target: str) -> float:
    """Bytes a step may plan per chip: HEADROOM of a TPU's HBM; on a GPU, what a default JAX
    process can allocate (XLA_PYTHON_CLIENT_MEM_FRACTION 0.75), which also stays under XLA:GPU's
    scheduler limit (~76 % of device memory), above which XLA recomputes to fit."""
    fraction = GPU_MEM_FRACTION if _platform(target) == "gpu" else HEADROOM
    return fraction * _hbm(target)


def _fits(rep, limit: float) -> bool:
    """Within the budget and as planned: a plan XLA had to rematerialise does not count."""
    return rep.need_bytes <= limit and not rep.xla_remat_ops


def largest_batch(model, setting, target, log, priors=(), max_compiles=3) -> dict:
    """Largest per-chip batch (multiple of 8) whose XLA plan fits `budget(target)`. Memory is
    linear in the batch at a fixed mesh (until XLA:GPU rematerialises by itself, which flattens
    it), so: compile at a first guess (an earlier cell's batch, scaled by HBM, where there is
    one), step along the line through the two as-planned compiles nearest the budget (its slope
    at first from a prior cell or need / batch, which overestimates it), and stop when the batch
    8 above the best one is known not to fit or the line says so. The answer is the largest batch
    verified to fit; `line_batch` is what the last line predicts."""
    limit = budget(target)
    size, slope = first_guess(model, setting, target, priors)
    points: dict[int, object] = {}
    predicted = size
    while len(points) < max_compiles:
        rep = compile_at(model, setting, target, size)
        points[size] = rep
        remat = rep.xla_remat_ops
        log(
            f"  {model} {setting} {target}: per-chip batch {size}: {rep.need_bytes / 2**30:.2f} GiB"
            + (f" (XLA rematerialised {remat} ops)" if remat else "")
        )
        planned = [b for b in points if not points[b].xla_remat_ops]
        near = sorted(planned, key=lambda b: abs(points[b].need_bytes - limit))[:2]
        if len(near) == 2:
            lo, hi = sorted(near)
            rise = points[hi].need_bytes - points[lo].need_bytes
            slope = rise / (hi - lo) if rise > 0 else slope
        if near:
            anchor = near[0]
            if slope is None or slope <= 0:
                slope = points[anchor].need_bytes / anchor
            # XLA rematerialised at a batch whose plan it squeezed under its own limit: aim below
            squeezed = [p.need_bytes for p in points.values() if p.xla_remat_ops]
            aim = min([limit, *squeezed])
            predicted = _floor8(anchor + (aim - points[anchor].need_bytes) / slope)
        else:  # every compile so far was rematerialised by XLA: well past the line's end
            predicted = _floor8(min(points) * 0.6)
        best = max((b for b in points if _fits(points[b], limit)), default=0)
        over = min((b for b in points if b > best), default=None)
        if over is not None and over <= best + 8:
            break  # bracketed to one step
        if best and predicted <= best:
            if len(near) == 2:
                break  # the line agrees
            predicted = best + 8  # one point only: try one step up
        if over is not None:
            predicted = min(predicted, over - 8)
        if predicted < 8 or predicted in points:
            break
        size = predicted
    fitting = [b for b in points if _fits(points[b], limit)]
    base = {
        "points": [  # batch, bytes, XLA's rematerialised ops
            [b, points[b].need_bytes, points[b].xla_remat_ops] for b in sorted(points)
        ],
        "slope_bytes": slope,
        "line_batch": predicted,
        "compiles": len(points),
    }
    if not fitting:  # not even the smallest compiled batch fits
        return {"per_chip_batch": 0, "hbm_gib": _hbm(target) / 2**30, **base}
    size = max(fitting)
    rep = points[size]
    return {
        "per_chip_batch": size,
        "need_gib": rep.need_bytes / 2**30,
        "hbm_gib": rep.hbm_bytes / 2**30,
        "model_flops_per_step": rep.model_flops,
        "xla_flops_per_chip": rep.xla_flops_per_chip,
        "roofline_ms": rep.roofline_seconds * 1e3,
        "roofline_queries_per_s_per_chip": size / rep.roofline_seconds,
        "xla_remat_ops": rep.xla_remat_ops,  # XLA recomputes to fit: flops low
        **base,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="")
    ap.add_argument("--prior", default="", help="earlier results JSON: first guesses per cell")
    ap.add_argument("--max_compiles", type=int, default=3)
    args = ap.parse_args()
    from dualenc.aot import targets

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    out = {
        "shapes": "DPR step: 2 towers, 1 hard negative, q64/p256, FSDP over all chips",
        "cells": [],
    }
    priors = json.loads(Path(args.prior).read_text())["cells"] if args.prior else []
    for target in args.targets.split(","):
        try:
            targets.devices(target)
        except targets.TargetUnavailable as e:
            log(f"skip {target}: {e}")
            continue
        for model in args.models.split(","):
            for setting in args.settings.split(","):
                t0 = time.perf_counter()
                cell = largest_batch(
                    model, setting, target, log, priors + out["cells"], args.max_compiles
                )
                cell.update(
                    model=model, setting=setting, target=target, seconds=time.perf_counter() - t0
                )
                out["cells"].append(cell)
                if args.out:  # after every cell: a long run keeps what it measured
                    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    log("| model | target | setting | per-chip batch | GiB / HBM | TFLOP per step | roofline ms |")
    log("|---|---|---|---:|---:|---:|---:|")
    for c in out["cells"]:
        if c["per_chip_batch"]:
            log(
                f"| {c['model']} | {c['target']} | {c['setting']} | {c['per_chip_batch']} | "
                f"{c['need_gib']:.1f} / {c['hbm_gib']:.0f} | {c['model_flops_per_step'] / 1e12:.1f}"
                f" | {c['roofline_ms']:.1f} |"
            )
        else:
            log(f"| {c['model']} | {c['target']} | {c['setting']} | none: {c['points']} | | | |")


if __name__ == "__main__":
    main()
