"""The engine's forward on a host's module tree (as ComfyUI's MODEL holds one).

The host tree here is built the way ComfyUI's manual-cast ops work: every leaf keeps its weight
in a storage dtype (bf16 or fp8) under a name of its own and casts it in its own call, and
asking a leaf for ``.weight`` raises. So the engine reaching any weight except through the
owning module's call (or ``modulation`` through its accessor) fails this test instead of
silently reading the wrong tensor. The reference is the engine's own model holding the same
storage-rounded weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdvg_core.errors import IncompatibleModelsError
from sdvg_core.wan import CausalWanModel, check_compatible, config_from_tree, hosted_network
from sdvg_core.wan.model import WanConv3d, WanLayerNorm, WanLinear, WanRMSNorm
from wan_fixtures import latents, random_wan, rel_err, text_embedding, tiny_config


class CastLeaf(nn.Module):
    """A leaf whose weights live in ``dtype`` as ``stored_*`` and are cast to the input per call."""

    def __init__(self, source: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.stored_weight = nn.Parameter(source.weight.detach().to(dtype), requires_grad=False)
        bias = getattr(source, "bias", None)
        self.stored_bias = None if bias is None else nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.source_type = type(source)
        self.eps = getattr(source, "eps", 1e-6)
        self.conv = (source.stride, source.padding) if isinstance(source, nn.Conv3d) else None
        self.calls = 0

    @property
    def weight(self):
        raise AttributeError("this host layer's weight is reached through its call only")

    def forward(self, x):
        self.calls += 1
        w = self.stored_weight.to(x.dtype)
        b = None if self.stored_bias is None else self.stored_bias.to(x.dtype)
        if self.source_type is WanConv3d:
            return F.conv3d(x, w, b, stride=self.conv[0], padding=self.conv[1])
        if self.source_type is WanLinear:
            return F.linear(x, w, b)
        if self.source_type is WanRMSNorm:  # ComfyUI's rms_norm: statistics in x's dtype
            return F.rms_norm(x, (x.shape[-1],), w, self.eps)
        return F.layer_norm(x, (x.shape[-1],), w, b, self.eps)


LEAVES = (WanLinear, WanConv3d, WanRMSNorm, WanLayerNorm)


def host_tree(model: CausalWanModel, dtype: torch.dtype) -> nn.Module:
    """A copy of the module tree with cast leaves, raw parameters in ``dtype``, ComfyUI's size attributes."""

    def convert(module: nn.Module) -> nn.Module:
        if isinstance(module, LEAVES):
            return CastLeaf(module, dtype)
        if isinstance(module, nn.Sequential):
            return nn.Sequential(*(convert(m) for m in module))
        if isinstance(module, nn.ModuleList):
            return nn.ModuleList(convert(m) for m in module)
        if not list(module.children()) and not list(module.parameters(recurse=False)):
            return module  # activations
        out = nn.Module()
        for name, child in module.named_children():
            setattr(out, name, convert(child))
        for name, param in module.named_parameters(recurse=False):
            setattr(out, name, nn.Parameter(param.detach().to(dtype), requires_grad=False))
        return out

    tree = convert(model)
    cfg = model.cfg
    for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "freq_dim",
                 "text_len", "patch_size", "eps"):
        setattr(tree, name, getattr(cfg, name))
    tree.model_type = "t2v"
    return tree


def rounded_copy(model: CausalWanModel, dtype: torch.dtype) -> CausalWanModel:
    """The engine's model holding the same weights rounded through ``dtype``, in float32."""
    copy = CausalWanModel(model.cfg)
    copy.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return copy.eval()


def leaves(tree: nn.Module) -> list[CastLeaf]:
    return [m for m in tree.modules() if isinstance(m, CastLeaf)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn], ids=["bf16", "fp8"])
