"""Read and write H.264 mp4 clips (optionally with an AAC audio track) through PyAV."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from diffheads.errors import DiffheadsError
from diffheads.io.atomic import atomic_path


def _open_video(path: str | Path) -> av.container.InputContainer:
    """Open `path` for reading and check it has a video stream."""
    path = Path(path)
    if not path.is_file():
        raise DiffheadsError(f"video {path} not found; check the path")
    if path.stat().st_size == 0:
        raise DiffheadsError(f"video {path} is empty (0 bytes); replace it or remove it")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        reason = getattr(err, "strerror", None) or err  # without the errno and path PyAV wraps around it
        raise DiffheadsError(
            f"video {path} cannot be read ({reason}); it may be truncated or damaged: re-encode it as mp4 (H.264) "
            "or remove it"
        ) from None
    if not container.streams.video:
        container.close()
        raise DiffheadsError(f"{path} has no video stream; pass a video file")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    """Frame rate of a video stream (average rate, else the guessed one)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _decoded_frames(path: str | Path) -> Iterator[av.VideoFrame]:
    """Decoded video frames of the first video stream, without conversion."""
    container = _open_video(path)
    try:
        yield from container.decode(video=0)
    except av.FFmpegError as err:
        raise DiffheadsError(
            f"video {path} is damaged ({getattr(err, 'strerror', None) or err}); re-encode or remove it"
        ) from None
    finally:
        container.close()


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield the frames of a video one by one as uint8 (H, W, 3) RGB."""
    for frame in _decoded_frames(path):
        yield frame.to_ndarray(format="rgb24")


def iter_frames_at(path: str | Path, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (source time in s, uint8 (H, W, 3) RGB frame) resampled to `fps` by nearest timestamp.

    Output frame k shows the source frame nearest to time k / fps (timestamps from the
    container, else frame index / stream rate); the clip lasts until the last source frame's
    end, so a 25 fps source comes out frame for frame and 3 s at 30 fps gives 75 frames.
    The source time tells when the shown frame was really taken (30 -> 25 fps repeats none
    but skips every sixth), which lets motion smoothing follow the true timing.
    """
    container = _open_video(path)
    stream = container.streams.video[0]
    src_fps = _stream_fps(stream) or fps
    k, start, prev_time, prev_frame, prev_image = 0, None, 0.0, None, None
    try:
        for i, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else i / src_fps
            start = t if start is None else start
            t -= start
            if prev_frame is not None:
                while k / fps < (prev_time + t) / 2:
                    if prev_image is None:
                        prev_image = prev_frame.to_ndarray(format="rgb24")
                    yield prev_time, prev_image
                    k += 1
            prev_time, prev_frame, prev_image = t, frame, None
        if prev_frame is not None:
            end = prev_time + 1.0 / src_fps
            while k / fps < end - 1e-6:
                if prev_image is None:
                    prev_image = prev_frame.to_ndarray(format="rgb24")
                yield prev_time, prev_image
                k += 1
    except av.FFmpegError as err:
        raise DiffheadsError(
            f"video {path} is damaged ({getattr(err, 'strerror', None) or err}); re-encode or remove it"
        ) from None
    finally:
        container.close()


def video_fps(path: str | Path) -> float:
    """Frame rate stored in the video stream's header."""
    container = _open_video(path)
    try:
        return _stream_fps(container.streams.video[0])
    finally:
        container.close()


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames as uint8 (T, H, W, 3) RGB and the frame rate."""
    fps = video_fps(path)
    frames = list(iter_video_frames(path))
    if not frames:
        raise DiffheadsError(f"video {path} holds no frames; re-encode or remove it")
    return np.stack(frames), fps


def count_frames(path: str | Path) -> int:
    """Number of decodable frames (decodes the stream: container frame counts can be missing or wrong)."""
    n = sum(1 for _ in _decoded_frames(path))
    if n == 0:
        raise DiffheadsError(f"video {path} holds no frames; re-encode or remove it")
    return n


def _check_frames(frames: np.ndarray) -> np.ndarray:
    """Validate a (T, H, W, 3) uint8 clip with even height and width."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0 or frames.dtype != np.uint8:
        raise DiffheadsError(
            f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}; "
            "convert before writing"
        )
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise DiffheadsError(
            f"H.264 (yuv420p) needs an even frame size, got {frames.shape[2]}x{frames.shape[1]}; crop or pad"
        )
    return np.ascontiguousarray(frames)


def _audio_frame(chunk: np.ndarray, start: int, sample_rate: int) -> av.AudioFrame:
    """One mono float planar audio frame whose pts counts samples."""
    frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    return frame


