"""Weight-backed audio encoders (Whisper, wav2vec2/HuBERT, SDA) through their real loaders, on tiny random models."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffheads.audio.encoders import build_encoder, make_encoder
from diffheads.audio.hf_speech import HFSpeechEncoder, conv_geometry
from diffheads.audio.sda import SDAEncoder, sda_windows
from diffheads.audio.whisper import WhisperEncoder
from diffheads.errors import DiffheadsError

SR = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    """Reproducible float32 noise."""
    return (np.random.default_rng(seed).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32)


def assert_one_line_error(err: pytest.ExceptionInfo, *parts: str) -> None:
    """A one-line message that mentions every part."""
    msg = str(err.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


# ---------------------------------------------------------------- Whisper


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer Whisper with 1 s input windows (max_source_positions=50), saved like a download."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=50, vocab_size=100,
        max_target_positions=20, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("whisper")
    transformers.WhisperModel(cfg).save_pretrained(path)
    transformers.WhisperFeatureExtractor(feature_size=80, chunk_length=1).save_pretrained(path)
    return path


def whisper_by_hand(path: Path, audio: np.ndarray) -> torch.Tensor:
    """Run the saved model on each 1 s chunk, keep frames over real audio (320 samples each), average pairs."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    fe = WhisperFeatureExtractor.from_pretrained(path)
    enc = WhisperModel.from_pretrained(path).encoder.eval()
    frames = []
    for start in range(0, len(audio), SR):
        piece = audio[start : start + SR]
        feats = fe(piece, sampling_rate=SR, return_tensors="pt")["input_features"]  # padded to 1 s by the extractor
        assert feats.shape == (1, 80, 100)
        with torch.no_grad():
            out = enc(feats).last_hidden_state[0]
        frames.append(out[: math.ceil(len(piece) / 320)])
    allf = torch.cat(frames)
    return allf.view(-1, 2, allf.shape[1]).mean(dim=1)


def test_whisper_chunks_and_pairs_frames(whisper_dir: Path):
    enc = WhisperEncoder(path=str(whisper_dir))
    assert enc.dim == 16
    audio = noise(2.6)  # 3 chunks: 1 s, 1 s, 0.6 s -> 50 + 50 + 30 encoder frames -> 65 video frames
    emb = enc.encode(audio, 65)
    assert emb.shape == (65, 16) and emb.dtype == torch.float32
    want = whisper_by_hand(whisper_dir, audio)
    assert want.shape == (65, 16)
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-5)
    # The middle chunk alone, run by hand, gives video frames 25..49.
    torch.testing.assert_close(emb[25:50], whisper_by_hand(whisper_dir, audio[SR : 2 * SR]), atol=1e-5, rtol=1e-5)


def test_whisper_pads_truncates_and_round_trips(whisper_dir: Path):
    enc = WhisperEncoder(path=str(whisper_dir))
    audio = noise(1.3, seed=1)  # 65 encoder frames: odd, so video frame 32 is frame 64 alone
    emb = enc.encode(audio, 35)
    assert emb.shape == (35, 16)
    frames = enc.frames(audio)
    assert frames.shape == (65, 16)
    torch.testing.assert_close(emb[32], frames[64])
    assert torch.equal(emb[33], emb[32]) and torch.equal(emb[34], emb[32])
    assert torch.equal(enc.encode(audio, 10), emb[:10])
    spec = enc.describe()
    assert spec["name"] == "whisper" and spec["dim"] == 16 and "_loaded" not in spec
    again = build_encoder(spec)
    assert isinstance(again, WhisperEncoder) and again.describe() == spec
    assert torch.equal(again.encode(audio, 35), emb)


def test_whisper_layer_selects_hidden_state(whisper_dir: Path):
    audio = noise(0.5, seed=2)
    first = WhisperEncoder(path=str(whisper_dir), layer=0).encode(audio, 12)
    last = WhisperEncoder(path=str(whisper_dir)).encode(audio, 12)
    assert first.shape == last.shape == (12, 16)
    assert not torch.allclose(first, last)
    with pytest.raises(DiffheadsError, match="layer 5 out of range"):
        WhisperEncoder(path=str(whisper_dir), layer=5)


# ---------------------------------------------------------------- wav2vec2 / HuBERT


