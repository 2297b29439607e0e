"""Model configs as plain dataclasses, with the official sizes as named presets.

Defaults reproduce the official TF2 code (`vatt/configs/*.py`); every deviation is a named option that is
off by default. A config round-trips through `to_dict` / `config_from_dict` (that is what `config.json`
next to `model.safetensors` holds).
"""
from __future__ import annotations

import dataclasses
import difflib
import types
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


@dataclass
class TransformerConfig:
    """A pre-norm Transformer encoder (`common/transformers.py`)."""

    d_model: int = 768
    num_layers: int = 12
    num_heads: int = 12
    d_ff: int = 3072
    d_kv: int = 64  # per-head width; the official code keeps 64 for every size
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-6  # Keras LayerNorm epsilon (torch's default is 1e-5)
    use_bias: bool = True  # False for SpT

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_layers", "num_heads", "d_ff", "d_kv")


@dataclass
class DropTokenConfig:
    """DropToken (`_random_patch_selection`): keep a random subset of video/audio tokens in training."""

    enabled: bool = True
    # Fraction of tokens KEPT (the official `patch_sampling_rate`). The kept count is
    # int(keep_rate * number of tokens of the maximal bucket grid), not of the actual input.
    keep_rate: float = 0.5
    # "shared": one permutation for the whole batch (official); "per_sample": each clip its own.
    mode: Literal["shared", "per_sample"] = "shared"

    def __post_init__(self) -> None:
        if not 0.0 < self.keep_rate <= 1.0:
            raise ValueError(f"droptoken.keep_rate must be in (0, 1] (the fraction of tokens kept), got {self.keep_rate}")
        if self.mode not in ("shared", "per_sample"):
            raise ValueError(f"droptoken.mode must be 'shared' or 'per_sample', got {self.mode!r}")


@dataclass
class VideoConfig:
    """ViT over raw RGB voxels (`backbones/video/vitx3d.py`)."""

    name: str = "vit_base"
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    temporal_patch_size: int = 4
    spatial_patch_size: int = 16
    # Positional tables: 32 frames x 224^2 -> 8 x 14 x 14 buckets.
    max_temporal_buckets: int = 8
    max_vertical_buckets: int = 14
    max_horizontal_buckets: int = 14
    droptoken: DropTokenConfig = field(default_factory=DropTokenConfig)
    # Dropout on (patch + positional code). The official code builds its positional layer without a rate, so
    # it is 0.1 whatever transformer.dropout_rate says.
    pos_dropout_rate: float = 0.1
    # Dense(d, gelu) after the voxel projection / after the encoder: only when fine-tuning a UT model.
    pre_projection: bool = False
    post_projection: bool = False
    d_post_proj: int = 1024


@dataclass
class AudioConfig:
    """WaT over the raw waveform (`audio/autx1d.py`) or SpT over a log-mel spectrogram (`audio/autx2d.py`)."""

    name: str = "wat_base"
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    input: Literal["waveform", "spectrogram"] = "waveform"
    # waveform: Conv1D(kernel=stride=128): 153,600 samples -> 1200 tokens
    temporal_patch_size: int = 128
    max_temporal_buckets: int = 1200
    # spectrogram (SpT): 16 (time) x 5 (mel) patches of a [150, 80] log-mel -> 9 x 16 tokens
    spectral_patch_size: int = 5
    max_spectral_buckets: int = 16
    sample_rate: int = 48000
    droptoken: DropTokenConfig = field(default_factory=DropTokenConfig)
    pos_dropout_rate: float = 0.1  # fixed at 0.1 in the official code, as for video
    pre_projection: bool = False
    post_projection: bool = False
    d_post_proj: int = 1024


@dataclass
class TextConfig:
    """Text backbone: T5-Small encoder (official tx_fac), BERT-style, or the linear MMV model."""

    name: str = "t5_small"
    kind: Literal["t5", "bert", "linear"] = "t5"
    # T5-Small; no biases (the BERT-style model has them: see `bert_small`)
    transformer: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(d_model=512, num_layers=6, num_heads=8, d_ff=2048, use_bias=False)
    )
    vocab_size: int = 2**16
    d_embedding: int = 300  # frozen word2vec
    trainable_embeddings: bool = False
    max_words: int = 16
    num_relative_buckets: int = 32
    max_relative_distance: int = 64  # official T5 value; HF T5 uses 128
    d_linear: int = 2048  # width of the linear (MMV) text model

    def __post_init__(self) -> None:
        if self.kind == "t5" and self.transformer.use_bias:
            raise ValueError("text.transformer.use_bias=true: the T5 encoder has no bias terms (official t5.py); "
                             "set it to false, or use text.kind=bert for a Transformer with biases")


