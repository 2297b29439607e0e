"""Model structure: presets, parameter counts, DropToken, modality subsets, shape checks, positional resizing."""
import dataclasses
import math

import pytest
import torch

import vatt
from vatt import configs
from vatt.configs import DropTokenConfig
from vatt.model import build_model
from vatt.model.droptoken import DropToken
from vatt.model.positional import resize_table


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_every_preset_builds(name):
    cfg = configs.get_preset(name)
    with torch.device("meta"):
        if isinstance(cfg, (configs.VideoConfig, configs.AudioConfig, configs.TextConfig)):
            from vatt.model.backbones import audio_transformer, text_model, video_transformer
            builder = {configs.VideoConfig: video_transformer, configs.AudioConfig: audio_transformer,
                       configs.TextConfig: text_model}[type(cfg)]
            model = builder(cfg)
        else:
            model = build_model(cfg)
    assert trainable(model) > 0
    # and the config survives the JSON round trip of a model folder
    if not isinstance(cfg, (configs.VideoConfig, configs.AudioConfig, configs.TextConfig)):
        assert configs.config_from_dict(configs.to_dict(cfg)) == cfg


@pytest.mark.parametrize("preset,part,expected_millions", [
    ("tx_fac_bbs", "video_backbone", 87.4), ("tx_fac_mbs", "video_backbone", 154.3),
    ("tx_fac_lbs", "video_backbone", 305.5), ("tx_fac_bbs", "audio_backbone", 86.1),
    ("tx_fac_bbs", "text_backbone", 19.0),
])
def test_official_parameter_counts(preset, part, expected_millions):
    with torch.device("meta"):
        model = build_model(preset)
    assert trainable(getattr(model, part)) / 1e6 == pytest.approx(expected_millions, abs=0.05)


def test_t5_word_table_is_frozen_and_counted_apart():
    with torch.device("meta"):
        model = build_model("tx_fac_bbs")
    table = model.text_backbone.embedding.weight
    assert not table.requires_grad and tuple(table.shape) == (65536, 300)  # 19.7M frozen


def test_unknown_preset_suggests_names():
    with pytest.raises(KeyError, match="tx_fac_bbs"):
        configs.get_preset("tx_fac_bsb")


# --- DropToken ------------------------------------------------------------------------------------------
def test_droptoken_official_semantics():
    drop = DropToken(DropTokenConfig(), max_tokens=1568).train()
    assert drop.num_kept == 784  # int(0.5 * 8*14*14), from the bucket maxima
    x = torch.arange(1568.0)[None, :, None].repeat(3, 1, 2)  # token i holds value i in every clip
    y = drop(x)
    assert y.shape == (3, 784, 2)
    assert torch.equal(y[0], y[1]) and torch.equal(y[1], y[2])  # one permutation shared by the batch
    assert y[0, :, 0].unique().numel() == 784  # no token twice
    # a shorter input than the maxima keeps all its tokens, in their order (no permutation)
    short = torch.randn(2, 100, 4)
    assert torch.equal(drop(short), short)
    drop.eval()
    assert torch.equal(drop(x), x)  # eval uses every token


def test_droptoken_per_sample_and_gradients():
    drop = DropToken(DropTokenConfig(mode="per_sample"), max_tokens=64).train()
    x = torch.arange(64.0)[None, :, None].repeat(4, 1, 1).requires_grad_()
    y = drop(x)
    assert y.shape == (4, 32, 1)
    assert len({tuple(sorted(r.tolist())) for r in y[..., 0]}) > 1  # clips keep different tokens
    y.sum().backward()
    assert torch.equal(x.grad.sum(1), torch.full((4, 1), 32.0))  # kept tokens get gradient 1, dropped 0


def test_droptoken_config_is_explicit_about_keeping():
    with pytest.raises(ValueError, match="fraction of tokens kept"):
        DropTokenConfig(keep_rate=0.0)
    with pytest.raises(ValueError, match="per_sample"):
        DropTokenConfig(mode="random")


def test_droptoken_in_model_training_only():
    model = build_model("tx_fac_tiny")
    video = torch.rand(2, 8, 64, 64, 3) * 2 - 1
    model.train()
    assert model(video=video).video.features.shape == (2, 16, 64)  # 32 tokens, half kept, off the grid
    model.eval()
    assert model(video=video).video.features.shape == (2, 2, 4, 4, 64)