def save_speech_model(path: Path, kind: str, **overrides) -> Path:
    """A tiny wav2vec2 or HuBERT with its feature extractor, saved with save_pretrained."""
    import transformers

    torch.manual_seed(0)
    args = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    args.update(overrides)
    if kind == "hubert":
        model = transformers.HubertModel(transformers.HubertConfig(**args))
    else:
        model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**args))
    model.save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False).save_pretrained(path)
    return path


def single_pass(path: Path, audio: np.ndarray) -> torch.Tensor:
    """Whole-clip last_hidden_state of the saved model, normalised as its extractor says."""
    from transformers import AutoFeatureExtractor, AutoModel

    fe = AutoFeatureExtractor.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    x = fe(audio, sampling_rate=SR, return_tensors="pt")["input_values"]
    with torch.no_grad():
        return model(input_values=x).last_hidden_state[0]


def interp_at_video_frames(frames: torch.Tensor, first_centre: float, stride: float, n_frames: int) -> torch.Tensor:
    """np.interp of each channel at (i + 0.5) * 640, model frame j sitting at first_centre + stride * j."""
    t = (np.arange(n_frames) + 0.5) * 640
    xp = first_centre + stride * np.arange(frames.shape[0])
    cols = [np.interp(t, xp, frames[:, c].numpy().astype(np.float64)) for c in range(frames.shape[1])]
    return torch.from_numpy(np.stack(cols, axis=1)).float()


@pytest.fixture(scope="module")
def w2v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small conv stack: kernels (10, 3), strides (5, 2) -> frames of 20 samples every 10."""
    return save_speech_model(tmp_path_factory.mktemp("w2v"), "wav2vec2")


def test_conv_geometry_of_released_front_end():
    assert conv_geometry((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == (400, 320)
    assert conv_geometry((10, 3), (5, 2)) == (20, 10)


def test_wav2vec2_interpolates_at_video_frame_centres(w2v_dir: Path):
    enc = HFSpeechEncoder(path=str(w2v_dir))
    assert enc.name == "wav2vec2" and enc.dim == 16
    audio = noise(0.9, seed=3)
    emb = enc.encode(audio, 25)  # 22.5 frames of audio: the last rows repeat the edge
    assert emb.shape == (25, 16)
    ref = single_pass(w2v_dir, audio)
    assert ref.shape[0] == (len(audio) - 20) // 10 + 1
    want = interp_at_video_frames(ref, first_centre=10.0, stride=10.0, n_frames=25)
    torch.testing.assert_close(emb, want, atol=1e-4, rtol=1e-4)
    # Shifting the assumed alignment by one model frame must be caught.
    shifted = interp_at_video_frames(ref, first_centre=20.0, stride=10.0, n_frames=25)
    assert not torch.allclose(emb, shifted, atol=1e-3)
    spec = enc.describe()
    again = build_encoder(spec)
    assert isinstance(again, HFSpeechEncoder) and again.describe() == spec
    assert torch.equal(again.encode(audio, 25), emb)


def test_released_stride_front_end_alignment(tmp_path: Path):
    path = save_speech_model(
        tmp_path,
        "wav2vec2",
        conv_dim=(4,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
    )
    enc = HFSpeechEncoder(path=str(path))
    assert enc.geometry == (400, 320)
    audio = noise(1.5, seed=4)
    emb = enc.encode(audio, 38)
    ref = single_pass(path, audio)
    assert ref.shape[0] == 74  # (24000 - 400) // 320 + 1
    want = interp_at_video_frames(ref, first_centre=200.0, stride=320.0, n_frames=38)
    torch.testing.assert_close(emb, want, atol=1e-4, rtol=1e-4)


def test_chunked_equals_single_pass_when_context_covers_reach(tmp_path: Path):
    """No attention layers, per-frame layer norms, positional conv reach 2 frames: chunking must be exact.

    With context_s=0 the positional convolution sees zero padding at chunk edges, so the same
    comparison must fail there: this shows the check is sensitive to the chunk boundaries.
    """
    path = save_speech_model(tmp_path, "wav2vec2", num_hidden_layers=0, feat_extract_norm="layer")
    audio = noise(3.3, seed=5)
    ref = single_pass(path, audio)
    # 0.5031 s is not a whole number of 10-sample frames: the context must still start on a frame boundary.
    chunked = HFSpeechEncoder(path=str(path), chunk_s=1.0, context_s=0.5031)
    frames = chunked.frames(audio)
    assert frames.shape == ref.shape
    torch.testing.assert_close(frames, ref, atol=1e-4, rtol=1e-4)
    one = HFSpeechEncoder(path=str(path), chunk_s=100.0)
    torch.testing.assert_close(chunked.encode(audio, 83), one.encode(audio, 83), atol=1e-4, rtol=1e-4)
    blind = HFSpeechEncoder(path=str(path), chunk_s=1.0, context_s=0.0).frames(audio)
    assert blind.shape == ref.shape
    bad = (blind - ref).abs().amax(dim=1) > 1e-3
    # Frame j sits at 10j + 10: chunk boundaries at 16000, 32000, 48000 samples are frames 1599/1600, ...
    assert bad.any() and bad[1598:1602].any() and not bad[500:1500].any()


def test_hubert_routes_by_config(tmp_path: Path):
    path = save_speech_model(tmp_path, "hubert")
    enc = make_encoder("hubert", str(path), chunk_s=5.0)
    assert isinstance(enc, HFSpeechEncoder) and enc.name == "hubert" and enc.dim == 16
    audio = noise(0.6, seed=6)
    emb = enc.encode(audio, 15)
    assert emb.shape == (15, 16)
    want = interp_at_video_frames(single_pass(path, audio), first_centre=10.0, stride=10.0, n_frames=15)
    torch.testing.assert_close(emb, want, atol=1e-4, rtol=1e-4)
    again = build_encoder(enc.describe())
    assert again.name == "hubert" and torch.equal(again.encode(audio, 15), emb)
    with pytest.raises(DiffheadsError, match="holds a hubert model"):
        make_encoder("wav2vec2", str(path))


# ---------------------------------------------------------------- SDA


class TinySDA(nn.Module):
    """Per-window linear map, then a GRU across the windows of the clip."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3200, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.tanh(self.proj(x)))
        return h


