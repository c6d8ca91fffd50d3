"""Speech in, frames out as the audio arrives: the video loop fed by a log-mel encoder that runs on a growing signal.

Latency (log-mel defaults, k = model.n_audio_motion_embs): embedding row t averages STFT frames 4t-8 .. 4t+11;
frame 4t+11 is centred on sample 640t + 1760 and its window's last non-zero weight falls on sample 640t + 1959,
so row t is final once 640t + 1960 samples have arrived: 1320 samples (82.5 ms) past the end of video frame t
(encoder look-ahead, `LogMelEncoder.lookahead`). Frame t also needs rows up to t + k, another k * 640 samples
(network look-ahead, 80 ms at k = 2): frame t comes out 2600 samples (162.5 ms) after its own 40 ms of audio
ends, and the first frame once 3240 samples (202.5 ms) have arrived, plus the time to sample it.

Equality with `animate` (the whole recording embedded, then sampled): every STFT frame, row and noise draw is
computed as the whole-recording path computes it, bit for bit, except the compression floor, which is the
loudest mel value of the whole recording minus 8 (80 dB). A stream only knows the loudest value so far, so
frame t is sampled with the floor known at that moment; it equals animate's frame exactly when that floor is
already the final one, or when no mel value in frame t's window lies below the final floor (more than 80 dB
under the recording's peak: clean speech has such values in its pauses). `matches_whole_recording` tells, after
`finish`, whether that held for every frame, i.e. whether the frames are animate's for the same audio and seed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from diffheads.audio.encoders import LogMelEncoder, build_encoder
from diffheads.audio.frames import FPS, SAMPLE_RATE, frames_in_audio
from diffheads.checkpoint import LoadedModel
from diffheads.config import SampleConfig
from diffheads.diffusion.video import FrameStepper, audio_window_indices
from diffheads.errors import DiffheadsError
from diffheads.face.portrait import Portrait
from diffheads.sample.inputs import identity_of, output_image
from diffheads.sample.runtime import check_audio_width, sampling_setup

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640: audio of one 25 fps video frame
GEMM_COLUMNS = 64  # STFT frames per mel projection at least: MKL multiplies narrow matrices (< 12 columns) with
# kernels that round differently, so a stream computing one new STFT frame at a time would drift by an ulp

_WHOLE_RECORDING = {
    "whisper": "Whisper encodes 30 s windows in one pass",
    "wav2vec2": "its transformer attends over the whole input",
    "hubert": "its transformer attends over the whole input",
    "sda": "its recurrent module takes the whole clip in one call",
}


def streaming_encoder(model: LoadedModel) -> LogMelEncoder:
    """The model's audio encoder if it can run on audio as it arrives (log-mel), else a one-line DiffheadsError."""
    name = model.audio_encoder.get("name", "logmel") if model.audio_encoder else None
    if name is None:
        raise DiffheadsError("this model does not record its audio encoder; retrain or re-export it with diffheads")
    if name != "logmel":
        why = _WHOLE_RECORDING.get(name, "it is not the log-mel encoder")
        raise DiffheadsError(
            f"this model's {name} audio encoder needs the whole recording ({why}), so it cannot stream; use a model "
            "trained on log-mel embeddings (diffheads embed --encoder logmel), or diffheads animate for this one"
        )
    encoder = build_encoder(model.audio_encoder)
    check_audio_width(model, encoder.dim, "the log-mel encoder")
    return encoder


class StreamFrame(NamedTuple):
    """One frame of the stream."""

    index: int  # its frame number t
    image: np.ndarray  # uint8 (H, W, 3): the crop, or the full picture when the stream has a Portrait
    audio_needed: int  # samples of the recording its window waited for (the whole recording at the end)


class _Samples:
    """The samples received so far, of which only the tail still needed is kept."""

    def __init__(self) -> None:
        self.data = np.zeros(SAMPLE_RATE, np.float32)
        self.start = 0  # recording index of data[0]
        self.count = 0  # samples received

    def append(self, samples: np.ndarray) -> None:
        used = self.count - self.start
        if used + len(samples) > len(self.data):
            grown = np.zeros(max(2 * len(self.data), used + len(samples)), np.float32)
            grown[:used] = self.data[:used]
            self.data = grown
        self.data[used : used + len(samples)] = samples
        self.count += len(samples)

    def drop_before(self, index: int) -> None:
        """Forget the samples before recording index `index` (moved only once they are half the buffer)."""
        drop = min(index, self.count) - self.start
        if drop > len(self.data) // 2:
            used = self.count - self.start
            self.data[: used - drop] = self.data[drop:used].copy()
            self.start += drop

    def take(self, index: np.ndarray) -> np.ndarray:
        """Samples at recording indices `index` (all received and kept)."""
        return self.data[index - self.start]


