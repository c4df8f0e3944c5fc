import pytest
import torch

from conftest import tiny_model, tokens


def test_names_follow_module_paths():
    model = tiny_model()
    names = set(model.hook_points)
    for n in ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_mid", "blocks.1.hook_resid_post",
              "blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v",
              "blocks.0.attn.hook_z", "blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out",
              "blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
              "blocks.0.hook_mlp_out", "ln_final.hook_normalized"]:
        assert n in names
    for name, hp in model.hook_points.items():
        assert hp.name == name
        assert dict(model.named_modules())[name] is hp


def test_hooks_removed_after_exception():
    model = tiny_model()
    def boom(x, hook):
        raise RuntimeError("inside hook")
    with pytest.raises(RuntimeError, match="inside hook"):
        with model.hooks([("blocks.0.hook_resid_pre", boom), (lambda n: "mlp" in n, lambda x, h: None)]):
            model(tokens())
    assert not any(hp.active for hp in model.hook_points.values())
    with pytest.raises(ZeroDivisionError):
        with model.hooks([("hook_embed", lambda x, h: x * 2)]):
            raise ZeroDivisionError
    assert not any(hp.active for hp in model.hook_points.values())
    model(tokens())  # still runs


def test_hook_edits_activation_and_nesting():
    model = tiny_model()
    t = tokens()
    base = model(t)
    zero = lambda x, h: torch.zeros_like(x)  # noqa: E731
    with model.hooks([("blocks.1.hook_mlp_out", zero)]):
        edited = model(t)
        with model.hooks([("blocks.1.hook_mlp_out", zero)]):  # nested, same fn
            assert torch.allclose(model(t), edited)
        assert model.hook_points["blocks.1.hook_mlp_out"].active
        assert torch.allclose(model(t), edited)
    assert not (edited - base).abs().max() < 1e-6
    assert torch.equal(model(t), base)


def test_run_with_cache_filters_and_matches_manual():
    model = tiny_model()
    t = tokens()
    out, cache = model.run_with_cache(t, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert torch.equal(out, model(t))
    _, one = model.run_with_cache(t, names_filter="blocks.0.hook_resid_post")
    assert torch.equal(one["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"])
    _, full = model.run_with_cache(t)
    assert len(full) == len(model.hook_points)
    # resid_post(L) = resid_mid(L) + mlp_out(L) exactly
    assert torch.allclose(full["blocks.0.hook_resid_post"],
                          full["blocks.0.hook_resid_mid"] + full["blocks.0.hook_mlp_out"])
    assert not any(hp.active for hp in model.hook_points.values())


def test_cache_keeps_graph_when_asked():
    model = tiny_model()
    _, cache = model.run_with_cache(tokens(), names_filter=["blocks.0.hook_attn_out"], detach=False)
    assert cache["blocks.0.hook_attn_out"].requires_grad


def test_unknown_hook_name_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="blocks.0.hook_resid_pre"):
        with model.hooks([("blocks.0.hook_resid_pr", lambda x, h: None)]):
            pass
    with pytest.raises(ValueError, match="no model hook point named"):
        model.run_with_cache(tokens(), names_filter="nonsense")
    _, cache = model.run_with_cache(tokens(), names_filter="hook_embed")
    with pytest.raises(KeyError, match="hook_embed"):
        cache["hook_embd"]


def test_hook_returning_wrong_shape_is_a_clear_error():
    model = tiny_model()
    with pytest.raises(ValueError, match="blocks.0.hook_mlp_out.*shape"):
        with model.hooks([("blocks.0.hook_mlp_out", lambda x, h: x[:, :1])]):
            model(tokens())
    assert not model.hook_points["blocks.0.hook_mlp_out"].active


def test_two_models_do_not_share_hooks():
    a, b = tiny_model(), tiny_model()
    t = tokens()
    with a.hooks([("hook_embed", lambda x, h: x * 0)]):
        assert torch.equal(b(t), tiny_model()(t))
