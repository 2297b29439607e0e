"""Raw-input tokenizers: voxel patches, waveform patches, log-mel spectrogram patches, frozen word embeddings.

Every tokenizer returns tokens on their grid, channels last: `[B, *grid, D]`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def check_shape(name: str, x: torch.Tensor, expected: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(x.shape)}")


class VoxelPatchEmbedding(nn.Module):
    """Conv3D with kernel = stride = (4, 16, 16), VALID padding: `[B, T, H, W, 3]` -> `[B, t, h, w, D]`.

    Like the official VALID convolution, frames and pixels that do not fill a whole patch are dropped.
    Since kernel = stride, the convolution is one matrix product over non-overlapping patches; computing
    it that way is several times faster on CPU than the (backward of the) 3-D convolution. The weight keeps
    the Conv3d layout `[D, 3, 4, 16, 16]`.
    """

    def __init__(self, d_model: int, temporal_patch_size: int = 4, spatial_patch_size: int = 16, in_channels: int = 3):
        super().__init__()
        self.patch = (temporal_patch_size, spatial_patch_size, spatial_patch_size)
        self.in_channels = in_channels
        self.proj = nn.Conv3d(in_channels, d_model, kernel_size=self.patch, stride=self.patch)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch
        check_shape(
            "video", video, f"[B, T>={pt}, H>={ph}, W>={pw}, {self.in_channels}] (frames in [-1, 1], channels last)",
            video.dim() == 5 and video.shape[-1] == self.in_channels
            and video.shape[1] >= pt and video.shape[2] >= ph and video.shape[3] >= pw,
        )
        b, t, h, w = video.shape[0], video.shape[1] // pt, video.shape[2] // ph, video.shape[3] // pw
        x = video[:, : t * pt, : h * ph, : w * pw]
        # [B, t, pt, h, ph, w, pw, C] -> [B, t, h, w, C, pt, ph, pw]: the Conv3d weight's input order
        x = x.reshape(b, t, pt, h, ph, w, pw, self.in_channels).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, t, h, w, -1)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)
        return F.linear(x.to(weight.dtype) if not torch.is_autocast_enabled() else x, weight, self.proj.bias)


class WaveformPatchEmbedding(nn.Module):
    """Conv1D with kernel = stride = 128 over the raw waveform: `[B, N]` or `[B, N, 1]` -> `[B, n, D]`.

    Computed as one matrix product over the non-overlapping segments; the weight keeps the Conv1d layout.
    """

    def __init__(self, d_model: int, temporal_patch_size: int = 128):
        super().__init__()
        self.patch = temporal_patch_size
        self.proj = nn.Conv1d(1, d_model, kernel_size=temporal_patch_size, stride=temporal_patch_size)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 3 and audio.shape[-1] == 1:
            audio = audio[..., 0]
        check_shape("audio", audio, f"[B, N>={self.patch}] or [B, N, 1] (mono waveform)",
                    audio.dim() == 2 and audio.shape[1] >= self.patch)
        n = audio.shape[1] // self.patch  # VALID: a trailing partial patch is dropped
        x = audio[:, : n * self.patch].reshape(audio.shape[0], n, self.patch)
        weight = self.proj.weight.reshape(self.proj.out_channels, -1)  # Conv1d [D, 1, 128] -> [D, 128]
        return F.linear(x.to(weight.dtype) if not torch.is_autocast_enabled() else x, weight, self.proj.bias)


def mel_filterbank(num_spectrogram_bins: int, num_mel_bins: int, sample_rate: float,
                   lower_hz: float, upper_hz: float) -> torch.Tensor:
    """`[num_spectrogram_bins, num_mel_bins]` HTK-mel triangular filters (as `tf.signal.linear_to_mel_weight_matrix`)."""
    def hz_to_mel(f):
        return 1127.0 * torch.log1p(f / 700.0)

    nyquist = sample_rate / 2.0
    linear_hz = torch.linspace(0.0, nyquist, num_spectrogram_bins, dtype=torch.float64)[1:]
    spec_mel = hz_to_mel(linear_hz)[:, None]
    edges = torch.linspace(hz_to_mel(torch.tensor(lower_hz, dtype=torch.float64)),
                           hz_to_mel(torch.tensor(upper_hz, dtype=torch.float64)), num_mel_bins + 2,
                           dtype=torch.float64)
    lower, center, upper = edges[:-2][None], edges[1:-1][None], edges[2:][None]
    weights = torch.clamp(torch.minimum((spec_mel - lower) / (center - lower), (upper - spec_mel) / (upper - center)), min=0)
    # the DC bin gets no weight, as in TF
    return F.pad(weights, (0, 0, 1, 0)).float()


class LogMelSpectrogram(nn.Module):
    """The spectrogram the official SpT path intends (`data/processing.py`), working.

    STFT (Hann window 2048, hop 1024, end-padded) -> magnitude -> 80 mel bins in [80, 7600] Hz ->
    log(1 + 1e4 * mel) -> per-sample min-max scaling to [0, 1]. 153,600 samples at 48 kHz -> `[150, 80]`.
    The official code calls the removed TF1 `tf.log` here and cannot run; this is our working version.
    """

    def __init__(self, sample_rate: int = 48000, frame_length: int = 2048, frame_step: int = 1024,
                 num_mel_bins: int = 80, lower_hz: float = 80.0, upper_hz: float = 7600.0):
        super().__init__()
        self.frame_length, self.frame_step = frame_length, frame_step
        self.register_buffer("window", torch.hann_window(frame_length, periodic=True), persistent=False)
        self.register_buffer("mel", mel_filterbank(frame_length // 2 + 1, num_mel_bins, sample_rate, lower_hz, upper_hz),
                             persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """`[B, N]` waveform -> `[B, frames, mel]` with frames = ceil(N / hop)."""
        n = audio.shape[-1]
        frames = math.ceil(n / self.frame_step)
        # pad_end: pad so that `frames` full windows fit
        pad = max(0, (frames - 1) * self.frame_step + self.frame_length - n)
        x = F.pad(audio.float(), (0, pad)).unfold(-1, self.frame_length, self.frame_step)[:, :frames]
        spec = torch.fft.rfft(x * self.window, dim=-1).abs()  # [B, frames, bins]
        logmel = torch.log1p(1e4 * spec @ self.mel)
        lo = logmel.amin(dim=(1, 2), keepdim=True)
        hi = logmel.amax(dim=(1, 2), keepdim=True)
        return (logmel - lo) / (hi - lo).clamp_min(1e-12)


class SpectrogramPatchEmbedding(nn.Module):
    """SpT: log-mel `[B, 150, 80]` -> Conv2D patches 16 (time) x 5 (mel) -> `[B, 9, 16, D]`."""

    def __init__(self, d_model: int, temporal_patch_size: int = 16, spectral_patch_size: int = 5,
                 sample_rate: int = 48000):
        super().__init__()
        self.spectrogram = LogMelSpectrogram(sample_rate=sample_rate)
        self.patch = (temporal_patch_size, spectral_patch_size)
        self.proj = nn.Conv2d(1, d_model, kernel_size=self.patch, stride=self.patch)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.dim() == 3 and audio.shape[-1] == 1:
            audio = audio[..., 0]
        check_shape("audio", audio, "[B, N] or [B, N, 1] (mono waveform)", audio.dim() == 2)
        spec = self.spectrogram(audio)[:, None]  # [B, 1, frames, mel]
        return self.proj(spec.to(self.proj.weight.dtype)).permute(0, 2, 3, 1)


class WordEmbedding(nn.Module):
    """Word-id lookup into a (by default frozen) word2vec table: `[B, n]` ids -> `[B, n, 300]`."""

    def __init__(self, vocab_size: int, d_embedding: int, trainable: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, d_embedding), requires_grad=trainable)
        nn.init.uniform_(self.weight, -0.05, 0.05)  # Keras `Embedding`'s default, until word2vec replaces it

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_shape("text", ids, "[B, n_words] integer word ids (pad id 0)",
                    ids.dim() == 2 and not torch.is_floating_point(ids))
        # The range check reads the ids back (a device sync); under torch.compile it would also break the graph,
        # so compiled models skip it (an id out of range then fails inside the embedding lookup itself).
        if ids.numel() and not torch.compiler.is_compiling() and (
                int(ids.min()) < 0 or int(ids.max()) >= self.weight.shape[0]):
            raise ValueError(f"text: word ids must be in [0, {self.weight.shape[0]}), got range "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return F.embedding(ids, self.weight)
