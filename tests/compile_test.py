"""Compile-only TPU (and, where the CUDA plugin is installed, GPU) targets from this CPU machine.

What each guards: the real train steps compile for a pod's devices with the config's mesh, the
parameters are split as the partition rules say, the contrastive logits span the global batch,
no CPU-only custom call (dualenc's native kernels) leaks into an accelerator program, remat
really cuts the activations, the analytic flops and the known-config table are right, and a step
that does not fit is one line and exit 2.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from dualenc import sharding
from dualenc.aot import flops, programs, report, targets
from dualenc.models import known_configs, target
from dualenc.models.registry import get_arch

REPO = Path(__file__).resolve().parents[1]


def _tpu():
    try:
        targets.devices("tpu:v5e-8")
    except targets.TargetUnavailable as e:
        pytest.skip(f"no TPU compile support: {e}")


def tiny_config(**over):
    """configs/tiny.py made 2 layers wide enough for heads of 16, with overrides (`a.b`: v)."""
    c = tiny.get_config()
    c.model.config_overrides.num_hidden_layers = 2
    c.model.config_overrides.hidden_size = 64
    c.model.config_overrides.num_attention_heads = 4
    c.model.config_overrides.intermediate_size = 128
    c.train.batch_size = 32
    c.data.q_max_length, c.data.p_max_length = 16, 32
    c.mesh.shape = (4, 2)
    for key, value in over.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


def _compile(config, target="tpu:v5e-8", step="train"):
    mesh = report.make_mesh(target, config.mesh.shape)
    program = programs.build(config, mesh, step)
    return (*report.compile_report(program, mesh, target), program)


def test_biencoder_train_step_for_tpu_data_fsdp_mesh():
    _tpu()
    rep, compiled, program = _compile(tiny_config())
    assert rep.mesh == {"data": 4, "fsdp": 2} and rep.fits
    assert report.cpu_only_calls(rep) == []
    # params as the rules say: the FSDP rules split the big matrices over 'fsdp'
    state_sh = compiled.input_shardings[0][0]
    specs = jax.tree_util.tree_flatten_with_path(state_sh["params"])[0]
    kernel = [
        s.spec
        for p, s in specs
        if "intermediate" in jax.tree_util.keystr(p) and "kernel" in jax.tree_util.keystr(p)
    ]
    assert kernel and all("fsdp" in str(s) for s in kernel), kernel
    # the contrastive logits span the global batch: 32 queries x 64 passages in one score
    # matmul per chip's 4 queries (each chip gathers every passage embedding)
    text = compiled.as_text()
    assert "f32[4,64]" in text or "f32[4,2,32]" in text, "no per-chip slice of global logits"
    assert rep.xla_flops_per_chip > 0 and rep.model_flops > 0


def test_cross_encoder_train_and_rerank_steps_for_tpu():
    _tpu()
    c = tiny_config(task="cross")
    c.data.train.format = "pairs"
    c.cross.max_length = 32
    for step in ("train", "rerank"):
        rep, _, _ = _compile(c, step=step)
        assert rep.fits and report.cpu_only_calls(rep) == [], (step, rep.custom_calls)


def test_cpu_program_does_use_the_native_kernels_that_tpu_must_not():
    """The check above can fail: compiled for this CPU (one device), the same step calls
    dualenc's kernels, which `cpu_only_calls` finds."""
    from dualenc.models import kernels

    if kernels.attention_target() is None:
        pytest.skip("native kernels not built on this machine")
    c = tiny_config()
    c.mesh.shape = (1, 1)
    mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
    program = programs.build(c, mesh)
    with target.compiling_for(mesh):
        text = program.fn.lower(*program.args).compile().as_text()
    assert "dualenc" in text


def test_remat_halves_the_activation_memory():
    """64 sequences of 128 per chip: activations dominate the temp memory (at 8 a chip the
    embedding table's gradient does, and remat changes little); remat keeps each layer's input
    only (measured 120 -> 35 MiB)."""
    _tpu()
    big = {"train.batch_size": 512, "data.p_max_length": 128}
    plain, _, _ = _compile(tiny_config(**big))
    full, _, _ = _compile(tiny_config(**big, **{"model.remat": True}))
    assert full.temp_bytes * 2 <= plain.temp_bytes, (plain.temp_bytes, full.temp_bytes)
    assert full.argument_bytes == plain.argument_bytes


def test_fsdp_keeps_activations_split_by_rows():
    """A (1, 8) FSDP mesh must cost about what data parallel costs in activations: weights are
    gathered, rows stay split. Without `target.keep_rows_split` XLA carried the embedding
    table's hidden-dim split into the activations (MiniLM on v5e-16: 8.2 vs 1.6 GiB temp; here
    413 vs 85 MiB, and 143 MiB with it: the rest is the gathered weights and their gradients)."""
    _tpu()
    big = {"train.batch_size": 512, "data.p_max_length": 128}
    dp, _, _ = _compile(tiny_config(**big, **{"mesh.shape": (8, 1)}))
    fsdp, _, _ = _compile(tiny_config(**big, **{"mesh.shape": (1, 8)}))
    assert fsdp.temp_bytes <= 2 * dp.temp_bytes, (dp.temp_bytes, fsdp.temp_bytes)


