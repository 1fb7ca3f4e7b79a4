"""What one live publisher costs: CPU per second of video, cutting a real clip served by GStreamer's RTSP server.

    python benchmarks/live_publisher.py [--seconds 24]

Each clip of the shared real footage is served by `tests.live_servers.start_rtsp` (the camera) and read
over RTSP/TCP by `pipelines.live.live_segments` (demux, timestamp repair, remux into MPEG-TS segments:
what `livelens publish rtsp://...` does before handing segments to Kafka) until ``--seconds`` of video
arrived. Prints the process's CPU seconds per second of video (user + system), the share of a core one
camera needs.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.live import live_segments  # noqa: E402
from tests.live_servers import start_rtsp  # noqa: E402

CLIPS = ("car-detection.mp4", "bottle-detection.mp4")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=24.0)
    args = parser.parse_args()
    shared = Path(os.environ.get("LIVELENS_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
    work = Path(tempfile.mkdtemp())
    print("| clip | video s | wall s | CPU s | share of a core |\n| --- | --- | --- | --- | --- |")
    for clip in CLIPS:
        camera = start_rtsp(shared / "data" / "real-video" / clip, work)
        try:
            video, started, cpu = 0.0, time.monotonic(), cpu_seconds()
            for media in live_segments(camera.address, reconnect=None):
                video += media.duration_s
                if video >= args.seconds:
                    break
            cpu = cpu_seconds() - cpu
            print(f"| {clip} | {video:.1f} | {time.monotonic() - started:.1f} | {cpu:.2f} | {100 * cpu / video:.2f}% |")
        finally:
            camera.stop()


if __name__ == "__main__":
    main()