class SpeechStream:
    """Frames of one face speaking audio pushed in chunks, each as soon as its audio window is complete.

    Audio is 16 kHz mono float32, in chunks of any size. Latency and equality with `animate`: see the module
    docstring. `push(samples)` returns the frames ready now; `finish()` ends the recording and returns the rest,
    whose audio windows are clamped at the end as `sample_video` clamps a clip of that length. Frame t needs
    `samples_for_frame(t)` samples; `lookahead` is how far past its own audio that is. The identity is a (3, S, S)
    frame in [-1, 1] (the frames are crops) or a Portrait (each frame is pasted back into its picture). Noise
    comes from one generator seeded with `seed`, drawn frame by frame in the order `sample_clips` draws it.
    """

    def __init__(
        self, model: LoadedModel, identity: torch.Tensor | Portrait, sample: SampleConfig | None = None, seed: int = 0
    ) -> None:
        self.encoder = streaming_encoder(model)
        sample = sample or model.cfg.sample
        size = model.cfg.model.frame_size
        self.portrait = identity if isinstance(identity, Portrait) else None
        frame = identity_of(identity, size) if isinstance(identity, Portrait) else identity
        if tuple(frame.shape) != (3, size, size):
            raise DiffheadsError(
                f"the identity frame must be (3, {size}, {size}) for this model, got {tuple(frame.shape)}"
            )
        setup = sampling_setup(model, sample, seed)
        self.device = setup.device
        self.stepper = FrameStepper(
            setup.denoiser,
            setup.process,
            frame[None].to(setup.device),
            model.cfg.model,
            sample,
            setup.generator,
            motion_blur=model.cfg.data.motion_blur,
        )
        self.k = model.cfg.model.n_audio_motion_embs
        self.max_frames = sample.max_frames if sample.max_frames > 0 else None
        self.frame_size = self.portrait.frames.shape[1:3] if self.portrait is not None else (size, size)
        self._window, self._fb = self.encoder.stft_window(), self.encoder.filterbank()
        self._samples = _Samples()
        self._mel = torch.zeros(self.encoder.n_mels, 0)  # log10 mel power of STFT frames _mel_start .. _n_columns-1
        self._mel_start = 0
        self._n_columns = 0  # STFT frames computed: those whose samples have all arrived
        self._dropped_peak = torch.tensor(-torch.inf)  # the loudest of the STFT frames no longer held
        self._floors: list[tuple[float, float]] = []  # per frame sampled before the end: (floor used, lowest value)
        self._n_frames: int | None = None  # known at the end
        self._last_read = -1  # last STFT frame a window read before the end
        self._columns_changed = False  # an STFT frame read before the end differs from log_mel's (its last chunk)
        self.matches_whole_recording: bool | None = None  # set by finish()

    @property
    def lookahead(self) -> int:
        """Samples past the end of frame t's own audio that frame t waits for: encoder's + k frames (2600 default)."""
        return self.encoder.lookahead + self.k * SAMPLES_PER_FRAME

    def samples_for_frame(self, t: int) -> int:
        """Samples of the recording frame t needs before the end (its window's last row, up to max_frames)."""
        last = t + self.k if self.max_frames is None else min(t + self.k, self.max_frames - 1)
        return max(self.encoder.samples_for_row(last), self.encoder.n_fft // 2 + 1)  # + the reflected start

    def push(self, samples: np.ndarray) -> list[StreamFrame]:
        """Add the next samples (16 kHz mono float32); the frames whose audio windows are now complete."""
        if self._n_frames is not None:
            raise DiffheadsError("this stream is finished; start a new SpeechStream for more audio")
        self._samples.append(np.asarray(samples, dtype=np.float32).reshape(-1))
        self._add_columns(self._final_columns())
        out = []
        while (self.max_frames is None or self.stepper.t < self.max_frames) and (
            self._samples.count >= self.samples_for_frame(self.stepper.t)
        ):
            t = self.stepper.t
            out.append(StreamFrame(t, self._sample(self.max_frames or t + self.k + 1), self.samples_for_frame(t)))
        self._forget()
        return out

    def finish(self) -> list[StreamFrame]:
        """End of the recording: the remaining frames, sampled with the whole recording's embedding."""
        n_samples = self._samples.count
        if n_samples == 0:
            raise DiffheadsError("no audio was pushed; push the recording's samples before finish()")
        if self._n_frames is not None:
            return []
        n = frames_in_audio(n_samples)
        self._n_frames = n if self.max_frames is None else min(n, self.max_frames)
        self._last_columns(n_samples // self.encoder.hop_length + 1)
        floor = float(self._peak - 8.0)
        self.matches_whole_recording = not self._columns_changed and all(
            used == floor or lowest >= floor for used, lowest in self._floors
        )
        out = []
        while self.stepper.t < self._n_frames:
            out.append(StreamFrame(self.stepper.t, self._sample(self._n_frames), n_samples))
        return out

    def _sample(self, n_frames: int) -> np.ndarray:
        """Sample frame t (the stepper's) from its audio window in a clip of n_frames frames; its image."""
        t = self.stepper.t
        rows = audio_window_indices(t, self.k, torch.tensor([n_frames]))[0]
        peak = self._peak
        window = self.encoder.rows(self.encoder.compress(self._mel, peak), rows, self._mel_start)
        if self._n_frames is None:
            cols = self.encoder.slot_columns(rows).clamp(min=0) - self._mel_start
            self._floors.append((float(peak - 8.0), float(self._mel[:, cols].min())))
            self._last_read = max(self._last_read, int(cols.max()) + self._mel_start)
        frame = self.stepper.step(window[None].to(self.device))
        return output_image(frame, t, self.portrait)

    def _final_columns(self) -> int:
        """STFT frames whose samples with non-zero window weight have all arrived (none before the reflected start)."""
        count, reach = self._samples.count, self.encoder.window_reach
        if count <= self.encoder.n_fft // 2 or count <= reach:
            return 0
        return (count - reach - 1) // self.encoder.hop_length + 1

    def _add_columns(self, end: int) -> None:
        """Compute STFT frames _n_columns .. end-1, each projection at least GEMM_COLUMNS wide."""
        while self._n_columns < end:
            stop = min(end, self._n_columns + LogMelEncoder.CHUNK_FRAMES)
            first = max(0, min(self._n_columns, stop - GEMM_COLUMNS))
            mel = self._columns(first, max(stop, first + GEMM_COLUMNS))[:, self._n_columns - first : stop - first]
            self._keep(mel)
            self._n_columns = stop

    def _last_columns(self, n_stft: int) -> None:
        """At the end: the remaining STFT frames, the last chunk of log_mel computed as log_mel computes it."""
        chunk = LogMelEncoder.CHUNK_FRAMES
        last_chunk = (n_stft - 1) // chunk * chunk
        self._add_columns(last_chunk)
        if n_stft - last_chunk >= GEMM_COLUMNS:
            self._add_columns(n_stft)
            return
        # log_mel projects its narrow last chunk in one product: so do we, over the frames already made too
        mel = self._columns(last_chunk, n_stft)
        held = self._mel[:, last_chunk - self._mel_start :]  # _forget keeps GEMM_COLUMNS frames: all of them
        read = max(0, min(held.shape[1], self._last_read + 1 - last_chunk))
        self._columns_changed = not torch.equal(held[:, :read], mel[:, :read])
        self._mel = self._mel[:, : last_chunk - self._mel_start]
        self._keep(mel)
        self._n_columns = n_stft

    def _keep(self, mel: torch.Tensor) -> None:
        """Append computed STFT frames."""
        self._mel = torch.cat([self._mel, mel], dim=1)

    @property
    def _peak(self) -> torch.Tensor:
        """The loudest log10 mel power so far (log_mel's `mel.max()` once the recording has ended)."""
        return torch.maximum(self._dropped_peak, self._mel.max()) if self._mel.numel() else self._dropped_peak

    def _columns(self, first: int, end: int) -> torch.Tensor:
        """(n_mels, end - first) log10 mel power of STFT frames first..end-1; unknown samples count as zeros."""
        hop, pad = self.encoder.hop_length, self.encoder.n_fft // 2
        index = np.arange(first * hop, (end - 1) * hop + self.encoder.n_fft) - pad  # recording index of each sample
        count, ended = self._samples.count, self._n_frames is not None
        if not ended or count > pad:  # else log_mel pads a clip this short with zeros
            index = np.abs(index)  # reflected start
            if ended:
                index = np.where(index >= count, 2 * (count - 1) - index, index)  # reflected end
        # past the end before it is known (weight 0 in every frame kept), or only in frames that are dropped
        valid = (index >= self._samples.start) & (index < count)
        piece = np.zeros(len(index), np.float32)
        piece[valid] = self._samples.take(index[valid])
        return self.encoder.mel_frames(torch.from_numpy(piece), self._window, self._fb)

    def _forget(self) -> None:
        """Drop the samples and STFT frames that no later frame or projection reads."""
        oldest_row = max(0, self.stepper.t - self.k)
        first_needed = int(self.encoder.slot_columns(torch.tensor([oldest_row]))[0, 0].clamp(min=0))
        first = min(first_needed, max(0, self._n_columns - GEMM_COLUMNS))
        if first > self._mel_start:
            self._dropped_peak = torch.maximum(self._dropped_peak, self._mel[:, : first - self._mel_start].max())
            self._mel = self._mel[:, first - self._mel_start :]
            self._mel_start = first
        self._samples.drop_before(max(0, first * self.encoder.hop_length - self.encoder.n_fft))
