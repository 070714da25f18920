"""Gathered per-row routing: a mixed batch computes, row by row, what each row computes alone on its own stack,
with the gradients of the loop over distinct stacks it replaced; its cached tables follow the Parameters."""

import pytest
import torch
from model_probes import LARGE_STYLE

from wavadapt.model import adapters
from wavadapt.model.adapters import AdapterConfig, adapter_parameters, add_adapter, grouped_routing, set_active
from wavadapt.model.backbone import build_backbone

WAVES = torch.randn(8, 4000, generator=torch.Generator().manual_seed(1))  # 0.25 s per row

# name -> (config, the set whose layer norms its copies start from).
POST_LN_SETS = {
    "en": (AdapterConfig(size=16), None),
    "es": (AdapterConfig(size=32, top_n=2), None),
    "es/asr": (AdapterConfig(size=8), "es"),
    "fr": (AdapterConfig(size=16, layer_norms=False, activation="gelu"), None),
    "de": (AdapterConfig(size=24, top_n=1, layer_norms=False, activation="swish"), None),
}
# One and two sets, top-N sets, sets without norms, three sizes and activations at one position, the bare backbone.
POST_LN_STACKS = [("en",), ("es",), ("es", "es/asr"), (), ("fr",), ("de",), ("fr", "en"), ("es", "de")]

MMS = dict(form="mms", layer_norms=False)
PRE_LN_SETS = {
    "m1": (AdapterConfig(size=16, **MMS), None),
    "m2": (AdapterConfig(size=32, **MMS), None),
    "h": (AdapterConfig(size=8, top_n=2), None),
    "h2": (AdapterConfig(size=16, layer_norms=False), None),
}
# mms sets (one layer hook) beside houlsby ones (attention and feed-forward hooks), alone and stacked.
PRE_LN_STACKS = [("m1",), ("m2",), (), ("h", "m1"), ("m2", "h"), ("h",), ("h2", "m2"), ("m1", "h2")]

SCENARIOS = {"houlsby-post-ln": (False, POST_LN_SETS, POST_LN_STACKS), "mms-pre-ln": (True, PRE_LN_SETS, PRE_LN_STACKS)}


def _model(scenario: str, device: torch.device | str = "cpu"):
    pre_ln, sets, stacks = SCENARIOS[scenario]
    torch.manual_seed(0)
    model = build_backbone("tiny", **(LARGE_STYLE if pre_ln else {})).eval()
    for name, (config, init_from) in sets.items():
        add_adapter(model, name, config, init_layer_norms_from=init_from)
        with torch.no_grad():  # far from identity, so that a row on the wrong set shows
            for p in adapter_parameters(model, name).values():
                p.add_(torch.randn_like(p), alpha=0.1)
    return model.to(device), stacks


def _mixed(model, stacks, waves=WAVES):
    set_active(model, per_sample=stacks)
    return model(waves).last_hidden_state


def _alone(model, stacks, waves=WAVES):
    """Each row run by itself on its own stack."""
    rows = []
    for stack, wave in zip(stacks, waves, strict=True):
        set_active(model, stack)
        rows.append(model(wave[None]).last_hidden_state[0])
    return torch.stack(rows)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_mixed_batch_equals_each_row_alone_and_the_grouped_loop(scenario, device):
    model, stacks = _model(scenario, device)
    waves = WAVES.to(device)
    with torch.inference_mode():
        mixed = _mixed(model, stacks, waves)
        alone = _alone(model, stacks, waves)
        with grouped_routing(model):
            grouped = _mixed(model, stacks, waves)
        set_active(model, None)
        bare = model(waves).last_hidden_state
    torch.testing.assert_close(mixed, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(grouped, alone, atol=1e-5, rtol=0)
    for i, stack in enumerate(stacks):  # every set moves its rows, so a row routed wrongly would show
        assert torch.allclose(mixed[i], bare[i]) == (stack == ())


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_mixed_batch_gradients_equal_the_grouped_loop_and_per_row_runs(scenario, device):
    # float64: fp32 gradients summed over a batch and over separate runs differ by rounding (~1e-4 relative here).
    model, stacks = _model(scenario, device)
    model.double()
    waves = WAVES.double().to(device)
    weights = torch.randn(len(stacks), 1, model.config.hidden_size, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64).to(device)

    def gradients(run) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        run()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    def per_row():
        for i, stack in enumerate(stacks):  # the gradient of the summed loss is the sum of the rows'
            set_active(model, stack)
            (model(waves[i : i + 1]).last_hidden_state * weights[i]).sum().backward()

    gathered = gradients(lambda: (_mixed(model, stacks, waves) * weights).sum().backward())
    with grouped_routing(model):
        grouped = gradients(lambda: (_mixed(model, stacks, waves) * weights).sum().backward())
    rows = gradients(per_row)
    assert set(gathered) == set(grouped) == set(rows)
    for name in gathered:
        torch.testing.assert_close(gathered[name], grouped[name], atol=1e-9, rtol=1e-9, msg=name)
        torch.testing.assert_close(gathered[name], rows[name], atol=1e-9, rtol=1e-9, msg=name)
    for name in SCENARIOS[scenario][1]:  # each set's own Parameters got its rows' gradient
        assert all(gathered[k].abs().sum() > 0 for k in adapter_parameters(model, name))


def test_cached_tables_follow_in_place_changes_and_reloads(device):
    model, stacks = _model("houlsby-post-ln", device)
    waves = WAVES.to(device)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        before = _mixed(model, stacks, waves)
        with torch.no_grad():  # an in-place change, as optimizers make
            for p in adapter_parameters(model, "es").values():
                p.mul_(1.5)
        changed = _mixed(model, stacks, waves)
        torch.testing.assert_close(changed, _alone(model, stacks, waves), atol=1e-5, rtol=0)
        assert not torch.allclose(changed[1], before[1])
        model.load_state_dict(saved)
        torch.testing.assert_close(_mixed(model, stacks, waves), before, atol=0, rtol=0)


def test_tables_cached_under_inference_mode_serve_autograd_through_frozen_sets():
    model, stacks = _model("houlsby-post-ln")
    model.requires_grad_(False)
    with torch.inference_mode():
        _mixed(model, stacks)  # builds the cache
    waves = WAVES.clone().requires_grad_(True)
    _mixed(model, stacks, waves).sum().backward()  # the cached tables are saved for backward
    assert waves.grad is not None and waves.grad.abs().sum() > 0


def test_one_stack_for_every_row_runs_ungathered(monkeypatch):
    model, _ = _model("houlsby-post-ln")
    set_active(model, ("es", "es/asr"))
    with torch.inference_mode():
        whole = model(WAVES[:3]).last_hidden_state
        monkeypatch.setattr(adapters.StackedTables, "get", lambda *args: pytest.fail("gathered a uniform batch"))
        per_row = _mixed(model, [("es", "es/asr")] * 3, WAVES[:3])
    torch.testing.assert_close(per_row, whole, atol=0, rtol=0)


def test_mixed_forwards_leave_parameter_names_and_state_dict_keys_unchanged():
    model, stacks = _model("mms-pre-ln")
    names, keys = [k for k, _ in model.named_parameters()], list(model.state_dict())
    with torch.inference_mode():
        _mixed(model, stacks)
    _mixed(model, stacks).sum().backward()
    assert [k for k, _ in model.named_parameters()] == names and list(model.state_dict()) == keys