def test_analytic_flops_by_hand():
    """One BERT layer, hidden 4, inner 8, a sequence of 3: weights 4·16 + 2·32 = 128 MACs/token,
    attention 2·3·4 = 24 MACs/token → 2·3·152 = 912 flops; train = 3 x (towers + scores)."""
    cfg = get_arch("bert").config_cls(
        num_hidden_layers=1, hidden_size=4, num_attention_heads=1, intermediate_size=8
    )
    assert flops.forward_per_sequence(cfg, 3) == 912
    towers = 2 * flops.forward_per_sequence(cfg, 3) + 2 * 2 * flops.forward_per_sequence(cfg, 3)
    assert flops.biencoder_train(cfg, 2, 3, 3, 2) == 3 * (towers + 2 * 2 * 4 * 4)


def test_analytic_flops_count_debertas_relative_position_scores_at_their_width():
    """DeBERTa's c2p and p2c multiply each token by all 2·att_span relative rows (here 2·4 = 8,
    not the 3 tokens): per token 128 weight MACs + 2·3·4 content + 2·8·4 relative = 216 MACs →
    2·3·216 = 1,296 flops; with relative attention off it is BERT's 912."""
    deberta = get_arch("deberta-v2").config_cls
    common = dict(num_hidden_layers=1, hidden_size=4, num_attention_heads=1, intermediate_size=8)
    rel = deberta(
        **common, relative_attention=True, position_buckets=4, pos_att_type=("c2p", "p2c")
    )
    assert flops.forward_per_sequence(rel, 3) == 1296
    assert flops.forward_per_sequence(deberta(**common), 3) == 912


@pytest.mark.parametrize(
    "name,millions",
    [
        ("google-bert/bert-base-uncased", 109.48),
        ("google-bert/bert-large-uncased", 335.14),
        ("sentence-transformers/all-MiniLM-L6-v2", 22.71),
        ("distilbert/distilbert-base-uncased", 66.36),
        ("microsoft/deberta-v3-base", 183.83),
        ("microsoft/deberta-v3-large", 434.01),
    ],
)
def test_known_configs_have_the_published_sizes(name, millions):
    """The table's configs build models of their checkpoints' parameter counts (HF model cards /
    `model.num_parameters()` of the base models, pooler included)."""
    hf, source = known_configs.hf_config(name)
    assert "table" in source
    arch = get_arch(hf["model_type"])
    cfg = arch.config_cls.from_hf(hf)
    model = arch.model_cls(cfg)
    ids = jax.ShapeDtypeStruct((1, 8), np.int32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), ids, ids)
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
    assert abs(n / 1e6 - millions) < 0.01 * millions, n


def test_step_that_does_not_fit_is_one_line_and_exit_2(tmp_path):
    _tpu()
    cmd = [
        sys.executable,
        "-m",
        "dualenc.compile",
        "--config=configs/tiny.py",
        "--target=tpu:v5e-8",
        "--config.train.batch_size=262144",
        "--config.data.num_negatives=0",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "train.batch_size" in errors[0] and "remat" in errors[0]
    assert "DOES NOT FIT" in out.stdout


def _gpu():
    try:
        targets.devices("gpu:h100x8")
    except targets.TargetUnavailable as e:
        pytest.skip(f"no GPU compile support (make compile-gpu): {e}")


@pytest.mark.gpu  # the CUDA plugin (~5 GB) is outside `make setup`: `make compile-gpu` runs this
def test_gpu_train_step_uses_cudnn_attention():
    _gpu()
    c = tiny_config(**{"model.dtype": "bfloat16", "train.dropout": False})
    c.mesh.shape = (8, 1)
    rep, _, _ = _compile(c, target="gpu:h100x8")
    assert rep.fits and report.cpu_only_calls(rep) == []
    assert any("cudnn$fmha" in call for call in rep.custom_calls), rep.custom_calls
    assert any("Backward" in call for call in rep.custom_calls)


def _report() -> report.Report:
    return report.Report(
        target="tpu:v5e-8",
        describe="x",
        mesh={"data": 8},
        argument_bytes=3,
        temp_bytes=4,
        output_bytes=2,
        alias_bytes=2,
        hbm_bytes=7,
        xla_flops_per_chip=197e12,
        model_flops=8 * 98.5e12,
        bytes_accessed_per_chip=0.0,
        peak_flops=197e12,
        hbm_bandwidth=819e9,
        compile_seconds=0.0,
        custom_calls=(),
        source="",
    )


def test_report_fields_are_consistent():
    r = _report()
    assert r.need_bytes == 7 and r.fits and r.roofline_seconds == 1.0
    assert r.mfu_at(1.0) == pytest.approx(0.5)
    assert not dataclasses.replace(r, temp_bytes=5).fits


def test_xla_rematerialised_instructions_are_counted_and_reported():
    """XLA:GPU recomputes to fit (`.remat` clones) without saying so in memory or flops: the
    report counts the clones (not uses of them, not jax.checkpoint's names) and the table warns."""
    text = "\n".join(
        [
            "ENTRY %main {",
            "  %fusion.3 = bf16[8,64]{1,0} fusion(%p0), kind=kLoop",
            "  %fusion.3.remat = bf16[8,64]{1,0} fusion(%p0), kind=kLoop",
            "  %bitcast.remat.12 = bf16[512]{0} bitcast(%fusion.3.remat)",
            "  ROOT %tuple.remat2 = (bf16[512]{0}) tuple(%bitcast.remat.12)",
            "  %checkpoint_remat_input = f32[2] parameter(1)",
            "}",
        ]
    )
    assert report.xla_remat_ops(text) == 3
    assert report.xla_remat_ops(text.replace(".remat", "")) == 0
    r = dataclasses.replace(_report(), xla_remat_ops=3)
    assert "XLA remat" in report.table(r) and "XLA remat" not in report.table(_report())
