import pytest
import torch

from recursivemas.config import ConfigError

from recursivemas import InnerLink, LatentMASLink, OuterLink
from recursivemas.links import load_release_state_dict
from recursivemas.tiny import build_tiny_model, build_tokenizer


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("kind", ["ln_res", "res", "linear"])
def test_link_shapes_and_parameter_counts(kind):
    inner, outer = InnerLink(48, kind), OuterLink(48, 32, kind)
    assert inner(torch.randn(2, 5, 48)).shape == (2, 5, 48)
    assert outer(torch.randn(2, 5, 48)).shape == (2, 5, 32)
    assert n_params(inner) == InnerLink.num_params_formula(48, kind)
    assert n_params(outer) == OuterLink.num_params_formula(48, 32, kind)


def test_spec_parameter_counts_at_paper_sizes():
    # docs/method.md#links: inner 2d^2+6d (d=2048: 8.40M); outer 3ab+2b^2+2a+6b (2048->1536: 14.17M)
    assert InnerLink.num_params_formula(2048) == 8_400_896
    assert round(OuterLink.num_params_formula(2048, 1536) / 1e6, 2) == 14.17
    assert n_params(InnerLink(256)) == 2 * 256 * 256 + 6 * 256


def test_release_parameter_names():
    assert set(InnerLink(8).state_dict()) == {f"{m}.{p}" for m in ("proj1", "proj2", "pre_ln", "post_ln") for p in ("weight", "bias")}
    names = ("proj1", "proj2", "ln_source", "ln_target", "residual_proj")
    assert set(OuterLink(8, 4).state_dict()) == {f"{m}.{p}" for m in names for p in ("weight", "bias")}


def test_equations_match_spec():
    torch.manual_seed(0)
    link, x = InnerLink(16), torch.randn(3, 16)
    ref = link.post_ln(x + link.proj2(torch.nn.functional.gelu(link.proj1(link.pre_ln(x)))))
    torch.testing.assert_close(link(x), ref)
    out = OuterLink(16, 8)
    ref = out.ln_target(out.proj2(torch.nn.functional.gelu(out.proj1(out.ln_source(x)))) + out.residual_proj(x))
    torch.testing.assert_close(out(x), ref)


def test_release_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    src = OuterLink(16, 8)
    path = tmp_path / "outer.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = OuterLink(16, 8)
    dst.load_state_dict(load_release_state_dict(path))
    x = torch.randn(4, 16)
    torch.testing.assert_close(dst(x), src(x))


def test_release_loader_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"obj": object()}, path)
    with pytest.raises(ConfigError, match="cannot be read as plain tensors"):
        load_release_state_dict(path)


def test_ridge_init_recovers_affine_map():
    torch.manual_seed(0)
    w, b = torch.randn(12, 6), torch.randn(6)
    source = torch.randn(500, 12)
    target = source @ w + b
    link = OuterLink(12, 6, kind="res").ridge_init_(source, target, lam=1e-6)
    torch.testing.assert_close(link(source), target, atol=1e-3, rtol=1e-3)


def test_latentmas_link_maps_to_embedding_norm():
    tok = build_tokenizer()
    model = build_tiny_model("llama", tok, hidden_size=32)
    link = LatentMASLink.from_model(model)
    emb = model.get_input_embeddings().weight
    out = link(torch.randn(5, 32))
    assert out.shape == (5, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((5,), emb.norm(dim=-1).mean().item()), rtol=1e-4, atol=1e-4)


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown link kind 'mlp'"):
        InnerLink(8, kind="mlp")


def test_saved_links_are_byte_identical_on_every_save(tmp_path):
    """Same tensors, same file: reruns of link training can be compared by SHA-256."""
    from recursivemas.config import EdgeConfig
    from recursivemas.linkset import LinkSet

    torch.manual_seed(0)
    links = LinkSet({"a": 16, "b": 24}, [EdgeConfig("a", "b", "S")])
    blobs = set()
    for i in range(12):  # several keys of metadata would come out in hash-map order, differing between saves
        links.save(tmp_path / f"links{i}.safetensors")
        blobs.add((tmp_path / f"links{i}.safetensors").read_bytes())
    assert len(blobs) == 1


def test_saved_links_are_readable_as_the_umask_allows(tmp_path):
    """safetensors' save_file makes owner-only (0600) files; a links file must be readable by whoever serves it."""
    import os
    import stat

    from recursivemas.config import EdgeConfig
    from recursivemas.linkset import LinkSet

    old = os.umask(0o022)
    try:
        LinkSet({"a": 8, "b": 8}, [EdgeConfig("a", "b", "S")]).save(tmp_path / "links.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "links.safetensors").stat().st_mode) == 0o644