@dataclass
class FACHeadConfig:
    """Fine-and-coarse common spaces (`heads/bridge.py:FACHead`)."""

    d_va: int = 512
    d_vt: int = 256
    bn_momentum: float = 0.1  # torch convention; equals Keras momentum 0.9
    bn_eps: float = 1e-5


@dataclass
class VATTConfig:
    """Modality-specific backbones + FAC head (official `tx_fac`)."""

    kind: Literal["tx_fac"] = "tx_fac"
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: FACHeadConfig = field(default_factory=FACHeadConfig)


@dataclass
class UnifiedConfig:
    """One Transformer shared by all modalities + FAC head (official `ut_fac`, `unified/uvatt.py`)."""

    kind: Literal["ut_fac"] = "ut_fac"
    name: str = "ut_medium"
    transformer: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(d_model=1024, num_layers=12, num_heads=16, d_ff=4096)
    )
    video_temporal_patch_size: int = 4
    video_spatial_patch_size: int = 16
    max_video_temporal_buckets: int = 8
    max_video_spatial_buckets: int = 14  # shared by height and width
    audio_temporal_patch_size: int = 128
    max_audio_temporal_buckets: int = 1200
    max_text_temporal_buckets: int = 16
    vocab_size: int = 2**16
    d_embedding: int = 300
    trainable_embeddings: bool = False
    d_post_proj: int = 1024
    droptoken: DropTokenConfig = field(default_factory=DropTokenConfig)
    pos_dropout_rate: float = 0.1  # fixed at 0.1 in the official code (`uvatt.py`), as for ViT / WaT
    head: FACHeadConfig = field(default_factory=FACHeadConfig)


@dataclass
class ClassifierConfig:
    """A backbone + dropout + Dense(C) classifier for fine-tuning (`backbones/*/factory.py`)."""

    kind: Literal["video_classifier", "audio_classifier"] = "video_classifier"
    video: VideoConfig | None = None
    audio: AudioConfig | None = None
    num_classes: int = 400
    classifier_dropout: float = 0.5  # video 0.5, audio 0.0, UT 0.2
    # "softmax" for single-label, "sigmoid" for multi-label (AudioSet)
    output: Literal["softmax", "sigmoid"] = "softmax"

    def __post_init__(self) -> None:
        if self.kind == "video_classifier" and self.video is None:
            self.video = VideoConfig()
        if self.kind == "audio_classifier" and self.audio is None:
            self.audio = AudioConfig()
        _positive(self, "num_classes")


ModelConfig = Union[VATTConfig, UnifiedConfig, ClassifierConfig]
_KINDS: dict[str, type] = {
    "tx_fac": VATTConfig,
    "ut_fac": UnifiedConfig,
    "video_classifier": ClassifierConfig,
    "audio_classifier": ClassifierConfig,
}


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{type(cfg).__name__}.{n} must be a positive integer, got {v!r}")


# ---------------------------------------------------------------------------------------------------
# Official sizes (`configs/video.py`, `audio.py`, `text.py`, `unified.py`)
# ---------------------------------------------------------------------------------------------------
SIZES: dict[str, dict[str, int]] = {
    "small": dict(d_model=512, num_layers=6, num_heads=8, d_ff=2048),
    "base": dict(d_model=768, num_layers=12, num_heads=12, d_ff=3072),
    "medium": dict(d_model=1024, num_layers=12, num_heads=16, d_ff=4096),
    "large": dict(d_model=1024, num_layers=24, num_heads=16, d_ff=4096),
    # tests and CPU demos: not an official size
    "tiny": dict(d_model=64, num_layers=2, num_heads=4, d_ff=128, d_kv=16),
}


def transformer(size: str, **overrides: Any) -> TransformerConfig:
    return TransformerConfig(**{**SIZES[size], **overrides})


def vit(size: str) -> VideoConfig:
    return VideoConfig(name=f"vit_{size}", transformer=transformer(size))


def wat(size: str) -> AudioConfig:
    return AudioConfig(name=f"wat_{size}", transformer=transformer(size))


