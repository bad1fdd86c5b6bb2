"""Reading Wan DiT checkpoints: layouts, formats, Self-Forcing variants, fp8, errors, size, pairing."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from sdvg_core.errors import CheckpointError, IncompatibleModelsError, MissingFileError
from sdvg_core.wan import CausalWanModel, WanConfig, check_compatible, infer_config, load_wan, read_wan_state_dict
from wan_fixtures import latents, random_wan, rel_err, state_dict_of, text_embedding, tiny_config, write_checkpoint

PREFIXES = ["", "model.", "model.diffusion_model.", "model._fsdp_wrapped_module."]
FP8 = torch.float8_e4m3fn


def run(model, seed=1, t=625.0):
    x = latents(1, 3, seed=seed, cfg=model.cfg)
    return model(x, torch.full((1, 3), t), model.encode_text(text_embedding(1, cfg=model.cfg)))


@pytest.fixture(scope="module")
def source():
    model = random_wan(tiny_config(num_layers=3), seed=11)
    return model, run(model)


# ----------------------------------------------------------------------------- layouts and formats


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("prefix", PREFIXES)
def test_every_key_layout_loads_to_identical_outputs(source, tmp_path, prefix, suffix):
    model, want = source
    path = tmp_path / f"dit{suffix}"
    write_checkpoint(state_dict_of(model, prefix), path)
    loaded = load_wan(path)
    assert loaded.cfg == model.cfg
    assert set(read_wan_state_dict(path)) == set(model.state_dict())
    torch.testing.assert_close(run(loaded), want, rtol=0, atol=0)


def test_self_forcing_dict_selects_ema_or_plain(tmp_path):
    plain, ema = random_wan(seed=21), random_wan(seed=22)
    path = tmp_path / "self_forcing_dmd.pt"
    torch.save({"generator": state_dict_of(plain, "model."), "generator_ema": state_dict_of(ema, "model.")}, path)

    want_plain, want_ema = run(plain), run(ema)
    assert rel_err(want_plain, want_ema) > 1e-2  # the two weight sets really differ
    for variant in ("ema", "generator_ema"):
        torch.testing.assert_close(run(load_wan(path, variant=variant)), want_ema, rtol=0, atol=0)
    for variant in ("plain", "generator"):
        torch.testing.assert_close(run(load_wan(path, variant=variant)), want_plain, rtol=0, atol=0)
    torch.testing.assert_close(run(load_wan(path)), want_ema, rtol=0, atol=0)  # ema by default


def test_missing_variant_lists_what_is_present(tmp_path):
    path = tmp_path / "only_plain.pt"
    torch.save({"generator": state_dict_of(random_wan(seed=23), "model.")}, path)
    with pytest.raises(CheckpointError) as err:
        load_wan(path, variant="ema")
    assert "only_plain.pt" in str(err.value) and "generator_ema" in str(err.value) and "['generator']" in str(err.value)


def test_bf16_load_casts_weights_and_compute(source, tmp_path):
    model, want = source
    path = tmp_path / "dit.safetensors"
    write_checkpoint(state_dict_of(model), path)
    loaded = load_wan(path, dtype=torch.bfloat16)
    assert loaded.compute_dtype == torch.bfloat16
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in loaded.parameters())
    assert rel_err(run(loaded), want) < 3e-2


# ----------------------------------------------------------------------------- fp8


def fp8_state_dict(model: CausalWanModel, scaled: bool, scale_name: str = "scale_weight"):
    """ComfyUI-style fp8 file: every Linear weight in the blocks stored as float8_e4m3fn,
    with a per-tensor scale (amax / 448) when `scaled`; everything else bf16."""
    sd, dequantised = {}, {}
    for key, value in state_dict_of(model).items():
        if key.startswith("blocks.") and key.endswith(".weight") and value.ndim == 2:
            scale = value.abs().max().float() / torch.finfo(FP8).max if scaled else torch.tensor(1.0)
            q = (value / scale).to(FP8)
            sd[key] = q
            if scaled:
                sd[key[: -len("weight")] + scale_name] = scale
            dequantised[key] = q.float() * scale
        else:
            sd[key] = value.to(torch.bfloat16)
            dequantised[key] = sd[key].float()
    return sd, dequantised


# Measured on tiny random models (seeds 11-14, 3 layers): fp8 block weights (3 mantissa bits)
# against the float32 source give 1.4e-2 .. 2.5e-2 relative error, scaled or not. 0.05 leaves
# room across seeds and still catches a missing or misapplied scale (error ~1 or more).
FP8_VS_SOURCE_TOL = 0.05


@pytest.mark.parametrize("scaled", [False, True])
def test_fp8_checkpoint_stays_fp8_and_runs(source, tmp_path, scaled):
    model, _ = source
    sd, dequantised = fp8_state_dict(model, scaled)
    comfy = {"model.diffusion_model." + k: v for k, v in sd.items()}
    comfy["model.diffusion_model.scaled_fp8"] = torch.zeros(0, dtype=FP8)  # ComfyUI's format marker
    path = tmp_path / "dit_fp8.safetensors"
    write_checkpoint(comfy, path)

    loaded = load_wan(path, dtype=torch.float32)
    q = loaded.blocks[0].self_attn.q
    assert q.weight.dtype == FP8 and loaded.blocks[1].ffn[2].weight.dtype == FP8
    assert (q.scale_weight is not None) == scaled
    assert loaded.text_embedding[0].weight.dtype == torch.float32
    got = run(loaded)
    assert q.weight.dtype == FP8  # running did not upcast the stored weights

    # Independent reference: a float32 model holding the dequantised weights (w_fp8 * scale).
    reference = CausalWanModel(model.cfg).eval()
    reference.load_state_dict(dequantised)
    assert rel_err(got, run(reference)) < 1e-6
    assert rel_err(got, run(model)) < FP8_VS_SOURCE_TOL


def test_fp8_newer_weight_scale_name_is_the_same_scale(source, tmp_path):
    """ComfyUI's newer quantised layout: weight_scale, and a .comfy_quant marker per fp8 layer."""
    model, _ = source
    old, _ = fp8_state_dict(model, scaled=True)
    new, _ = fp8_state_dict(model, scaled=True, scale_name="weight_scale")
    marker = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)
    new.update({k[: -len("weight_scale")] + "comfy_quant": marker.clone() for k in list(new) if k.endswith("weight_scale")})
    write_checkpoint(old, tmp_path / "old.safetensors")
    write_checkpoint(new, tmp_path / "new.safetensors")
    torch.testing.assert_close(run(load_wan(tmp_path / "new.safetensors")), run(load_wan(tmp_path / "old.safetensors")),
                               rtol=0, atol=0)