def test_the_forward_runs_on_a_host_tree_that_casts_in_its_own_calls(dtype):
    model = random_wan(seed=3)
    tree = host_tree(model, dtype)
    hosted = hosted_network(tree, device="cpu", compute_dtype=torch.float32, layers_cast=True)
    reference = rounded_copy(model, dtype)
    assert hosted.cfg == model.cfg
    text = text_embedding(1)
    context, block = latents(1, 3, seed=4), latents(1, 3, seed=5)
    outs = {}
    for name, net in (("hosted", hosted), ("engine", reference), ("unrounded", model)):
        cache = net.new_cache(1, 6, 12)
        kv = net.encode_text(text)
        net(context, torch.zeros(1, 3), kv, cache, slot=0, rope_start=0)
        outs[name] = net(block, torch.full((1, 3), 625.0), kv, cache, slot=3, rope_start=3)
    assert rel_err(outs["hosted"], outs["engine"]) < 1e-5
    assert all(leaf.calls > 0 for leaf in leaves(tree)), "every layer was called"
    # The host's own storage was used: the output follows its rounded weights, not the originals.
    assert rel_err(outs["hosted"], outs["unrounded"]) > 100 * rel_err(outs["hosted"], outs["engine"])


def test_a_host_whose_layers_compute_in_their_weights_dtype_gets_compute_dtype_inputs():
    model = random_wan(seed=3)
    tree = host_tree(model, torch.bfloat16)
    net = hosted_network(tree, device="cpu", compute_dtype=torch.bfloat16, layers_cast=False)
    assert net.exact_dtype == torch.bfloat16
    seen = set()
    for leaf in leaves(tree):
        leaf.register_forward_pre_hook(lambda m, args: seen.add(args[0].dtype))
    x = latents(1, 3, seed=4)
    out = net(x, torch.full((1, 3), 500.0), net.encode_text(text_embedding(1)))
    assert seen == {torch.bfloat16} and out.dtype == torch.float32 and torch.isfinite(out).all()
    reference = rounded_copy(model, torch.bfloat16)
    assert rel_err(out, reference(x, torch.full((1, 3), 500.0), reference.encode_text(text_embedding(1)))) < 0.05


def test_config_comes_from_the_hosts_attributes_or_the_shapes():
    model = random_wan(tiny_config(num_layers=3), seed=1)
    tree = host_tree(model, torch.bfloat16)
    assert config_from_tree(tree) == model.cfg
    del tree.dim, tree.ffn_dim, tree.num_heads, tree.text_dim, tree.freq_dim  # now: shapes
    tree.patch_embedding = model.patch_embedding
    tree.blocks[0].ffn[0] = model.blocks[0].ffn[0]
    tree.text_embedding[0], tree.time_embedding[0] = model.text_embedding[0], model.time_embedding[0]
    got = config_from_tree(tree)
    assert (got.dim, got.ffn_dim, got.text_dim, got.freq_dim, got.num_layers) == (64, 128, 32, 256, 3)


def test_a_model_that_is_not_a_wan_t2v_dit_is_named():
    class Flux(nn.Module):
        def __init__(self):
            super().__init__()
            self.double_blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(IncompatibleModelsError, match=r"drafter: the MODEL given holds a Flux.*Load Drafter"):
        config_from_tree(Flux(), "drafter")
    tree = host_tree(random_wan(seed=0), torch.bfloat16)
    tree.model_type = "i2v"
    with pytest.raises(IncompatibleModelsError, match="'i2v'.*text-to-video"):
        config_from_tree(tree, "target")
    tree.model_type, tree.out_dim = "t2v", 48
    with pytest.raises(IncompatibleModelsError, match="48 latent channels"):
        config_from_tree(tree, "target")


def test_drafter_and_target_pairing_works_on_hosted_networks():
    drafter = hosted_network(host_tree(random_wan(seed=0), torch.bfloat16), device="cpu",
                             compute_dtype=torch.float32, layers_cast=True)
    other = random_wan(tiny_config(text_dim=48), seed=1)
    with pytest.raises(IncompatibleModelsError, match="text_dim"):
        check_compatible(drafter, other)