@pytest.fixture(scope="module")
def sda_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TinySDA scripted and saved as TorchScript."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sda") / "sda.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet it is the SDA export format
        torch.jit.script(TinySDA().eval()).save(str(path))
    return path


def test_sda_windows_layout():
    n = 640 * 5 + 100
    audio = np.arange(1, n + 1, dtype=np.float32)  # sample k holds k + 1, so zero means padding
    w = sda_windows(audio)
    assert w.shape == (5, 3200) and w.dtype == torch.float32
    assert torch.all(w[0, :1280] == 0)
    assert torch.equal(w[0, 1280:], torch.arange(1, 1921, dtype=torch.float32))
    for i in range(5):
        idx = np.arange(640 * i - 1280, 640 * i + 1920)
        want = np.where((idx >= 0) & (idx < n), idx + 1, 0).astype(np.float32)
        assert np.array_equal(w[i].numpy(), want), i
    assert w[4, 0] == 1281  # window 4 starts at sample 1280
    assert torch.all(w[4, n - 1280 :] == 0) and w[4, n - 1281] == n  # zeros past the end
    assert sda_windows(np.zeros(640 * 5 + 639, np.float32)).shape == (5, 3200)
    assert sda_windows(np.zeros(639, np.float32)).shape == (0, 3200)


def test_sda_probes_dim_and_carries_state(sda_file: Path):
    enc = SDAEncoder(path=str(sda_file))
    assert enc.dim == 8 and enc.describe()["dim"] == 8
    audio = noise(640 * 6 / SR, seed=7)
    emb = enc.encode(audio, 6)
    assert emb.shape == (6, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(sda_file))  # the reference: called directly on the clip's windows
    with torch.no_grad():
        torch.testing.assert_close(emb, module(sda_windows(audio)[None])[0])
    # Samples [0, 640) only reach windows 0..2 (window 3 starts at 640); row 3 still moves, through the GRU state.
    other = audio.copy()
    other[:640] += 0.5
    assert torch.equal(sda_windows(other)[3:], sda_windows(audio)[3:])
    emb2 = enc.encode(other, 6)
    assert not torch.allclose(emb2[3], emb[3], atol=1e-6)


def test_sda_pads_truncates_and_round_trips(sda_file: Path):
    enc = SDAEncoder(path=str(sda_file))
    audio = noise((640 * 5 + 100) / SR, seed=8)  # 5 windows
    emb = enc.encode(audio, 7)
    assert emb.shape == (7, 8)
    assert torch.equal(emb[5], emb[4]) and torch.equal(emb[6], emb[4])
    assert torch.equal(enc.encode(audio, 3), emb[:3])
    assert enc.encode(noise(0.01), 2).shape == (2, 8)  # under one window: silence-padded to one
    again = build_encoder(enc.describe())
    assert isinstance(again, SDAEncoder) and torch.equal(again.encode(audio, 7), emb)


