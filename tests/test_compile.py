"""torch.compile of the transformer blocks (``CausalWanModel.compile_blocks``): compiled equals eager.

The default test compiles with ``backend="aot_eager"`` (Dynamo capture + AOT autograd, no code generation: seconds
on a CPU); the Inductor test generates C++ kernels with gcc (about 20-70 s on a shared 2-core machine) and runs only
with ``DF_SLOW_TESTS=1``.
"""
import os

import pytest
import torch

from tiny import text_embeds, tiny_model, tiny_pipeline
from wan.rope import Rotation


def _rollout(model, frames=6):
    """Two chunks (the second attends over the first's cache) from fixed noise."""
    noise = torch.randn(1, frames, 16, 4, 6, generator=torch.Generator().manual_seed(3))
    return tiny_pipeline(model).generate(text_embeds(1, model.config), noise, torch.Generator().manual_seed(5))


def _compiled_vs_eager(backend):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    model = tiny_model(num_layers=3)
    eager = _rollout(model)
    assert model.compile_blocks(backend=backend) == 3 and model.compiled["backend"] == backend
    compiled = _rollout(model)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    # One graph per part (before / after the cache) shared by all blocks and chunks: no recompilation per block.
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()


def test_compiled_blocks_equal_eager_aot_eager():
    _compiled_vs_eager("aot_eager")


@pytest.mark.skipif(os.environ.get("DF_SLOW_TESTS") != "1", reason="Inductor compile takes 20-70 s; DF_SLOW_TESTS=1")
def test_compiled_blocks_equal_eager_inductor():
    _compiled_vs_eager("inductor")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_real_arithmetic_rotation_equals_complex(dtype):
    angles = torch.rand(2, 5, 3, dtype=torch.float64) * 40  # [B, n, P]
    x = torch.randn(2, 5, 4, 10).to(dtype)  # [B, n, H, D]: rotate pairs 1..3 of 5
    rot = Rotation(angles, 1, torch.float64 if dtype == torch.float32 else torch.float32).prepare_real()
    real = rot._apply_real(x)
    torch.testing.assert_close(real, rot.apply(x))  # eager apply keeps the complex path
    assert torch.equal(real[..., :2], x[..., :2]) and torch.equal(real[..., 8:], x[..., 8:])


def test_cli_flag_reaches_the_settings():
    from inference import build_parser
    assert build_parser().parse_args(["--compile"]).compile is True
    assert build_parser().parse_args([]).compile is False