@pytest.mark.parametrize("preset", ["tx_fac_tiny", "ut_fac_tiny"])
def test_droptoken_leaves_short_inputs_on_their_grid(preset):
    """A clip with no more tokens than DropToken keeps (here 16 of a 32-token maximum) gives the same
    features in training as in evaluation (dropout off): nothing dropped, nothing reordered."""
    cfg = configs.get_preset(preset)
    for sub in (cfg, getattr(cfg, "video", None), getattr(cfg, "audio", None), getattr(cfg, "text", None)):
        if sub is not None and hasattr(sub, "transformer"):
            sub.transformer.dropout_rate = 0.0
        if sub is not None and hasattr(sub, "pos_dropout_rate"):
            sub.pos_dropout_rate = 0.0
    model = build_model(cfg)
    video = torch.rand(2, 4, 64, 64, 3) * 2 - 1  # 1 x 4 x 4 = 16 tokens
    with torch.no_grad():
        train = model.train()(video=video).video
        evaluated = model.eval()(video=video).video
    assert train.features.shape == (2, 1, 4, 4, 64)
    torch.testing.assert_close(train.features, evaluated.features, rtol=0, atol=1e-6)
    torch.testing.assert_close(train.features_pooled, evaluated.features_pooled, rtol=0, atol=1e-6)


def test_droptoken_disabled_by_config():
    cfg = configs.get_preset("tx_fac_tiny")
    cfg.video.droptoken.enabled = False
    model = build_model(cfg).train()
    assert model(video=torch.zeros(2, 8, 64, 64, 3)).video.features.shape == (2, 2, 4, 4, 64)


# --- modality subsets and shapes --------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tx_fac_tiny", "ut_fac_tiny"])
@pytest.mark.parametrize("subset", [("video",), ("audio",), ("text",), ("video", "audio"), ("video", "text"),
                                    ("audio", "text"), ("video", "audio", "text")])
def test_any_subset_of_modalities(preset, subset):
    model = build_model(preset).eval()
    inputs = {"video": torch.rand(2, 8, 64, 64, 3) * 2 - 1, "audio": torch.randn(2, 25600),
              "text": torch.randint(1, 1024, (2, 3, 16))}
    out = model(**{m: inputs[m] for m in subset})
    present = {"video": ["video_va", "video_vt"], "audio": ["audio_va"], "text": ["text_vt"]}
    for m in ("video", "audio", "text"):
        assert (getattr(out, m) is not None) == (m in subset)
        for key in present[m]:
            assert (getattr(out, key) is not None) == (m in subset)
    if "text" in subset:
        assert out.text_vt.shape == (6, 256) and out.text.attention_mask.shape == (6, 16)
    if "video" in subset:
        assert out.video_va.shape == (2, 512) and out.video_vt.shape == (2, 256)
        assert "video→vt" in out.embeddings()


@pytest.mark.parametrize("kwargs,match", [
    ({"video": torch.zeros(2, 8, 64, 64)}, r"video: expected shape \[B, T>=4, H>=16, W>=16, 3\].*got \(2, 8, 64, 64\)"),
    ({"video": torch.zeros(2, 2, 64, 64, 3)}, r"video: expected shape.*got \(2, 2, 64, 64, 3\)"),
    ({"audio": torch.zeros(2, 100, 2)}, r"audio: expected shape \[B, N>=128\] or \[B, N, 1\].*got \(2, 100, 2\)"),
    ({"text": torch.zeros(2, 16)}, r"text: expected shape \[B, n_words\] integer"),
    ({"text": torch.full((2, 16), 5000)}, r"word ids must be in \[0, 1024\)"),
    ({}, "at least one"),
])
def test_shape_errors_name_expected_and_actual(kwargs, match):
    model = build_model("tx_fac_tiny").eval()
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_other_resolutions_resample_positions():
    model = build_model("tx_fac_tiny").eval()
    out = model(video=torch.zeros(1, 12, 96, 32, 3))  # grid 3 x 6 x 2 against tables 2 x 4 x 4
    assert out.video.features.shape == (1, 3, 6, 2, 64)
    image = torch.zeros(1, 4, 64, 64, 3)  # an image tiled over 4 frames -> temporal table resampled to 1
    assert model(video=image).video.features.shape == (1, 1, 4, 4, 64)


def test_spline_keeps_row_zero_and_is_identity_at_same_size():
    table = torch.randn(8, 5)
    assert torch.equal(resize_table(table, 8), table)
    for n in (1, 3, 16):
        assert torch.allclose(resize_table(table, n)[0], table[0], atol=1e-5)
    # refining by 2 reproduces the original points at the even positions (the spline interpolates)
    assert torch.allclose(resize_table(table, 16)[::2], table, atol=1e-4)


