"""What reading closed captions costs a decode actor, now that H.264 / HEVC captions come from the packets.

    python benchmarks/caption_decode.py [--source FILE] [--seconds 20] [--size 1920x1080] [--fps 1] [--rounds 3]

Before, captions came with the decoded frames' A53 side data, so a deployment reading captions (the default)
had to decode every frame: `decode.skip_unsampled` was refused with `transcript.captions` on, and
`decode.keyframes_only` read only the keyframes' captions. Now `operators/cc_data.py` reads them from every
packet. The source (default: the car-detection clip) is looped to --seconds at --size, 30 fps, GOP 2 s, and cut
into 2 s MPEG-TS segments as the live-capacity benchmark does; each segment is decoded with `SegmentDecoder`
(one thread, as a decode actor) for each way of decoding, and the packet scan is timed alone. CPU ms per 2 s
segment (this process's CPU time), the best of --rounds, and how many frames' caption data the segments gave
(0 for a source without captions; mux.js's captioned news segment, tests/transcripts/media.py, has them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live_capacity import make_media  # noqa: E402
from operators.cc_data import CcDataReader  # noqa: E402
from operators.config import DecodeConfig  # noqa: E402
from operators.decode import SegmentDecoder  # noqa: E402
from operators.frames import SegmentInfo  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-video"


def decode_segments(segments: list, config: DecodeConfig, rounds: int) -> tuple[float, int]:
    """(CPU ms a segment, the best of ``rounds``; frames' caption data read over all segments)."""
    decoder = SegmentDecoder(config, frame_px=config.frame_px, threads=1)
    infos = [SegmentInfo("bench", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s, m.codec,
                         m.container) for m in segments]
    best, captions = float("inf"), 0
    for _ in range(rounds):
        start = time.process_time()
        captions = sum(len(decoder.decode(info, m.payload).captions) for info, m in zip(infos, segments))
        best = min(best, (time.process_time() - start) / len(segments))
    return 1000 * best, captions


def scan_ms_a_segment(segments: list, rounds: int) -> float:
    """The packet scan alone, what the decode actor adds: every video packet's cc_data read (demuxed untimed)."""
    import io

    import av

    packets = []
    for m in segments:
        with av.open(io.BytesIO(m.payload), format=m.container) as container:
            video = container.streams.video[0]
            reader = CcDataReader.for_stream(video.codec_context.codec.name, video.codec_context.extradata)
            packets.append((reader, [packet for packet in container.demux(video) if packet.size]))
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for reader, demuxed in packets:
            for packet in demuxed:
                reader.read(bytes(packet))
        best = min(best, (time.process_time() - start) / len(segments))
    return 1000 * best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "car-detection.mp4")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--fps", type=float, default=1.0, help="decode.sample_fps")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = tuple(map(int, args.size.split("x")))
    segments = make_media(args.source, Path(tempfile.mkdtemp()) / "media.mp4", args.seconds, size)
    print(f"{len(segments)} segments of {args.source.name} at {size[0]}x{size[1]} 30 fps, GOP 2 s; sample_fps "
          f"{args.fps:g}; {time.strftime('%Y-%m-%d')}")
    print("| decode | captions of every frame read | frames' caption data read | CPU ms a 2 s segment |\n"
          "| --- | --- | ---: | ---: |")
    rows = (("every frame (what captions needed before)", "yes", DecodeConfig(sample_fps=args.fps)),
            ("skip_unsampled", "yes, from the packets (before: refused with captions on)",
             DecodeConfig(sample_fps=args.fps, skip_unsampled=True)),
            ("keyframes_only", "yes, from the packets (before: the keyframes' only)",
             DecodeConfig(sample_fps=args.fps, keyframes_only=True)))
    for name, captions, config in rows:
        cpu_ms, read = decode_segments(segments, config, args.rounds)
        print(f"| {name} | {captions} | {read} | {cpu_ms:.1f} |")
    print(f"| the packet scan alone (every packet's cc_data read, part of each row above) | | | "
          f"{scan_ms_a_segment(segments, args.rounds):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
