"""Read and write H.264 mp4 clips (optionally with an AAC audio track) through PyAV."""

from __future__ import annotations

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
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise DiffheadsError(f"video {path} cannot be read ({err}); re-encode it as mp4 (H.264)") from None
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
        raise DiffheadsError(f"video {path} is damaged ({err}); re-encode or remove it") from None
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
        raise DiffheadsError(f"video {path} is damaged ({err}); re-encode or remove it") from None
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
    if fps <= 0:
        raise DiffheadsError(f"fps must be positive, got {fps}")
    if audio is not None:
        audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        vstream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "medium"})
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        astream = None
        if audio is not None and len(audio):
            astream = container.add_stream("aac", rate=sample_rate, layout="mono")
            astream.bit_rate = 96000
        # audio is handed over alongside each frame so the muxer interleaves the two tracks
        bounds = [round(i * sample_rate / float(rate)) for i in range(len(frames) + 1)]
        bounds[-1] = len(audio) if astream is not None else 0
        for i, image in enumerate(frames):
            vframe = av.VideoFrame.from_ndarray(image, format="rgb24")
            vframe.pts = i
            vframe.time_base = 1 / rate
            container.mux(vstream.encode(vframe))
            if astream is not None and bounds[i + 1] > bounds[i] and bounds[i] < len(audio):
                chunk = audio[bounds[i] : bounds[i + 1]]
                container.mux(astream.encode(_audio_frame(chunk, bounds[i], sample_rate)))
        container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