def test_spectrogram_audio_model():
    cfg = configs.get_preset("tx_fac_tiny")
    cfg.audio = dataclasses.replace(configs.spt("base"), transformer=configs.transformer("tiny", use_bias=False))
    model = build_model(cfg).train()
    out = model(audio=torch.randn(2, 153600))
    assert out.audio.features.shape == (2, 9, 16, 64)  # no DropToken for SpT, even in training
    spec = model.audio_backbone.tokenizer.spectrogram(torch.randn(2, 153600))
    assert spec.shape == (2, 150, 80) and float(spec.min()) == 0.0 and float(spec.max()) == 1.0


@pytest.mark.parametrize("kind", ["t5", "bert"])
def test_text_transformers_ignore_padding_content(kind):
    """The AGG output depends on the words, not on what sits at padded positions (the attention mask)."""
    cfg = configs.get_preset("tx_fac_tiny")
    cfg.text = dataclasses.replace(cfg.text, kind=kind)
    model = build_model(cfg).eval()
    ids = torch.randint(1, 1024, (3, 16))
    ids[:, 9:] = 0  # 9 words, then padding
    text = model.text_backbone
    with torch.no_grad():
        before = text(ids).features_pooled
        text.embedding.weight[0] += 5.0  # the pad id's vector: seen only at masked positions
        torch.testing.assert_close(text(ids).features_pooled, before, rtol=0, atol=1e-5)
        other = ids.clone()
        other[:, 3] = (other[:, 3] % 1023) + 1  # another word
        assert (text(other).features_pooled - before).abs().max() > 1e-3
    assert model(text=ids).text_vt.shape == (3, 256)


def test_linear_text_model_is_relu_projection_max_over_all_positions():
    cfg = configs.get_preset("tx_fac_tiny")
    cfg.text = dataclasses.replace(cfg.text, kind="linear", d_linear=48)
    model = build_model(cfg).eval()
    ids = torch.randint(1, 1024, (3, 16))
    ids[:, 12:] = 0
    text = model.text_backbone
    with torch.no_grad():
        emb = text.embedding.weight[ids]  # [3, 16, d]
        want = torch.relu(emb @ text.proj.weight.T + text.proj.bias).amax(dim=1)
        torch.testing.assert_close(text(ids).features_pooled, want)
        text.embedding.weight[0] += 5.0  # MMV's max runs over padding too: the pad vector counts
        assert (text(ids).features_pooled - want).abs().max() > 1e-3
    assert model(text=ids).text_vt.shape == (3, 256)


def test_classifier_outputs():
    clf = build_model("wat_tiny_classifier").eval()
    out = clf(torch.randn(2, 25600, 1))
    assert out.logits.shape == (2, 10) and torch.allclose(out.probabilities.sum(-1), torch.ones(2))
    cfg = configs.get_preset("wat_base_classifier")
    assert cfg.output == "sigmoid" and cfg.classifier_dropout == 0.0
    cfg = dataclasses.replace(configs.get_preset("wat_tiny_classifier"), output="sigmoid", num_classes=527)
    clf = build_model(cfg)
    assert torch.allclose(clf.head.classification.bias, torch.full((527,), -torch.log(torch.tensor(526.0))))


def test_backward_reaches_every_trainable_parameter():
    model = build_model("tx_fac_tiny").train()
    out = model(video=torch.rand(4, 8, 64, 64, 3), audio=torch.randn(4, 25600), text=torch.randint(1, 1024, (4, 2, 16)))
    # Weighted sums: a plain sum of training-mode BatchNorm outputs does not depend on its input at all.
    g = torch.Generator().manual_seed(0)
    sum(torch.randn(y.shape, generator=g).mul(y).sum() for y in (out.video_va, out.video_vt, out.audio_va, out.text_vt)).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert dead == []


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = build_model("ut_fac_tiny").train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cfg_video = torch.rand(2, 8, 64, 64, 3)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        torch.manual_seed(1)  # same DropToken draw
        model(video=cfg_video).video_va.square().sum().backward()
        grads.append(model.unified_backbone.transformer.layers[0].attention.qkv.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_bf16_autocast_runs_and_stays_close():
    model = build_model("tx_fac_tiny").eval()
    video = torch.rand(2, 8, 64, 64, 3)
    ref = model(video=video).video_va
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(video=video).video_va
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), ref, atol=0.1, rtol=0.05)


