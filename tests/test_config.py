"""Typed configs: YAML, overrides, unknown keys and wrong types rejected with the key and file named."""

from __future__ import annotations

import pytest

from diffheads.config import AudioCondition, Prediction, RunConfig, from_dict, load_config, to_dict
from diffheads.errors import DiffheadsError


def test_presets_load_and_overrides_apply(tmp_path):
    cfg = load_config("configs/demo.yaml", ["optim.lr=1e-3", "model.channel_mult=[1,2]", "diffusion.prediction=eps"])
    assert cfg.optim.lr == 1e-3
    assert cfg.model.channel_mult == [1, 2]
    assert cfg.diffusion.prediction is Prediction.EPS
    for name in ("crema", "lrw"):
        c = load_config(f"configs/{name}.yaml")
        assert c.model.model_channels == 256 and c.model.audio_condition_type is AudioCondition.DOUBLE_PRE_GN


def test_round_trip_through_dict():
    cfg = load_config("configs/demo.yaml")
    again = from_dict(to_dict(cfg))
    assert again == cfg
    assert isinstance(to_dict(cfg)["diffusion"]["prediction"], str)


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(DiffheadsError, match=r"bad\.yaml.*unknown config key 'optim\.learning_rate'"):
        load_config(path)
    with pytest.raises(DiffheadsError, match="unknown config key 'trainer.maxsteps'"):
        load_config(None, ["trainer.maxsteps=3"])


@pytest.mark.parametrize(
    "override,match",
    [
        ("optim.lr=fast", "'optim.lr': expected a number"),
        ("trainer.max_steps=2.5", "'trainer.max_steps': expected an integer"),
        ("model.grayscale_motion=3", "expected true or false"),
        ("diffusion.prediction=noise", "is not one of: eps, v, x0"),
        ("model.channel_mult=2", "expected a list"),
        ("optim=3", "'optim' must be a mapping"),
        ("lr", "must look like section.key=value"),
    ],
)
def test_wrong_types_are_rejected(override, match):
    with pytest.raises(DiffheadsError, match=match):
        load_config(None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(DiffheadsError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "broken.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(DiffheadsError, match="not valid YAML"):
        load_config(bad)


def test_defaults_follow_spec():
    cfg = RunConfig()
    assert (cfg.model.model_channels, cfg.model.channel_mult, cfg.model.num_res_blocks) == (256, [1, 2, 3], 2)
    assert cfg.diffusion.vlb_weight == 1e-4 and cfg.diffusion.lip_loss_weight == 0.2
    assert cfg.optim.lr == 5e-5 and cfg.optim.batch_size == 10 and cfg.optim.lr_decay == 0.8
    assert cfg.model.n_motion_frames == 2 and cfg.model.n_audio_motion_embs == 2


def test_renamed_keys_of_older_checkpoints_still_load():
    from diffheads.config import FrameCache, from_dict, to_dict

    old = to_dict(RunConfig())
    del old["data"]["frame_cache"]
    old["data"]["cache_frames"] = True
    assert from_dict(old).data.frame_cache is FrameCache.MEMORY
    old["data"]["cache_frames"] = False
    assert from_dict(old).data.frame_cache is FrameCache.DECODE


def test_motion_perturbation_keys_load_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("data:\n  motion_colour_jitter: 0.1\n  motion_noise: 5e-2\n")  # 5e-2: a string to YAML 1.1
    cfg = load_config(path)
    assert (cfg.data.motion_colour_jitter, cfg.data.motion_noise) == (0.1, 0.05)
    assert load_config(path, ["data.motion_noise=0"]).data.motion_noise == 0.0
    assert from_dict(to_dict(cfg)) == cfg
    assert (RunConfig().data.motion_colour_jitter, RunConfig().data.motion_noise) == (0.0, 0.0)  # off by default
    with pytest.raises(DiffheadsError, match="'data.motion_noise': expected a number"):
        load_config(path, ["data.motion_noise=lots"])
