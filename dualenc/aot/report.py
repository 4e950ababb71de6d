"""Compile a Program for a target and read what XLA says: per-chip memory, flops, roofline.

Memory is `compiled.memory_analysis()` per chip: arguments (params, optimizer state, the batch),
temporaries (activations kept for the backward, gradients, collectives' buffers) and outputs less
what aliases a donated argument. Flops per chip come from `compiled.cost_analysis()` (TPU: after
SPMD partitioning) or, where the GPU compiler returns none, from the lowered program's analysis
divided by the chip count. The roofline step time is max(flops / peak, bytes / bandwidth) per
chip; the MFU a measured step time t would mean is model_flops / (chips x peak x t).
"""

from __future__ import annotations

import dataclasses
import re
import time

import numpy as np
from jax.sharding import Mesh

from dualenc import sharding
from dualenc.aot import targets as targets_lib
from dualenc.aot.programs import Program
from dualenc.models import target as target_lib

GiB = 1 << 30
CPU_ONLY_CALLS = ("dualenc_", "xla_ffi_python_cpu", "__cpu")  # native kernels / host callbacks


@dataclasses.dataclass
class Report:
    target: str
    describe: str
    mesh: dict
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    hbm_bytes: int
    xla_flops_per_chip: float
    model_flops: float  # the whole step, all chips
    bytes_accessed_per_chip: float
    peak_flops: float
    hbm_bandwidth: float
    compile_seconds: float
    custom_calls: tuple[str, ...]
    source: str
    # Instructions XLA cloned to recompute (its HloRematerialization pass, `.remat` names): XLA:GPU
    # runs it when the plan passes its memory limit (~81 % of HBM), so memory stops growing with
    # the batch while the step does more work than the flops above say.
    xla_remat_ops: int = 0

    @property
    def need_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes

    @property
    def fits(self) -> bool:
        return self.need_bytes <= self.hbm_bytes

    @property
    def chips(self) -> int:
        return int(np.prod(list(self.mesh.values())))

    @property
    def roofline_seconds(self) -> float:
        """max(compute, HBM traffic) at peak. Compute takes the larger of XLA's flops and the
        analytic model flops per chip: the GPU compiler reports none, and XLA counts a loop's body
        once (GradCache chunks, accumulation micro-batches), which undercounts those steps."""
        flops = max(self.xla_flops_per_chip, self.model_flops / self.chips)
        return max(flops / self.peak_flops, self.bytes_accessed_per_chip / self.hbm_bandwidth)

    def mfu_at(self, step_seconds: float) -> float:
        return self.model_flops / (self.chips * self.peak_flops * step_seconds)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(
            need_bytes=self.need_bytes,
            fits=self.fits,
            roofline_seconds=self.roofline_seconds,
            mfu_at_roofline=self.mfu_at(self.roofline_seconds) if self.roofline_seconds else None,
        )
        return d


def make_mesh(target: str, shape) -> Mesh:
    """The config's mesh (`mesh.shape`, -1 = the rest) over the target's compile-only devices."""
    return sharding.make_mesh(tuple(int(x) for x in shape), devices=targets_lib.devices(target))


def _cost(analysis) -> dict:
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    return dict(analysis or {})


def compile_report(program: Program, mesh: Mesh, target: str) -> tuple[Report, object]:
    """(Report, the compiled executable) of `program` for `target`, traced for its devices."""
    t = targets_lib.get(target)
    t0 = time.perf_counter()
    with target_lib.compiling_for(mesh):
        lowered = program.fn.lower(*program.args)
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - the TPU compiler refuses what cannot fit
        need = out_of_memory(str(e))
        if need is None:
            raise
        return _refused(program, mesh, target, need, time.perf_counter() - t0), None
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = _cost(compiled.cost_analysis())
    chips = int(mesh.devices.size)
    if not cost.get("flops"):
        whole = _cost(lowered.cost_analysis())
        cost = {k: float(v) / chips for k, v in whole.items() if k in ("flops", "bytes accessed")}
    text = compiled.as_text()
    calls = sorted({line.split('custom_call_target="')[1].split('"')[0] for line in _calls(text)})
    report = Report(
        target=target,
        describe=program.describe,
        mesh=dict(mesh.shape),
        argument_bytes=int(mem.argument_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes),
        hbm_bytes=int(t.chip.hbm_bytes),
        xla_flops_per_chip=float(cost.get("flops", 0.0)),
        model_flops=float(program.model_flops),
        bytes_accessed_per_chip=float(cost.get("bytes accessed", 0.0)),
        peak_flops=t.chip.peak_flops,
        hbm_bandwidth=t.chip.hbm_bandwidth,
        compile_seconds=seconds,
        custom_calls=tuple(calls),
        source=program.source,
        xla_remat_ops=xla_remat_ops(text),
    )
    return report, compiled


