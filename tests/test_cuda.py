"""CUDA-only checks (`pytest -m cuda` on a GPU machine). Without CUDA every test here is skipped, with the
reason shown in the summary, so they never count as passes on a CPU machine or in CI."""
import math

import numpy as np
import pytest
import torch

import vatt
from tests.conftest import shared_path
from vatt.cli import main as cli

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch sees none")]


@pytest.mark.parametrize("name", ["tx_fac", "ut_fac"])
def test_converted_official_checkpoints_match_on_cuda_in_fp32(name, tmp_path, monkeypatch):
    parity = shared_path("parity", "official-tiny")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert cli(["convert-tf", str(parity / name / "ckpt" / "ckpt-1"), "--official-config",
                str(parity / name / "config.json"), "--out", str(tmp_path / name)]) == 0
    model = vatt.load(tmp_path / name).cuda().eval()
    inputs, ref = np.load(parity / name / "inputs.npz"), np.load(parity / name / "outputs.npz")
    with torch.no_grad():
        out = model(video=torch.from_numpy(inputs["video"]).cuda(), audio=torch.from_numpy(inputs["audio"]).cuda(),
                    text=torch.from_numpy(inputs["text"]).long().cuda())
    for key, got in {"video/features": out.video.features, "audio/features": out.audio.features,
                     "text/features": out.text.features, "head_stack/bridge/video/toaud": out.video_va,
                     "head_stack/bridge/text/tovid": out.text_vt}.items():
        err = float(np.abs(got.double().cpu().numpy() - ref[key]).max())
        assert err <= 1e-4, f"{name} {key}: max abs error {err:.2e} on CUDA"


def test_bbs_bf16_step_runs_with_flash_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from bench.gpu import make_run
    run, clips = make_run("tx_fac_bbs", 2, torch.device("cuda"), "bf16", compile=False, ckpt=False)
    # No math fallback: video and audio attention take the flash kernel; the text's (padding mask and T5
    # position bias) the memory-efficient one.
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        metrics = run._step([clips])
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def test_cuda_dropout_rate():
    from vatt.model.dropout import dropout
    y = dropout(torch.ones(1_000_000, device="cuda"), 0.1, True)
    assert abs((y == 0).float().mean().item() - 0.1) < 0.003
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))


def test_color_jitter_runs_on_cuda_frames():
    # Its work planes and constant tensors follow the frames' device.
    from vatt.data import transforms
    x = torch.rand(3, 16, 12, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cpu = transforms.color_jitter(x, torch.Generator().manual_seed(1), prob=1.0)
    gpu = transforms.color_jitter(x.cuda(), torch.Generator().manual_seed(1), prob=1.0)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=0)