def test_sda_rejects_missing_and_foreign_files(tmp_path: Path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(DiffheadsError) as err:
        SDAEncoder(path=str(missing))
    hint = "export the SDA audio encoder of the Diffused Heads release to TorchScript (see docs/data.md)"
    assert_one_line_error(err, str(missing), hint)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(DiffheadsError) as err:
        SDAEncoder(path=str(junk))
    assert_one_line_error(err, str(junk), "not a TorchScript file")
    pickled = tmp_path / "state.pt"
    torch.save(TinySDA().state_dict(), pickled)
    with pytest.raises(DiffheadsError) as err:
        SDAEncoder(path=str(pickled))
    assert_one_line_error(err, str(pickled), "not a TorchScript file")


# ---------------------------------------------------------------- paths and the CLI factory


@pytest.mark.parametrize(
    ("cls", "hint"),
    [
        (WhisperEncoder, "huggingface.co/openai/whisper-tiny"),
        (HFSpeechEncoder, "huggingface.co/facebook/wav2vec2-base-960h"),
    ],
)
def test_missing_weights_directory(tmp_path: Path, cls: type, hint: str):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DiffheadsError) as err:
        cls(path=str(missing))
    assert_one_line_error(err, str(missing), hint)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DiffheadsError) as err:
        cls(path=str(empty))
    assert_one_line_error(err, str(empty), "config.json", hint)


def test_missing_hubert_directory_names_hubert_weights(tmp_path: Path):
    with pytest.raises(DiffheadsError) as err:
        make_encoder("hubert", str(tmp_path / "x"))
    assert_one_line_error(err, str(tmp_path / "x"), "huggingface.co/facebook/hubert-base-ls960")


def test_make_encoder_checks_names_paths_and_options(w2v_dir: Path, whisper_dir: Path):
    assert make_encoder("logmel", n_mels=16).dim == 80
    for name in ("whisper", "wav2vec2", "hubert", "sda"):
        with pytest.raises(DiffheadsError, match=f"--encoder {name} needs --encoder-path"):
            make_encoder(name)
    with pytest.raises(DiffheadsError, match="available: logmel, whisper, wav2vec2, hubert, sda"):
        make_encoder("mfcc")
    with pytest.raises(DiffheadsError, match="does not take"):
        make_encoder("whisper", str(whisper_dir), chunk_s=3.0)
    with pytest.raises(DiffheadsError, match="not Whisper"):
        make_encoder("whisper", str(w2v_dir))
    with pytest.raises(ValueError, match="available: logmel, whisper"):
        build_encoder({"name": "mfcc"})


def test_embed_command_with_weights_encoders(tmp_path: Path, sda_file: Path, whisper_dir: Path, capsys):
    """`diffheads embed --encoder ...` writes rows of the encoder's width, one per video frame, and says so."""
    import contextlib
    import io
    import json

    from diffheads.cli import main
    from diffheads.io.video import count_frames

    data = tmp_path / "data"
    assert (
        main(
            [
                "synth",
                str(data),
                "--train-identities",
                "1",
                "--test-identities",
                "1",
                "--clips-per-identity",
                "1",
                "--seconds",
                "1.0",
                "--size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    for name, path, dim in (("sda", sda_file, 8), ("whisper", whisper_dir, 16)):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = main(
                [
                    "embed",
                    str(data),
                    "--out",
                    str(tmp_path / name),
                    "--encoder",
                    name,
                    "--encoder-path",
                    str(path),
                    "--quiet",
                ]
            )
        assert code == 0 and json.loads(buf.getvalue())["dim"] == dim
        spec = json.loads((tmp_path / name / "encoder.json").read_text())
        assert spec["name"] == name and spec["dim"] == dim
        emb = torch.load(tmp_path / name / "id000" / "clip00.pth", weights_only=True)
        assert emb.shape == (count_frames(data / "video" / "id000" / "clip00.mp4"), dim)
    capsys.readouterr()
    assert main(["embed", str(data), "--encoder", "whisper", "--quiet"]) == 2
    assert "needs --encoder-path" in capsys.readouterr().err
    assert main(["embed", str(data), "--encoder-path", str(sda_file), "--quiet"]) == 2
    assert "logmel has no weights" in capsys.readouterr().err
    assert main(["embed", str(data), "--encoder", "sda", "--encoder-path", str(tmp_path / "none.pt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.pt" in err and len(err.splitlines()) == 1