def spt(size: str) -> AudioConfig:
    # SpT: no biases in the Transformer and no DropToken (`configs/audio.py`).
    return AudioConfig(
        name=f"spt_{size}",
        input="spectrogram",
        transformer=transformer(size, use_bias=False),
        temporal_patch_size=16,
        max_temporal_buckets=9,
        droptoken=DropTokenConfig(enabled=False),
    )


def t5_small() -> TextConfig:
    return TextConfig()


def bert_small() -> TextConfig:
    return TextConfig(name="bert_small", kind="bert", transformer=transformer("small", use_bias=True))


def linear_text() -> TextConfig:
    return TextConfig(name="linear", kind="linear")


def _tiny_video() -> VideoConfig:
    # 8 frames of 64x64 -> 2 x 4 x 4 tokens: small enough to train on a laptop CPU in minutes.
    return VideoConfig(
        name="vit_tiny", transformer=transformer("tiny"),
        max_temporal_buckets=2, max_vertical_buckets=4, max_horizontal_buckets=4,
    )


def _tiny_audio() -> AudioConfig:
    # 3.2 s at 8 kHz = 25,600 samples -> with 128-sample patches, 200 tokens.
    return AudioConfig(name="wat_tiny", transformer=transformer("tiny"), max_temporal_buckets=200, sample_rate=8000)


def _tiny_text() -> TextConfig:
    return TextConfig(name="t5_tiny", transformer=transformer("tiny", use_bias=False), vocab_size=1024, d_embedding=32,
                      trainable_embeddings=True)


def _tx_fac(video: VideoConfig, audio: AudioConfig, text: TextConfig) -> VATTConfig:
    return VATTConfig(video=video, audio=audio, text=text)


PRESETS: dict[str, Any] = {
    # backbones on their own (as used inside the assemblies)
    "vit_base": lambda: vit("base"),
    "vit_medium": lambda: vit("medium"),
    "vit_large": lambda: vit("large"),
    "wat_base": lambda: wat("base"),
    "wat_medium": lambda: wat("medium"),
    "spt_base": lambda: spt("base"),
    "spt_medium": lambda: spt("medium"),
    "t5_small": t5_small,
    "bert_small": bert_small,
    "linear_text": linear_text,
    # assemblies: the released checkpoints
    "tx_fac_bbs": lambda: _tx_fac(vit("base"), wat("base"), t5_small()),
    "tx_fac_mbs": lambda: _tx_fac(vit("medium"), wat("base"), t5_small()),
    "tx_fac_lbs": lambda: _tx_fac(vit("large"), wat("base"), t5_small()),
    "ut_fac_medium": UnifiedConfig,
    # fine-tuning classifiers (Kinetics-400 / AudioSet heads by default)
    "vit_base_classifier": lambda: ClassifierConfig(video=vit("base"), num_classes=400),
    "vit_medium_classifier": lambda: ClassifierConfig(video=vit("medium"), num_classes=400),
    "vit_large_classifier": lambda: ClassifierConfig(video=vit("large"), num_classes=400),
    # ViT fine-tuned from the modality-agnostic Medium checkpoint: pre/post projections, dropout 0.2
    "vit_medium_from_ut_classifier": lambda: ClassifierConfig(
        video=dataclasses.replace(vit("medium"), pre_projection=True, post_projection=True),
        num_classes=400, classifier_dropout=0.2,
    ),
    "wat_base_classifier": lambda: ClassifierConfig(
        kind="audio_classifier", audio=wat("base"), num_classes=527, classifier_dropout=0.0, output="sigmoid"
    ),
    "wat_medium_classifier": lambda: ClassifierConfig(
        kind="audio_classifier", audio=wat("medium"), num_classes=527, classifier_dropout=0.0, output="sigmoid"
    ),
    # tiny: tests and CPU demos
    "tiny": lambda: _tx_fac(_tiny_video(), _tiny_audio(), _tiny_text()),
    "tx_fac_tiny": lambda: _tx_fac(_tiny_video(), _tiny_audio(), _tiny_text()),
    "ut_fac_tiny": lambda: UnifiedConfig(
        name="ut_tiny", transformer=transformer("tiny"), max_video_temporal_buckets=2, max_video_spatial_buckets=4,
        max_audio_temporal_buckets=200, vocab_size=1024, d_embedding=32, d_post_proj=64,
        trainable_embeddings=True,
    ),
    "vit_tiny_classifier": lambda: ClassifierConfig(video=_tiny_video(), num_classes=10),
    "wat_tiny_classifier": lambda: ClassifierConfig(
        kind="audio_classifier", audio=_tiny_audio(), num_classes=10, classifier_dropout=0.0
    ),
}


