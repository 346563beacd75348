"""MP4 video for LeRobot datasets through PyAV (FFmpeg bundled in its wheels: no system ffmpeg needed).

Decoding: `FrameDecoder.frames(path, times)` returns the frames presented at those times, decoding only from
the key frame before each one (LeRobot encodes with a key frame every 2 frames, so a random frame costs one
seek and at most two decoded frames); a forward read within a few frames continues without seeking. Open
files live in a small per-process LRU cache (`DecoderCache`), dropped after a fork so that DataLoader workers
never share a file offset with the parent.

Why PyAV: on this CPU it decoded random 128 px frames fastest of the decoders that install here (the figures
and the command are in docs/benchmarks.md, "LeRobot video decoding"), and it needs no system FFmpeg, unlike
torchcodec.

Encoding: `VideoWriter` appends frames (one episode after another) to one MP4 stream at a fixed frame rate;
presentation time of frame n is n / fps, so an episode's `from_timestamp` is its first frame's index / fps.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np

from vla.errors import UserError

# codec name -> (PyAV encoder, pixel format, options). "av1" is LeRobot's own default (libsvtav1, crf 30, a key
# frame every 2 frames); "lossless" (H.264 in RGB, qp 0) decodes to the exact pixels written.
CODECS = {
    "av1": ("libsvtav1", "yuv420p", {"g": "2", "crf": "30", "preset": "8"}),
    "h264": ("libx264", "yuv420p", {"g": "2", "crf": "23", "preset": "fast"}),
    "lossless": ("libx264rgb", "rgb24", {"g": "2", "qp": "0", "preset": "fast"}),
}
INHERITED: list = []  # a forked child's copies of its parent's open files (see DecoderCache.get)
FORWARD_FRAMES = 8  # a target this few frames past the last decoded one is reached by decoding on, not seeking


_AV = None


def _av():
    global _AV
    if _AV is None:
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration at level 3 (info) otherwise
        import av

        av.logging.set_level(av.logging.ERROR)
        _AV = av
    return _AV


class VideoFile:
    """One open MP4: frames by presentation time, decoding forward from the nearest earlier key frame."""

    def __init__(self, path: str | os.PathLike, feature: str = "video"):
        av = _av()
        self.path, self.feature = os.fspath(path), feature
        try:
            self.container = av.open(self.path)
            self.stream = self.container.streams.video[0]
        except (av.FFmpegError, IndexError, OSError) as e:
            raise UserError(f"{self.path}: cannot open the video of feature {feature!r}: {_reason(e)}") from None
        self.stream.codec_context.thread_count = 1  # threads cost more than they save on one small frame per seek
        tb = self.stream.time_base
        self.time_base = float(tb) if tb else 1.0
        rate = self.stream.average_rate or self.stream.base_rate
        self.period = 1.0 / float(rate) if rate else 0.0
        self._frames = None  # the decode iterator, positioned after self._last
        # one reformatter per file keeps its swscale context: a fresh one per frame costs ~1 ms at 128 px
        self._rgb = av.video.reformatter.VideoReformatter()
        self._last: tuple[float, np.ndarray] | None = None

    def close(self) -> None:
        self._frames = None
        self.container.close()

    def _restart(self, t: float) -> None:
        av = _av()
        try:
            self.container.seek(max(0, int(t / self.time_base)), stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as e:
            raise UserError(f"{self.path}: cannot seek to {t:.3f} s in feature {self.feature!r}: {_reason(e)}") \
                from None
        self._frames = self.container.decode(self.stream)
        self._last = None

    def _next(self):
        """The next decoded frame as (time, av.VideoFrame), or None at the end of the file."""
        av = _av()
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.FFmpegError as e:
            raise UserError(f"{self.path}: the video of feature {self.feature!r} does not decode: {_reason(e)}") \
                from None
        t = frame.pts * self.time_base if frame.pts is not None else (self._last[0] + self.period if self._last else 0)
        self._last = (t, frame)
        return self._last

    def _rgb24(self, frame) -> np.ndarray:
        return self._rgb.reformat(frame, format="rgb24").to_ndarray()  # (H, W, 3) uint8

    def frame_at(self, t: float) -> np.ndarray:
        """The frame shown at time t (s): (H, W, 3) uint8; UserError if none lies within half a frame of t."""
        tol = 0.5 * self.period if self.period else 1e-3
        last = self._last
        ahead = last is not None and last[0] - tol <= t <= last[0] + FORWARD_FRAMES * max(self.period, 1e-3)
        if not ahead:
            self._restart(t)
        elif abs(last[0] - t) <= tol:
            return self._rgb24(last[1])
        while True:  # only the frame asked for is converted to RGB; those before it are decoded and dropped
            got = self._next()
            if got is None or got[0] > t + tol:
                break
            if got[0] >= t - tol:
                return self._rgb24(got[1])
        self._last = None  # past the target (or the end): the next call seeks afresh
        raise UserError(f"{self.path}: the video of feature {self.feature!r} has no frame at {t:.4f} s "
                        f"(the episode's timestamps and the video disagree, or the file is cut short)")


class DecoderCache:
    """A few open `VideoFile`s per process (LRU); a forked child starts empty instead of sharing its parent's."""

    def __init__(self, size: int = 4):
        self.size = size
        self._files: OrderedDict[str, VideoFile] = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: str | os.PathLike, feature: str = "video") -> VideoFile:
        if os.getpid() != self._pid:  # inherited through fork: the handles share file offsets with the parent
            # Keep the parent's open files referenced, never closed here: freeing an FFmpeg context copied by
            # fork hangs the child (seen with DataLoader workers after the parent had read a sample).
            INHERITED.extend(self._files.values())
            self._files, self._pid = OrderedDict(), os.getpid()
        key = os.fspath(path)
        f = self._files.pop(key, None)
        if f is None:
            if not Path(key).is_file():
                raise UserError(f"{key}: video file of feature {feature!r} is missing")
            f = VideoFile(key, feature)
            while len(self._files) >= self.size:
                self._files.popitem(last=False)[1].close()
        self._files[key] = f
        return f

    def frames(self, path: str | os.PathLike, times: list[float], feature: str = "video") -> np.ndarray:
        """(N, H, W, 3) uint8: the frames presented at `times` (seconds from the start of the file)."""
        f = self.get(path, feature)
        return np.stack([f.frame_at(float(t)) for t in times])

    def __getstate__(self):  # pickled into spawn-started workers: never the open files
        return {"size": self.size}

    def __setstate__(self, state):
        self.__init__(state["size"])