class VideoWriter:
    """Stream uint8 (H, W, 3) RGB frames into an H.264 yuv420p mp4, atomically, with mono float audio as AAC.

    Use as a context manager: frames go to the encoder as `write` receives them, and the audio
    (given whole, it is small) is interleaved frame by frame, so memory does not grow with the
    number of frames. The file is written beside `path` under a temporary name and renamed onto
    `path` only when the block ends without an error; otherwise it is removed and `path` is left
    as it was. Audio beyond the last frame's end is written when the block ends.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        width: int,
        height: int,
        audio: np.ndarray | None = None,
        sample_rate: int = 16000,
        crf: int = 18,
    ) -> None:
        if fps <= 0:
            raise DiffheadsError(f"fps must be positive, got {fps}")
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise DiffheadsError(f"H.264 (yuv420p) needs an even frame size, got {width}x{height}; crop or pad")
        self.path = Path(path)
        self.width, self.height, self.sample_rate, self.crf = int(width), int(height), int(sample_rate), crf
        self.rate = Fraction(fps).limit_denominator(1001)
        # kept as given (no copy when float32 already) and clipped chunk by chunk: a long recording is not doubled
        self.audio = None if audio is None else np.asarray(audio, dtype=np.float32).reshape(-1)
        self.frames_written = 0
        self._audio_written = 0  # samples handed to the encoder so far
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> VideoWriter:
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_path(self.path))
            self._container = stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
            self._vstream = self._container.add_stream(
                "libx264", rate=self.rate, options={"crf": str(self.crf), "preset": "medium"}
            )
            self._vstream.width, self._vstream.height = self.width, self.height
            self._vstream.pix_fmt = "yuv420p"
            self._astream = None
            if self.audio is not None and len(self.audio):
                self._astream = self._container.add_stream("aac", rate=self.sample_rate, layout="mono")
                self._astream.bit_rate = 96000
            self._stack = stack.pop_all()
        return self

    def write(self, frame: np.ndarray) -> None:
        """Encode one uint8 (height, width, 3) RGB frame, and the audio that plays during it."""
        if self._stack is None:
            raise DiffheadsError("VideoWriter.write outside its `with` block; open the writer with `with`")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise DiffheadsError(
                f"frame must be uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}; "
                "convert before writing"
            )
        vframe = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vframe.pts = self.frames_written
        vframe.time_base = 1 / self.rate
        self._container.mux(self._vstream.encode(vframe))
        self.frames_written += 1
        # audio is handed over alongside each frame so the muxer interleaves the two tracks
        self._write_audio(round(self.frames_written * self.sample_rate / float(self.rate)))

    def _write_audio(self, end: int) -> None:
        """Encode the audio samples from the last written one up to `end` (clamped to the audio's length)."""
        if self._astream is None:
            return
        end = min(end, len(self.audio))
        if end > self._audio_written:
            chunk = np.clip(self.audio[self._audio_written : end], -1.0, 1.0)
            self._container.mux(self._astream.encode(_audio_frame(chunk, self._audio_written, self.sample_rate)))
            self._audio_written = end

    def _finish(self) -> None:
        """Write the rest of the audio and flush both encoders."""
        if self.frames_written == 0:
            raise DiffheadsError(f"no frames were written to {self.path}; nothing to save")
        self._write_audio(len(self.audio) if self.audio is not None else 0)
        self._container.mux(self._vstream.encode(None))
        if self._astream is not None:
            self._container.mux(self._astream.encode(None))

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        if exc_type is None:
            try:
                self._finish()
            except BaseException:
                # closing the container then removes the temporary file; the error propagates
                if not stack.__exit__(*sys.exc_info()):
                    raise
                return False
        # closes the container, then renames the temporary file onto the target (or removes it on error)
        return bool(stack.__exit__(exc_type, exc, tb))


class LiveAudioVideoWriter(VideoWriter):
    """A VideoWriter whose audio arrives while the frames are written (`append_audio`), as from a microphone.

    Each frame still takes the audio that plays during it, as far as it has arrived; the rest goes in when the
    block ends. `limit_audio(n)` keeps only the first n samples (audio past the last frame, say). Atomic as the
    VideoWriter: the file appears only once complete.
    """

    def __init__(
        self, path: str | Path, fps: float, width: int, height: int, sample_rate: int = 16000, crf: int = 18
    ) -> None:
        # one placeholder sample makes the VideoWriter open an audio stream; the live buffer replaces it on entry
        super().__init__(path, fps, width, height, np.zeros(1, np.float32), sample_rate, crf)
        self._buffer = np.zeros(sample_rate, np.float32)  # grows by doubling: appends stay cheap
        self._received = 0
        self._limit: int | None = None

    def __enter__(self) -> LiveAudioVideoWriter:
        super().__enter__()
        self._update_view()
        return self

    def append_audio(self, samples: np.ndarray) -> None:
        """Add mono float samples at the end of the audio track."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self._received + len(samples) > len(self._buffer):
            grown = np.zeros(max(2 * len(self._buffer), self._received + len(samples)), np.float32)
            grown[: self._received] = self._buffer[: self._received]
            self._buffer = grown
        self._buffer[self._received : self._received + len(samples)] = samples
        self._received += len(samples)
        self._update_view()

    def limit_audio(self, n_samples: int) -> None:
        """Keep at most the first `n_samples` of the audio track (what is already encoded stays)."""
        self._limit = max(0, int(n_samples))
        self._update_view()

    def _update_view(self) -> None:
        """Point `audio`, which the VideoWriter encodes from, at the samples received (up to the limit), once open."""
        if self._stack is not None:
            end = self._received if self._limit is None else min(self._received, self._limit)
            self.audio = self._buffer[:end]


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    crf: int = 18,
) -> None:
    """Write uint8 (T, H, W, 3) RGB frames as H.264 yuv420p mp4, with mono float audio as AAC if given."""
    frames = _check_frames(frames)
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], audio, sample_rate, crf) as writer:
        for image in frames:
            writer.write(image)