def get_preset(name: str) -> Any:
    """A fresh config for a named preset (see `PRESETS`)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown preset {name!r}.{hint} Known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------------
# The input specification: what one window of a file becomes for a model
# ---------------------------------------------------------------------------------------------------
# The frame rate every command samples at unless told otherwise: the official pre-training rate (`REF_FPS`),
# the rate the models were trained at. (The official evaluation loaders take every 2nd frame of 25 fps
# sources, 12.5 fps; pass fps=12.5 for that.)
DEFAULT_FPS = 10.0


@dataclass(frozen=True)
class InputSpec:
    """What one window of a file becomes: frames, frame size, audio samples and rates.

    `None` for a modality the model does not have.
    """

    num_frames: int | None
    size: int | None
    fps: float
    audio_samples: int | None
    sample_rate: int | None

    @property
    def video_seconds(self) -> float | None:
        return None if self.num_frames is None else self.num_frames / self.fps

    @property
    def audio_seconds(self) -> float | None:
        return None if self.audio_samples is None else self.audio_samples / self.sample_rate


def _video_input(cfg: VideoConfig) -> tuple[int, int]:
    return (cfg.max_temporal_buckets * cfg.temporal_patch_size,
            cfg.max_vertical_buckets * cfg.spatial_patch_size)


def _audio_input(cfg: AudioConfig) -> tuple[int, int]:
    if cfg.input == "waveform":
        return cfg.max_temporal_buckets * cfg.temporal_patch_size, cfg.sample_rate
    # SpT: the official 3.2 s of waveform, turned into a spectrogram inside the model.
    return int(round(3.2 * cfg.sample_rate)), cfg.sample_rate


def input_spec(model_or_config: Any, fps: float | None = None, *, num_frames: int = 0, size: int = 0,
               audio_samples: int = 0, sample_rate: int = 0) -> InputSpec:
    """The input sizes a model (or model config) was made for: its positional tables' extent, sampled at
    `fps` (None: `DEFAULT_FPS`). The one place that says what a window of a file becomes.

    A non-zero `num_frames` / `size` / `audio_samples` / `sample_rate` replaces the model's (the data
    sections of the training configs, where 0 means "what the model was made for")."""
    cfg = getattr(model_or_config, "config", model_or_config)
    kind = getattr(cfg, "kind", None)
    frames = pixels = samples = rate = None
    if kind == "ut_fac":
        frames = cfg.max_video_temporal_buckets * cfg.video_temporal_patch_size
        pixels = cfg.max_video_spatial_buckets * cfg.video_spatial_patch_size
        samples, rate = cfg.max_audio_temporal_buckets * cfg.audio_temporal_patch_size, 48000
    elif kind in ("tx_fac", "video_classifier", "audio_classifier"):
        if getattr(cfg, "video", None) is not None:
            frames, pixels = _video_input(cfg.video)
        if getattr(cfg, "audio", None) is not None:
            samples, rate = _audio_input(cfg.audio)
    else:
        raise TypeError(f"no input sizes for a {type(cfg).__name__} (expected a VATT model or its config)")
    fps = DEFAULT_FPS if fps is None else fps
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return InputSpec(num_frames=num_frames or frames, size=size or pixels, fps=float(fps),
                     audio_samples=audio_samples or samples, sample_rate=sample_rate or rate)


# ---------------------------------------------------------------------------------------------------
# dict round-trip (config.json) and typed overrides
# ---------------------------------------------------------------------------------------------------
def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"config 'kind' must be one of {sorted(_KINDS)}, got {kind!r}")
    return dataclass_from_dict(_KINDS[kind], d)


def dataclass_from_dict(cls: type, d: dict[str, Any], path: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown or ill-typed fields fail naming the field."""
    if not isinstance(d, dict):
        raise TypeError(f"{path or cls.__name__}: expected a mapping, got {type(d).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        where = f"{path}.{key}" if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KeyError(f"unknown config field {where!r}{hint}; allowed: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(hints[key], value, where)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except (TypeError, ValueError, KeyError) as e:
                errors.append(str(e))
        raise TypeError(f"{where}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ValueError(f"{where}: must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return dataclass_from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{where}: expected a string, got {value!r}")
    if origin is dict and not isinstance(value, dict):
        raise TypeError(f"{where}: expected a mapping in YAML flow style, e.g. {where}={{split: train}} "
                        f"(quoted in a shell), got {value!r}")
    return value
