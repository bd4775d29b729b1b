"""The two views of the embedded suite (issue 27, docs/study.md): `shapes` (each entry with its own recipe) and
`shapes-shared-recipe` (every architecture under one recipe) share a budget, presets and protocol; the recipes are
what the docs say they are; and a protocol with ``sampling: recipe`` samples each entry with its own sampler and
guidance schedule."""

from pathlib import Path

import pytest
import yaml

from benchmark.evaluation import EvalProtocol
from benchmark.guidance import ClassifierFreeGuidance
from benchmark.leaderboard.suite import load_suite
from benchmark.samplers import DDIMSampler, DDPMSampler, EulerSampler
from tests.benchmark.evaluation.conftest import tiny_dit

ROOT = Path(__file__).resolve().parents[2]
OWN, SHARED = ROOT / "leaderboards" / "shapes", ROOT / "leaderboards" / "shapes-shared-recipe"
RECIPE_KEYS = ("objective", "sampler", "guidance", "optimizer", "lr_scheduler", "ema_decay", "ema_warmup")


def _model(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["model"]


def _recipe(path: Path) -> dict:
    """The recipe part of an entry: objective, sampler, guidance (without control scale), optimizer, EMA, clipping."""
    config = yaml.safe_load(path.read_text())
    args = config["model"]["init_args"]
    recipe = {key: args.get(key) for key in RECIPE_KEYS}
    if recipe["guidance"]:
        recipe["guidance"] = {**recipe["guidance"], "init_args": dict(recipe["guidance"].get("init_args", {}))}
        recipe["guidance"]["init_args"].pop("control_scale", None)  # 1.0 (off) where set: the same guidance
    recipe["gradient_clip_val"] = config["trainer"].get("gradient_clip_val")
    recipe["batch_size"] = config["data"]["init_args"]["batch_size"]
    return recipe


def test_both_views_share_budget_presets_and_protocol():
    own, shared = load_suite(OWN), load_suite(SHARED)
    assert own.budget == shared.budget
    assert set(own.presets) == set(shared.presets) == {"default", "quick", "smoke"}
    for name in own.presets:
        a, b = own.preset(name), shared.preset(name)
        assert (a.seeds, a.budget_scale) == (b.seeds, b.budget_scale), name
        assert own.protocol_for(a) == shared.protocol_for(b), name
        assert EvalProtocol.from_dict(own.protocol_for(a)).sampling == "recipe"
    assert len(own.preset("default").seeds) >= 3 and len(own.preset("quick").seeds) == 1
    # quick keeps the budget the suites had before the study (2e12 FLOPs), whatever the default budget becomes
    assert own.budget_for(own.preset("quick")).train_flops == pytest.approx(2e12)


def test_every_architecture_is_in_both_views():
    def architectures(suite):
        return {
            (e.model_class, e.config["model"]["init_args"]["size"]) for e in suite.entries() if e.name != "dit_ddpm"
        }

    assert architectures(load_suite(OWN)) == architectures(load_suite(SHARED))


def test_the_shared_view_trains_every_architecture_with_the_reference_entrys_recipe():
    reference = _recipe(SHARED / "dit.yaml")
    assert reference["objective"]["class_path"] == "benchmark.objectives.RectifiedFlow"
    assert reference["sampler"]["class_path"] == "benchmark.samplers.EulerSampler"
    assert reference["optimizer"] == {
        "class_path": "torch.optim.AdamW",
        "init_args": {"lr": 0.003, "weight_decay": 0.0},
    }
    for entry in load_suite(SHARED).entries():
        assert _recipe(entry.path) == reference, entry.name


def test_the_reference_row_is_the_same_entry_in_both_views():
    """H5's budget curve is measured on leaderboards/shapes/dit.yaml; the shared view's copy must train the same."""
    own, shared = (yaml.safe_load((root / "dit.yaml").read_text()) for root in (OWN, SHARED))
    assert own == shared


@pytest.mark.parametrize(
    ("entry", "objective", "sampler", "optimizer"),
    [
        ("dit_ddpm", "DDPM", "DDPMSampler", "torch.optim.AdamW"),
        ("mdt", "DDPM", "DDPMSampler", "pytorch_optimizer.Adan"),
        ("pixart_alpha", "DDPM", "DDPMSampler", "torch.optim.AdamW"),
        ("ldm_g4", "DDPM", "DDIMSampler", "torch.optim.AdamW"),
        ("sdxl_unet", "DDPM", "DDIMSampler", "torch.optim.AdamW"),
        ("mmdit", "RectifiedFlow", "EulerSampler", "torch.optim.AdamW"),
        ("proposed", "RectifiedFlow", "EulerSampler", "torch.optim.AdamW"),
    ],
)
def test_the_own_view_keeps_each_published_recipe_family(entry, objective, sampler, optimizer):
    recipe = _recipe(OWN / f"{entry}.yaml")
    assert recipe["objective"]["class_path"].endswith(f".{objective}")
    assert recipe["sampler"]["class_path"].endswith(f".{sampler}")
    assert recipe["optimizer"]["class_path"] == optimizer
    assert recipe["ema_decay"] == 0.999 and recipe["batch_size"] == 64  # the toy-scale changes every entry shares


def test_the_recipe_details_that_set_entries_apart():
    mdt, pixart, ldm, proposed = (_recipe(OWN / f"{e}.yaml") for e in ("mdt", "pixart_alpha", "ldm_g4", "proposed"))
    assert mdt["guidance"]["init_args"]["schedule"] == "power_cosine" and mdt["objective"]["init_args"]["min_snr_gamma"]
    assert mdt["optimizer"]["init_args"]["max_grad_norm"] == 1.0
    assert pixart["optimizer"]["init_args"] == {"lr": 0.0006, "weight_decay": 0.03, "eps": 1e-10}
    assert pixart["lr_scheduler"]["class_path"].endswith("LinearLR") and pixart["gradient_clip_val"] == 0.01
    assert ldm["sampler"]["init_args"]["eta"] == 1.0
    assert ldm["objective"]["init_args"]["beta_schedule"] == "scaled_linear"
    assert proposed["optimizer"]["init_args"]["betas"] == [0.9, 0.95]
    dit = _recipe(OWN / "dit_ddpm.yaml")
    assert dit["guidance"]["init_args"]["guided_channels"] == 3 and dit["objective"]["init_args"]["learn_sigma"]


def test_recipe_sampling_keeps_the_entrys_sampler_and_guidance_schedule(tiny_vae):
    guidance = ClassifierFreeGuidance(semantic_scale=3.8, schedule="power_cosine", guided_channels=3)
    module = tiny_dit(tiny_vae, sampler=EulerSampler(steps=50, shift=2.0), guidance=guidance)
    own = module.sampler, module.guidance
    protocol = EvalProtocol(flow_steps=7, guidance_scale=2.0, sampling="recipe")
    with protocol.apply(module):
        assert isinstance(module.sampler, EulerSampler) and (module.sampler.steps, module.sampler.shift) == (7, 2.0)
        g = module.guidance
        assert (g.semantic_scale, g.schedule, g.guided_channels) == (2.0, "power_cosine", 3)
    with protocol.apply(module, 1.0):  # the unguided measurement guides nothing, whatever the recipe's schedule
        assert module.guidance.semantic_scale == 1.0 and module.guidance.schedule == "constant"
    assert (module.sampler, module.guidance) == own and own[0].steps == 50 and own[1].semantic_scale == 3.8
    with EvalProtocol(flow_steps=7, guidance_scale=2.0).apply(module):  # the shared-recipe rule: the protocol's
        assert module.sampler.shift is None and module.guidance.schedule == "constant"


@pytest.mark.parametrize("sampler", [DDIMSampler(steps=50, eta=1.0), DDPMSampler(steps=50)])
def test_recipe_sampling_keeps_a_ddpm_entrys_sampler_family(tiny_vae, sampler):
    from benchmark.objectives import DDPM

    module = tiny_dit(tiny_vae, objective=DDPM(), sampler=sampler)
    with EvalProtocol(ddpm_steps=5, ddpm_sampler="ddim", sampling="recipe").apply(module):
        assert type(module.sampler) is type(sampler) and module.sampler.steps == 5
        assert getattr(module.sampler, "eta", None) == getattr(sampler, "eta", None)


def test_sampling_is_in_the_protocol_id_only_when_it_is_not_the_default():
    base = EvalProtocol.from_yaml(OWN / "protocol.yaml")
    assert base.sampling == "protocol"
    assert base.replace(sampling="recipe").id() != base.id()
    data = base.to_dict()
    del data["sampling"]  # a protocol written before the field existed keeps its id
    assert EvalProtocol.from_dict(data).id() == base.id()
    with pytest.raises(ValueError, match="sampling"):
        EvalProtocol(sampling="mine")