def test_top_level_api():
    model = vatt.build_model("tx_fac_tiny")  # the factory's model, with the embedding methods of vatt.embed bound
    assert type(model) is type(build_model("tx_fac_tiny")) and model.embed_video.__self__ is model
    assert isinstance(vatt.get_preset("ut_fac_medium"), configs.UnifiedConfig)


# --- the fast CPU dropout ---------------------------------------------------------------------------------
def test_cpu_dropout_rate_scale_determinism_and_gradient():
    from vatt.model.dropout import dropout
    x = torch.ones(400_000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.1, True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003  # drop rate 0.1 (sd ~5e-4)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.9))  # inverted scaling
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1, True), y)  # torch.manual_seed governs the mask
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)
    assert torch.equal(dropout(x, 0.1, False), x)


def test_cpu_dropout_mask_does_not_depend_on_the_thread_count():
    from vatt.model.dropout import keep_mask
    before = torch.get_num_threads()
    masks = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        torch.manual_seed(5)
        masks.append(keep_mask(torch.Size([3, 1 << 19]), 0.1))
    torch.set_num_threads(before)
    assert torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("p", [0.1, 0.5 / 256, 0.5 + 0.5 / 256, 1 - 0.5 / 256])
def test_cpu_dropout_mask_drops_with_the_32_bit_probability(p):
    """The mask decides most elements on a uniform's top byte and draws 24 more bits for the 1 in 256 that
    tie with the threshold's top byte. These rates put half of that tie byte's mass on each side, so a tie
    always kept or always dropped would be off by 1/512, far beyond the ~4 standard deviations allowed."""
    from vatt.model.dropout import keep_mask
    torch.manual_seed(0)
    n = 1 << 24
    dropped = n - keep_mask(torch.Size([n]), p).sum().item()
    expected = round(p * 2**32) / 2**32
    assert abs(dropped / n - expected) < 4 * (expected * (1 - expected) / n) ** 0.5


# --- initialisation -----------------------------------------------------------------------------------------
def official_initialiser(name: str, p: torch.Tensor, d_model: int):
    """(kind, parameters) of the official (Keras) initialiser of our parameter `name`, from the official
    layer it stands for; fans as Keras computes them for that layer's kernel."""
    last = name.rsplit(".", 1)[-1]
    if name.endswith("qkv.weight"):  # three Dense kernels [d, inner]
        inner, d = p.shape[0] // 3, p.shape[1]
        return "glorot_uniform_slices", (6 / (d + inner)) ** 0.5
    if "relative_attention_bias" in name or name.endswith("embedding.weight") or "tokenizers.text" in name:
        return "uniform", 0.05  # Keras Embedding default
    if ".tables." in name:
        return "truncated_normal", p.shape[-1] ** -0.5
    if "agg_token" in name:
        return "glorot_normal", p.shape[0] ** -0.5  # std of the truncated draw
    if "norm" in name or "_bn" in name:
        return ("constant", 1.0) if last == "weight" else ("constant", 0.0)
    if last == "bias":
        return "constant", 0.0
    if p.dim() >= 2:  # Dense kernel [out, in] or Conv kernel [out, in, *receptive]
        receptive = p[0, 0].numel()
        return "glorot_uniform", (6 / (p.shape[1] * receptive + p.shape[0] * receptive)) ** 0.5
    raise AssertionError(f"no official initialiser known for {name}")


def assert_uniform(x: torch.Tensor, bound: float, what: str):
    assert float(x.abs().max()) <= bound * (1 + 1e-6), f"{what}: beyond ±{bound:.4f}"
    std, want = float(x.std()), bound / 3**0.5
    assert abs(std / want - 1) <= 4 / x.numel() ** 0.5 + 0.01, f"{what}: std {std:.4f}, official {want:.4f}"