class VideoWriter:
    """Append (H, W, 3) uint8 frames to one MP4 at `fps`; `close()` flushes. `bytes` counts what was muxed."""

    def __init__(self, path: str | os.PathLike, fps: int, height: int, width: int, codec: str = "av1"):
        if codec not in CODECS:
            raise UserError(f"unknown video codec {codec!r}: choose one of {sorted(CODECS)}")
        av = _av()
        name, self.pix_fmt, options = CODECS[codec]
        if self.pix_fmt == "yuv420p" and (height % 2 or width % 2):
            raise UserError(f"{path}: {codec} (yuv420p) needs even frame sizes, got {height}x{width}; use "
                            "--codec lossless")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path, self.count, self.bytes = Path(path), 0, 0
        self.container = av.open(os.fspath(path), "w", format="mp4")
        self.stream = self.container.add_stream(name, rate=int(fps), options=dict(options))
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, self.pix_fmt
        self.codec, self.encoder = codec, name
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self.pix_fmt != "rgb24":
            frame = frame.reformat(format=self.pix_fmt)
        frame.pts = self.count  # in the stream's time base, 1 / fps
        self._mux(self.stream.encode(frame))
        self.count += 1

    def _mux(self, packets) -> None:
        for p in packets:
            self.bytes += p.size
            self.container.mux(p)

    def close(self) -> None:
        self._mux(self.stream.encode())
        self.container.close()


def video_info(path: str | os.PathLike) -> dict:
    """LeRobot's `features[key]["info"]` for a written video (what its `get_video_info` records)."""
    av = _av()
    with av.open(os.fspath(path)) as c:
        s = c.streams.video[0]
        return {"video.height": s.height, "video.width": s.width, "video.codec": s.codec_context.codec.canonical_name
                if hasattr(s.codec_context.codec, "canonical_name") else s.codec_context.name,
                "video.pix_fmt": s.codec_context.pix_fmt, "video.is_depth_map": False,
                "video.fps": int(s.base_rate or s.average_rate), "video.channels": 3, "has_audio": False}


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
