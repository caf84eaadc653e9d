"""per_sample_grad: the methods against float64 references, coupling, a user's code and its twins,
and agreement with Opacus and BackPACK layer by layer (skipped when the extras are absent)."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import jacverify
from jacverify import Status, Verdict
from jacverify.per_sample_grad import check_per_sample_grads

B = 4
TARGETS = torch.tensor([0, 1, 1, 0])


def _x(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mlp(norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(3, 4)] + ([nn.LayerNorm(4)] if norm else []) + [nn.Tanh(), nn.Linear(4, 2)]
    return nn.Sequential(*layers).double()


CORE = ["loop", "vmap_grad", "batched_grad"]


def test_core_methods_agree_with_the_references():
    report = check_per_sample_grads(_mlp(norm=True), _x(B, 3), TARGETS, methods=CORE)
    assert report.passed, report.failure_message()
    assert report.trusted == ("loop", "finite_differences")
    assert report.quantity == "per_sample_grad"


def test_projection_verification_for_large_models():
    report = check_per_sample_grads(_mlp(), _x(B, 3), TARGETS, methods=CORE,
                                    verification="projection", probes=4)
    assert report.passed and report.verification == "projection (4 probes)"


def test_batch_norm_in_training_mode_makes_per_sample_methods_not_applicable():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    report = check_per_sample_grads(net, _x(B, 3), TARGETS, methods=CORE)
    for name in ("loop", "vmap_grad"):
        assert report[name].status == Status.NOT_APPLICABLE
        assert "BatchNorm1d) is in training mode" in report[name].reason
    assert report["batched_grad"].status == Status.AGREE  # d l_b / d theta through the batch
    assert check_per_sample_grads(net.eval(), _x(B, 3), TARGETS, methods=CORE).passed


def test_regression_targets_use_squared_error():
    report = check_per_sample_grads(_mlp(), _x(B, 3), _x(B, 2, seed=1), methods=CORE)
    assert report.passed


# --- a user's own code, and twins wrong for one layer type or only for a batch of one ---

def per_sample_grads(model, x, y):
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, xb, yb):
        out = functional_call(model, p, (xb[None],))
        return nn.functional.cross_entropy(out, yb[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


def per_sample_grads_no_layer_norm_rule(model, x, y):
    """Twin: a layer type without a per-sample rule falls back to the batch's mean gradient."""
    grads = per_sample_grads(model, x, y)
    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm):
            for p in ("weight", "bias"):
                key = f"{name}.{p}"
                grads[key] = grads[key].mean(0, keepdim=True).expand_as(grads[key])
    return grads


def _hooked(batch_size_of, name: str):
    def hooked(model, x, y):
        """Per-sample gradients of Linear layers from hooks (activations and output gradients),
        the loss averaged over the batch and scaled back by the batch size."""
        saved, hooks = {}, []
        for key, m in model.named_modules():
            if isinstance(m, nn.Linear):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, key=key: saved.__setitem__((key, "a"), inp[0].detach())))
                hooks.append(m.register_full_backward_hook(
                    lambda mod, gin, gout, key=key: saved.__setitem__((key, "g"), gout[0].detach())))
        try:
            nn.functional.cross_entropy(model(x), y).backward()
        finally:
            for h in hooks:
                h.remove()
            model.zero_grad()
        grads = {}
        for key, m in model.named_modules():
            if isinstance(m, nn.Linear):
                a, g = saved[(key, "a")], saved[(key, "g")]
                n = batch_size_of(g)
                grads[f"{key}.weight"] = torch.einsum("bo,bi->boi", g, a) * n
                grads[f"{key}.bias"] = g * n
        return grads

    hooked.__name__ = name
    return hooked


hooked_linear_grads = _hooked(lambda g: g.shape[0], "hooked_linear_grads")
# the twin's slip: the batch size read after squeeze(), which also drops a batch of one
hooked_linear_grads_squeezed = _hooked(lambda g: g.squeeze().shape[0],
                                       "hooked_linear_grads_squeezed")


def test_a_users_per_sample_grads_pass():
    report = jacverify.check_method(per_sample_grads, _mlp(norm=True), (_x(B, 3), TARGETS),
                                    quantity="per_sample_grad")
    assert report.passed, report.failure_message()
    assert any("read as a dict by parameter name" in n for n in report.notes)


def test_a_twin_wrong_only_for_layer_norm_is_flagged_there():
    twin = per_sample_grads_no_layer_norm_rule
    assert jacverify.check_method(twin, _mlp(norm=False), (_x(B, 3), TARGETS),
                                  quantity="per_sample_grad").passed
    report = jacverify.check_method(twin, _mlp(norm=True), (_x(B, 3), TARGETS),
                                    quantity="per_sample_grad", methods=CORE)
    assert report.verdict == Verdict.FAILED
    assert report[twin.__name__].status == Status.MISMATCH
    assert "1.weight" in report[twin.__name__].reason or "1.bias" in report[twin.__name__].reason
    assert f"{twin.__name__} (your own code)" in report.hint


