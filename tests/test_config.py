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


# ---- launch settings belong to a run, not to the model ---------------------------------------------------
def _with_sample_layout(path, devices: int, num_nodes: int):
    """Rewrite the model file at `path` as older releases saved it: sample.devices / sample.num_nodes in its config."""
    import json

    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["config"])
    cfg["sample"].update(devices=devices, num_nodes=num_nodes)
    meta["config"] = json.dumps(cfg)
    safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path), metadata=meta)
    return path


def test_old_sample_launch_keys_load_from_dicts_yaml_and_overrides(tmp_path):
    old = to_dict(RunConfig())
    old["sample"].update(devices=2, num_nodes=3)
    cfg = from_dict(old)
    assert cfg == RunConfig() and not hasattr(cfg.sample, "devices") and not hasattr(cfg.sample, "num_nodes")
    path = tmp_path / "old.yaml"
    path.write_text("sample:\n  devices: 8\n  num_nodes: 2\n  steps: 7\n")
    assert load_config(path).sample.steps == 7
    assert load_config(path, ["sample.devices=4", "sample.num_nodes=1"]) == load_config(path)
    assert "devices" not in to_dict(load_config(path))["sample"]
    with pytest.raises(DiffheadsError, match="unknown config key 'sample.device'"):
        load_config(None, ["sample.device=2"])  # only the two retired keys are let through


def test_generate_takes_its_processes_from_its_flags_not_the_model_file(tmp_path, monkeypatch):
    import diffheads.distributed
    from diffheads.checkpoint import load_model
    from diffheads.cli import build_parser, cmd_generate, generate_launch
    from tiny import tiny_checkpoint

    model = _with_sample_layout(tiny_checkpoint(tmp_path / "old.ckpt"), devices=2, num_nodes=2)
    assert load_model(model).cfg.sample.steps == RunConfig().sample.steps  # the old file loads
    common = ["generate", "--checkpoint", str(model), "--data", str(tmp_path), "--out", str(tmp_path / "gen")]
    args = build_parser().parse_args(common)
    assert (generate_launch(args).devices, generate_launch(args).num_nodes) == (1, 1)
    launched = []

    class Launched(Exception):
        pass

    def fake_launch(cfg, device, quiet=False):
        launched.append(cfg)
        raise Launched

    monkeypatch.setattr(diffheads.distributed, "launch", fake_launch)
    with pytest.raises(Launched):
        cmd_generate(args)
    assert (launched[0].devices, launched[0].num_nodes, launched[0].world_size) == (1, 1, 1)
    args = build_parser().parse_args([*common, "--devices", "3", "--num-nodes", "2"])
    assert (generate_launch(args).devices, generate_launch(args).num_nodes) == (3, 2)


def test_model_files_hold_no_sample_launch_keys_and_distill_does_not_inherit_the_teachers(tmp_path):
    import json

    from safetensors import safe_open

    from diffheads.training.distill import student_config
    from tiny import tiny_checkpoint

    with safe_open(str(tiny_checkpoint(tmp_path / "m.ckpt")), framework="pt") as f:
        saved = json.loads(f.metadata()["config"])
    assert not {"devices", "num_nodes"} & saved["sample"].keys()
    teacher = load_config(
        None, ["trainer.accelerator=gpu", "trainer.devices=8", "trainer.num_nodes=2", "trainer.strategy=ddp"]
    )
    student = student_config(teacher, tmp_path).trainer
    default = RunConfig().trainer
    assert (student.accelerator, student.devices, student.num_nodes, student.strategy) == (
        default.accelerator,
        default.devices,
        default.num_nodes,
        default.strategy,
    )
    chosen = student_config(teacher, tmp_path, ["trainer.devices=2", "trainer.accelerator=cpu"]).trainer
    assert (chosen.devices, chosen.accelerator) == (2, "cpu")