def test_fp8_non_linear_weight_is_dequantised_at_load(source, tmp_path):
    model, _ = source
    sd = state_dict_of(model)
    sd["patch_embedding.weight"] = sd["patch_embedding.weight"].to(FP8)
    write_checkpoint(sd, tmp_path / "dit.safetensors")
    loaded = load_wan(tmp_path / "dit.safetensors")
    assert loaded.patch_embedding.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.patch_embedding.weight, sd["patch_embedding.weight"].float(), rtol=0, atol=0)


def test_unsupported_comfy_quant_format_is_refused(source, tmp_path):
    model, _ = source
    sd = state_dict_of(model)
    sd["blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    write_checkpoint(sd, tmp_path / "dit_nvfp4.safetensors")
    with pytest.raises(CheckpointError, match="dit_nvfp4.safetensors.*nvfp4"):
        load_wan(tmp_path / "dit_nvfp4.safetensors")


# ----------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_names_file_and_problem(source, tmp_path, suffix):
    model, _ = source
    path = tmp_path / f"cut{suffix}"
    write_checkpoint(state_dict_of(model), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_wan(path)
    message = str(err.value)
    assert str(path) in message and "truncated" in message and "download it again" in message


def test_vae_given_as_dit(tmp_path):
    # Wan 2.1 VAE, original layout (a handful of its real key names).
    vae = {"encoder.conv1.weight": torch.zeros(96, 3, 3, 3, 3), "encoder.downsamples.0.residual.0.gamma": torch.zeros(96, 1, 1, 1),
           "conv1.weight": torch.zeros(32, 32, 1, 1, 1), "conv2.weight": torch.zeros(16, 16, 1, 1, 1),
           "decoder.conv1.weight": torch.zeros(384, 16, 3, 3, 3)}
    path = tmp_path / "wan_2.1_vae.safetensors"
    write_checkpoint(vae, path)
    with pytest.raises(CheckpointError) as err:
        load_wan(path)
    assert "wan_2.1_vae.safetensors" in str(err.value) and "VAE" in str(err.value) and "not a Wan DiT" in str(err.value)


def test_missing_block_is_named(source, tmp_path):
    model, _ = source
    sd = {k: v for k, v in state_dict_of(model, "model.").items() if not k.startswith("model.blocks.1.")}
    path = tmp_path / "holey.safetensors"
    write_checkpoint(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_wan(path)
    assert "holey.safetensors" in str(err.value) and "block(s) [1] are missing" in str(err.value)


def test_missing_and_unexpected_keys_are_listed(source, tmp_path):
    model, _ = source
    sd = state_dict_of(model)
    del sd["blocks.2.cross_attn.norm_k.weight"]
    sd["blocks.0.img_emb.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pt"
    write_checkpoint(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_wan(path)
    message = str(err.value)
    assert "odd.pt" in message and "blocks.2.cross_attn.norm_k.weight" in message and "blocks.0.img_emb.weight" in message


def test_missing_path(tmp_path):
    path = tmp_path / "nowhere" / "krea-realtime-video-14b.safetensors"
    with pytest.raises(MissingFileError) as err:
        load_wan(path)
    assert str(path) in str(err.value) and "does not exist" in str(err.value)


# ----------------------------------------------------------------------------- size inference


@pytest.mark.parametrize("prefix", ["", "model."])
@pytest.mark.parametrize("preset", [WanConfig.wan_1_3b, WanConfig.wan_14b])
def test_infer_config_on_real_shapes_without_memory(preset, prefix):
    cfg = preset()
    with torch.device("meta"):
        sd = {prefix + k: v for k, v in CausalWanModel(cfg).state_dict().items()}
    assert all(t.is_meta for t in sd.values())
    assert infer_config(sd, source="real.safetensors") == cfg


def test_unknown_prefix_is_named(source, tmp_path):
    model, _ = source
    path = tmp_path / "wrapped.pt"
    write_checkpoint(state_dict_of(model, "module.net."), path)
    with pytest.raises(CheckpointError, match="wrapped.pt.*unrecognised prefix 'module.net.'"):
        load_wan(path)


def test_infer_config_refuses_real_model_with_too_few_blocks():
    with torch.device("meta"):
        sd = CausalWanModel(WanConfig.wan_1_3b()).state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith("blocks.29.")}
    with pytest.raises(CheckpointError, match="cut.safetensors.*29 transformer blocks.*1.3B has 30"):
        infer_config(sd, source="cut.safetensors")


def test_infer_config_head_count_rules():
    with torch.device("meta"):
        sd = CausalWanModel(WanConfig.tiny(dim=96, num_heads=2)).state_dict()
    assert infer_config(sd).num_heads == 3  # tiny convention: head_dim 32
    assert infer_config(sd, num_heads=2).num_heads == 2  # explicit wins


# ----------------------------------------------------------------------------- pairing


def test_check_compatible():
    drafter = CausalWanModel(tiny_config())
    check_compatible(drafter, CausalWanModel(tiny_config(dim=128, ffn_dim=256, num_layers=3)))
    cases = {
        "text_dim": tiny_config(text_dim=48),
        "head_dim": tiny_config(num_heads=1),
        "in_dim": tiny_config(in_dim=8),
    }
    for field, target_cfg in cases.items():
        with pytest.raises(IncompatibleModelsError) as err:
            check_compatible(drafter, CausalWanModel(target_cfg))
        a, b = getattr(drafter.cfg, field), getattr(target_cfg, field)
        assert f"{field}: drafter {a}, target {b}" in str(err.value)