@pytest.mark.parametrize("preset", ["tx_fac_tiny", "ut_fac_tiny", "vit_tiny_classifier", "wat_tiny_classifier"])
def test_every_parameter_starts_as_the_official_initialiser_draws(preset):
    torch.manual_seed(0)
    model = build_model(preset)
    for name, p in model.named_parameters():
        p = p.detach()
        if name.endswith("classification.bias") and model.config.output == "sigmoid":
            torch.testing.assert_close(p, torch.full_like(p, -math.log(p.numel() - 1)))  # the AudioSet prior
            continue
        kind, value = official_initialiser(name, p, 0)
        if kind == "constant":
            assert torch.equal(p, torch.full_like(p, value)), name
        elif kind == "uniform" or kind == "glorot_uniform":
            assert_uniform(p, value, name)
        elif kind == "glorot_uniform_slices":
            for i, part in enumerate(p.chunk(3, dim=0)):
                assert_uniform(part, value, f"{name} {'qkv'[i]}")
        else:  # truncated at two σ of the draw: official TruncatedNormal(σ), glorot_normal's σ/0.8796
            sigma = value if kind == "truncated_normal" else value / 0.87962566103423978
            assert float(p.abs().max()) <= 2 * sigma * (1 + 1e-6), f"{name}: beyond ±2σ"
            std, want = float(p.std()), 0.87962566103423978 * sigma
            assert abs(std / want - 1) <= 4 / p.numel() ** 0.5 + 0.01, f"{name}: std {std:.4f}, official {want:.4f}"


def test_fac_batchnorm_moving_variance_is_the_biased_batch_variance():
    """Keras (and the official SyncBatchNormalization) moves the variance towards the biased batch variance;
    torch's BatchNorm would use the unbiased one, 4/3 larger at a batch of 4."""
    model = build_model("tx_fac_tiny").train()
    bn = model.head.hidden_to_va_pre_bn
    x = torch.randn(4, bn.num_features) * 3 + 1
    with torch.no_grad():
        y = bn(x)
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean(0))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * x.var(0, unbiased=False))
    # normalised with the biased batch statistics
    torch.testing.assert_close(y, (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5), atol=1e-5, rtol=1e-5)


def test_cpu_dropout_is_the_masked_scaled_input_in_fp32_and_bf16_and_fused_add_matches():
    from vatt.model.dropout import dropout, dropout_add, keep_mask
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 50, 64, dtype=dtype, requires_grad=True)
        residual = torch.randn(3, 50, 64, requires_grad=True)
        torch.manual_seed(4)
        keep = keep_mask(x.shape, 0.1)
        reference = torch.where(keep, x * (1 / 0.9), 0.0)  # the definition: scale by 1/(1-p) in x's precision
        (grad_reference,) = torch.autograd.grad(reference.float().square().sum(), x)
        torch.manual_seed(4)
        y = dropout(x, 0.1, True)
        (grad,) = torch.autograd.grad(y.float().square().sum(), x)
        assert y.dtype == dtype and torch.equal(y, reference) and torch.equal(grad, grad_reference)
        torch.manual_seed(4)
        fused = dropout_add(x, residual, 0.1, True)
        assert torch.allclose(fused, residual + reference, atol=1e-6)
        grads = torch.autograd.grad(fused.square().sum(), (x, residual))
        assert torch.allclose(grads[1], 2 * fused) and torch.equal(grads[0] == 0, ~keep)


def test_grouped_attention_with_dropout_matches_the_unfused_computation(monkeypatch):
    import vatt.model.attention as attention
    from vatt.model.dropout import dropout
    monkeypatch.setattr(attention, "_GROUP_ELEMENTS", 3 * 37 * 37)  # groups of 3 (clip, head) blocks, last one short
    q, k, v = (torch.randn(2, 4, 37, 16, requires_grad=True) for _ in range(3))
    torch.manual_seed(6)
    reference = dropout((q @ k.transpose(-2, -1) * 0.25).softmax(-1), 0.2, True) @ v
    ref_grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
    torch.manual_seed(6)  # the same seed draws the same mask
    out = attention.dropped_attention(q, k, v, 0.2, 0.25)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    assert torch.allclose(out, reference, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(6)
        low = attention.dropped_attention(q, k, v, 0.2, 0.25)
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), reference, atol=0.05)


def test_torch_compile_traces_the_model_in_one_graph():
    # `model.compile: true` and the GPU pass compile the model: in eval mode it must be one graph (the word-id
    # range check reads ids back, so compiled models skip it); in training on CPU only the numpy dropout
    # masks stay outside the graph.
    import torch._dynamo as dynamo

    model = vatt.build_model("tx_fac_tiny").eval()
    inputs = dict(video=torch.rand(2, 8, 64, 64, 3) * 2 - 1, audio=torch.randn(2, 25600),
                  text=torch.randint(1, 100, (2, 16)))
    assert dynamo.explain(model)(**inputs).graph_break_count == 0
    train = dynamo.explain(model.train())(**inputs)
    assert train.graph_break_count > 0 and all("keep_mask" in str(b.reason) for b in train.break_reasons)