def out_of_memory(message: str) -> int | None:
    """Bytes the TPU compiler said the temporaries need when it refused to compile (it does so
    when they exceed HBM), else None."""
    match = re.search(
        r"RESOURCE_EXHAUSTED.*?required for HLO temporaries \(([\d.]+)([KMGT])\)", message, re.S
    )
    if match is None:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[match.group(2)]
    return int(float(match.group(1)) * scale)


def _refused(program: Program, mesh: Mesh, target: str, temp: int, seconds: float) -> Report:
    """The Report of a compile refused for memory: temporaries as the compiler counted them,
    arguments unknown (0), so it does not fit."""
    t = targets_lib.get(target)
    return Report(
        target=target,
        describe=program.describe,
        mesh=dict(mesh.shape),
        argument_bytes=0,
        temp_bytes=temp,
        output_bytes=0,
        alias_bytes=0,
        hbm_bytes=int(t.chip.hbm_bytes),
        xla_flops_per_chip=0.0,
        model_flops=float(program.model_flops),
        bytes_accessed_per_chip=0.0,
        peak_flops=t.chip.peak_flops,
        hbm_bandwidth=t.chip.hbm_bandwidth,
        compile_seconds=seconds,
        custom_calls=(),
        source=program.source,
    )


def xla_remat_ops(text: str) -> int:
    """How many instructions of a compiled module's text are XLA's rematerialised clones."""
    return len(set(_REMAT_DEF.findall(text)))


_REMAT_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]*\.remat[\w.\-]*)\s*=", re.M)


def _calls(text: str):
    return (line for line in text.splitlines() if 'custom_call_target="' in line)


def cpu_only_calls(report: Report) -> list[str]:
    """Custom calls that exist only on CPU (dualenc's native kernels, host callbacks)."""
    return [c for c in report.custom_calls if any(m in c.lower() for m in CPU_ONLY_CALLS)]


def advice(report: Report, config) -> str:
    """One line: what does not fit and what to change, from what the config does not do yet."""
    m = config.model
    ideas = [f"lower train.batch_size (now {int(config.train.batch_size)})"]
    if not m.remat:
        ideas.append("set model.remat=True")
    if m.dtype != "bfloat16":
        ideas.append("set model.dtype=bfloat16")
    if "fsdp" in report.mesh and report.mesh["fsdp"] == 1:
        ideas.append("shard the weights: mesh.shape=(-1, 4) with the FSDP rules")
    if not int(config.train.cache_chunk_size) and config.get("task", "biencoder") == "biencoder":
        ideas.append("use GradCache (train.cache_chunk_size=32)")
    return (
        f"error: {report.describe} needs {report.need_bytes / GiB:.2f} GiB per chip on "
        f"{report.target} ({report.hbm_bytes / GiB:.2f} GiB HBM): " + "; or ".join(ideas)
    )


def table(report: Report) -> str:
    """The human table `dualenc.compile` prints."""
    r = report

    def size(n: float) -> str:
        return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / (1 << 20):.1f} MiB"

    rows = [
        ("target", f"{r.target} ({r.chips} chips, mesh {r.mesh})"),
        ("step", r.describe),
        ("architecture from", r.source),
        ("arguments / chip", size(r.argument_bytes)),
        ("temp / chip", size(r.temp_bytes)),
        ("outputs / chip", f"{size(r.output_bytes)} ({size(r.alias_bytes)} aliased: donated)"),
        (
            "total / HBM",
            f"{size(r.need_bytes)} / {size(r.hbm_bytes)}: "
            + ("fits" if r.fits else "DOES NOT FIT"),
        ),
        (
            "flops / chip (XLA)",
            f"{r.xla_flops_per_chip:.3e}"
            if r.xla_flops_per_chip
            else "not reported by this compiler (roofline from the analytic flops)",
        ),
        ("model flops / chip", f"{r.model_flops / r.chips:.3e} (analytic)"),
        (
            "roofline step",
            f"{r.roofline_seconds * 1e3:.2f} ms at {r.peak_flops / 1e12:.0f} "
            f"TFLOP/s, {r.hbm_bandwidth / 1e9:.0f} GB/s",
        ),
        ("MFU at step time t", f"{r.model_flops / (r.chips * r.peak_flops):.3e} s / t"),
        ("compile", f"{r.compile_seconds:.1f} s"),
    ]
    if r.xla_remat_ops:
        rows.insert(
            -3,
            (
                "XLA remat",
                f"{r.xla_remat_ops} instructions recomputed to fit, not in the flops: expect a "
                "slower step (or set model.remat=True / a smaller batch)",
            ),
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