@pytest.mark.parametrize("batch", [1, 3])
def test_a_twin_wrong_only_for_a_batch_of_one_is_flagged_there(batch):
    x, y = _x(batch, 3), TARGETS[:batch]
    assert jacverify.check_method(hooked_linear_grads, _mlp(), (x, y),
                                  quantity="per_sample_grad").passed
    report = jacverify.check_method(hooked_linear_grads_squeezed, _mlp(), (x, y),
                                    quantity="per_sample_grad")
    assert report.passed == (batch > 1), report.failure_message()
    if batch == 1:
        assert report["hooked_linear_grads_squeezed"].status == Status.MISMATCH
        assert "worst entry: sample 0" in report["hooked_linear_grads_squeezed"].reason


def test_a_result_missing_a_parameter_is_not_passed():
    def partial(model, x, y):
        g = per_sample_grads(model, x, y)
        g.pop("0.bias")
        return g

    report = jacverify.check_method(partial, _mlp(), (_x(B, 3), TARGETS), quantity="per_sample_grad")
    assert not report.passed and "no gradient for 0.bias" in report["partial"].reason


def test_inputs_must_be_x_and_y():
    with pytest.raises(jacverify.InvalidArgument, match=r"inputs=.* must be a tuple \(x, y\)"):
        jacverify.check_method(per_sample_grads, _mlp(), _x(B, 3), quantity="per_sample_grad")


# --- agreement with Opacus and BackPACK, layer by layer ---

class _Head(nn.Module):
    """A layer, its (first) output flattened, a linear head."""

    def __init__(self, core: nn.Module, width: int, attention: bool = False) -> None:
        super().__init__()
        self.core, self.head, self.attention = core, nn.Linear(width, 2), attention

    def forward(self, x):
        out = self.core(x, x, x) if self.attention else self.core(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out.reshape(out.shape[0], -1))


def _layer(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    x = _x(B, 3, dtype=torch.float32)
    if name == "linear":
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), x
    if name == "conv":
        return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(18, 2)), \
            _x(B, 1, 5, 5, dtype=torch.float32)
    if name == "layer_norm":
        return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)), x
    if name == "group_norm":
        return nn.Sequential(nn.Conv1d(2, 4, 2), nn.GroupNorm(2, 4), nn.Flatten(),
                             nn.Linear(12, 2)), _x(B, 2, 4, dtype=torch.float32)
    if name == "embedding":
        return nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Linear(6, 2)), \
            torch.randint(0, 7, (B, 2), generator=torch.Generator().manual_seed(0))
    from opacus.layers import DPLSTM, DPMultiheadAttention

    seq = _x(B, 3, 3, dtype=torch.float32)
    if name == "lstm":
        return _Head(nn.LSTM(3, 2, batch_first=True), 6), seq
    if name == "dp_lstm":
        return _Head(DPLSTM(3, 2, batch_first=True), 6), seq
    attn = nn.MultiheadAttention if name == "attention" else DPMultiheadAttention
    return _Head(attn(4, 2, batch_first=True), 12, attention=True), _x(B, 3, 4, dtype=torch.float32)


# Known limitations of the libraries themselves (not of jacverify): what each reports instead of
# agreeing. Opacus needs its DP layers for LSTM and attention; BackPACK has no BatchGrad rule for
# LayerNorm, GroupNorm, DPLSTM's cells or nn.MultiheadAttention's fused projection.
LAYERS = {
    # layer: (opacus, backpack)
    "linear": ("agree", "agree"),
    "conv": ("agree", "agree"),
    "layer_norm": ("agree", "not_applicable"),
    "group_norm": ("agree", "not_applicable"),
    "embedding": ("agree", "agree"),
    "lstm": ("unsupported", "agree"),
    "dp_lstm": ("agree", "not_applicable"),
    "attention": ("unsupported", "not_applicable"),
    "dp_attention": ("agree", "agree"),
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_opacus_and_backpack_agree_with_the_references(layer):
    pytest.importorskip("opacus", reason="needs jacverify[opacus]")
    pytest.importorskip("backpack", reason="needs jacverify[backpack]")
    model, x = _layer(layer)
    report = check_per_sample_grads(model, x, TARGETS, warm_timing=False)
    assert report.passed, report.failure_message()
    assert not report.mismatches
    assert (str(report["opacus"].status), str(report["backpack"].status)) == LAYERS[layer], (
        report["opacus"].reason, report["backpack"].reason)
    assert report["batched_grad"].status == Status.AGREE


def test_the_fixture_checks_a_users_per_sample_grads(jacverify):
    report = jacverify.check_method(per_sample_grads, _mlp(), (_x(B, 3), TARGETS),
                                    quantity="per_sample_grad", methods=CORE)
    assert report.quantity == "per_sample_grad" and report.passed
