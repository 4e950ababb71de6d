"""The memory and throughput table: largest per-chip batch of the DPR-shaped bi-encoder train step
per model, target and precision, from compile-only targets (`dualenc.aot`, no accelerator).

Shapes: two towers (DPR), 1 hard negative, q64 / p256, every text at its max length (the step's
peak), FSDP over all chips (params and Adam moments sharded, `configs.FSDP_RULES`), AdamW.
Per-chip memory is linear in the per-chip batch at a fixed mesh, so each cell compiles at two
batches, extrapolates the largest batch that fits the chip's HBM, and compiles there to check
(stepping down until it fits). Prints one JSON object (and a markdown table on stderr); each
cell also carries flops per step and the roofline step time at that batch.

python benchmarks/compile_table.py [--models BERT-base,...] [--targets tpu:v5e-16,...]
    [--settings f32,bf16,bf16+remat] [--out benchmarks/results/compile_table.json]
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
HEADROOM = 0.97  # of HBM: XLA's runtime and fragmentation


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


def largest_batch(model, setting, target, log) -> dict:
    """Per-chip batch that fits: two compiles for the line, then check (and step down)."""
    a, b = 8, 16
    ra, rb = compile_at(model, setting, target, a), compile_at(model, setting, target, b)
    slope = (rb.need_bytes - ra.need_bytes) / (b - a)
    budget = HEADROOM * ra.hbm_bytes
    guess = a + (budget - ra.need_bytes) / slope if slope > 0 else a
    size = max(0, int(guess) // 8 * 8)
    compiles = 2
    rep = None
    while size >= 8:
        rep = compile_at(model, setting, target, size)
        compiles += 1
        log(
            f"  {model} {setting} {target}: per-chip batch {size}: {rep.need_bytes / 2**30:.2f} GiB"
        )
        if rep.need_bytes <= budget:
            break
        size = int(size * budget / rep.need_bytes) // 8 * 8
    if size < 8:  # not even 8 per chip
        return {"per_chip_batch": 0, "fits_at_8": ra.fits, "need_gib_at_8": ra.need_bytes / 2**30}
    return {
        "per_chip_batch": size,
        "need_gib": rep.need_bytes / 2**30,
        "hbm_gib": rep.hbm_bytes / 2**30,
        "model_flops_per_step": rep.model_flops,
        "xla_flops_per_chip": rep.xla_flops_per_chip,
        "roofline_ms": rep.roofline_seconds * 1e3,
        "roofline_queries_per_s_per_chip": size / rep.roofline_seconds,
        "compiles": compiles,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    from dualenc.aot import targets

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    out = {
        "shapes": "DPR step: 2 towers, 1 hard negative, q64/p256, FSDP over all chips",
        "cells": [],
    }
    for target in args.targets.split(","):
        try:
            targets.devices(target)
        except targets.TargetUnavailable as e:
            log(f"skip {target}: {e}")
            continue
        for model in args.models.split(","):
            for setting in args.settings.split(","):
                t0 = time.perf_counter()
                cell = largest_batch(model, setting, target, log)
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
            log(f"| {c['model']} | {c['target']} | {c['setting']} | < 8 | | | |")


if __name__ == "__main__":
    main()
