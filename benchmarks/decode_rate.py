"""How many 1 frame/s segments a host's decode processes get through, on the CPU and on NVDEC (issue 18).

    python benchmarks/decode_rate.py [--source FILE] [--seconds 20] [--processes 1 4 12] [--rounds 2]
                                     [--ways cpu cpu-skip nvdec nvdec-skip]

The source (default: the car-detection clip) looped to --seconds at 1920x1080, 30 fps, GOP 2 s, cut into 2 s
MPEG-TS segments as `benchmarks/live_capacity.py` does. For each way of decoding (`decode.hardware` cpu or
nvdec, `decode.skip_unsampled` off or on, `decode.sample_fps` 1) and each number of processes, that many
spawned processes (one FFmpeg thread each, as decode actors) decode every segment --rounds times with
`SegmentDecoder`, starting together after one untimed segment (NVDEC's set-up). Printed: segments and decoded
frames per second over all processes, each segment's CPU time in its process and wall time, and the 1 frame/s
streams that rate would feed (a stream publishes a segment every 2 s): decode alone, no other stage.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.live_capacity import SEGMENT_S, make_media  # noqa: E402

SHARED = Path(os.environ.get("LIVELENS_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
WAYS = {"cpu": ("cpu", False), "cpu-skip": ("cpu", True), "nvdec": ("nvdec", False), "nvdec-skip": ("nvdec", True)}


def decode_process(way: str, segments: list, rounds: int, ready: mp.Barrier, results: mp.Queue) -> None:
    from operators.config import DecodeConfig
    from operators.decode import SegmentDecoder
    from operators.frames import SegmentInfo

    hardware, skip = WAYS[way]
    config = DecodeConfig(sample_fps=1.0, hardware=hardware, skip_unsampled=skip)
    decoder = SegmentDecoder(config, frame_px=config.frame_px, threads=1)
    infos = [SegmentInfo("bench", "s", m.seq, 1e9 + m.media_start_s, m.media_start_s, m.duration_s, m.codec,
                         m.container) for m in segments]
    decoder.decode(infos[0], segments[0].payload)  # untimed: opens NVDEC where asked
    decoder.frames_decoded = decoder.cpu_fallbacks = 0
    ready.wait()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(rounds):
        for info, m in zip(infos, segments):
            decoder.decode(info, m.payload)
    results.put((rounds * len(segments), decoder.frames_decoded, time.process_time() - cpu,
                 time.perf_counter() - wall, decoder.cpu_fallbacks))


def measure(way: str, processes: int, segments: list, rounds: int) -> str:
    ctx = mp.get_context("spawn")  # decode actors are fresh processes, never forks of one with a GPU context
    ready, results = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=decode_process, args=(way, segments, rounds, ready, results))
               for _ in range(processes)]
    for w in workers:
        w.start()
    done = [results.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    count = sum(d[0] for d in done)
    frames = sum(d[1] for d in done)
    wall = max(d[3] for d in done)
    fallbacks = sum(d[4] for d in done)
    rate = count / wall
    return (f"| {way} | {processes} | {rate:,.1f} | {frames / wall:,.0f} | {1000 * sum(d[2] for d in done) / count:.1f}"
            f" | {1000 * sum(d[3] for d in done) / count:.1f} | {rate * SEGMENT_S:,.0f} |"
            + (f" {fallbacks} segments fell back to the CPU |" if fallbacks else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=SHARED / "data" / "real-video" / "car-detection.mp4")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 4, 12])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args()
    segments = make_media(args.source, Path(tempfile.mkdtemp()) / "media.mp4", args.seconds, (1920, 1080))
    print(f"{len(segments)} segments of {args.source.name} at 1920x1080 30 fps, GOP 2 s; 1 frame/s; "
          f"{os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}")
    print("| decode | processes | segments/s | frames decoded/s | CPU ms a segment | wall ms a segment "
          "| 1 frame/s streams fed |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for way in args.ways:
        for processes in args.processes:
            print(measure(way, processes, segments, args.rounds), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
