"""What reading words costs per stream-hour: closed captions, subtitle cues, the audio decode ASR needs.

    python -m benchmarks.transcripts MUXJS_PACKAGE_DIR [FRIDAY_MP4]

MUXJS_PACKAGE_DIR: mux.js from npm (`npm pack mux.js@7.1.0`, unpacked), whose captioned broadcast segments
are the caption input. Each input is cut into segments as a publisher cuts it; the decode of each segment is
timed with and without the extra work, in process CPU seconds (the machine is shared: wall time is noise),
and scaled to one hour of stream.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from operators.captions import CaptionReader
from operators.config import DecodeConfig, TranscriptConfig
from operators.decode import SegmentDecoder
from operators.frames import SegmentInfo
from pipelines.segmenter import iter_segments

ROUNDS = 5


def infos(path: Path):
    return [(SegmentInfo("b", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s, m.codec,
                         m.container), m.payload) for m in iter_segments(str(path))]


def cpu(fn) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def main(muxjs: Path, friday: Path | None) -> None:
    for name in ("multi-channel-608-captions.ts", "sintel-captions.ts"):
        segments = infos(muxjs / "test/segments" / name)
        media_s = sum(info.duration_s for info, _ in segments)
        decoder = SegmentDecoder(DecodeConfig())
        batches = [decoder.decode(info, payload) for info, payload in segments]

        def read_captions():
            reader = CaptionReader(TranscriptConfig())
            for batch in batches:
                reader.read(batch)

        decode_s = cpu(lambda: [decoder.decode(info, payload) for info, payload in segments])
        captions_s = cpu(read_captions)
        frames = sum(len(b.captions) for b in batches)
        print(f"{name}: {media_s:.1f} s, {frames} captioned frames; decode {decode_s / media_s * 3600:.0f} CPU s "
              f"per stream-hour, caption reading {captions_s / media_s * 3600:.1f} CPU s per stream-hour "
              f"({captions_s / frames * 1e6:.0f} us per captioned frame)")
    if friday is not None:
        segments = infos(friday)
        media_s = sum(info.duration_s for info, _ in segments)
        plain, with_audio = SegmentDecoder(DecodeConfig()), SegmentDecoder(DecodeConfig(audio=True))
        base = cpu(lambda: [plain.decode(info, payload) for info, payload in segments])
        audio = cpu(lambda: [with_audio.decode(info, payload) for info, payload in segments])
        print(f"{friday.name}: {media_s:.1f} s; decode {base / media_s * 3600:.0f} CPU s per stream-hour, "
              f"+{(audio - base) / media_s * 3600:.0f} with the audio at 16 kHz mono (decode.audio)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
