"""What INT8 PP-OCRv4 models would buy the CPU OCR reader, and what they do to its text (issue 18).

    pip install onnx==1.23.2 ml_dtypes   # onnxruntime's quantiser needs it; livelens itself does not
    python benchmarks/ocr_int8.py [--seconds 60]

Not a livelens feature: a measurement of one. The detector and recogniser RapidOCR ships are quantised with
onnxruntime's static quantisation (QOperator format, int8 weights per channel, uint8 activations), calibrated
on what the fp32 models see when reading the sample broadcast (pipelines/cli/sample_video.py) whole: its
detector inputs and its text crops. The models' last three nodes (the recogniser's classifier and softmax,
the detector's probability map) stay in float: quantised, the recogniser's per-character probabilities lose
the resolution the space restoration (operators/ocr_engine.py) reads, and its text turns to blanks.

Prints, for one onnxruntime thread: CPU ms a model run (median of 10; a 640x352 detector input, recogniser
inputs 320 and 640 px wide), then the time to read every sampled frame whole and how many frames read the same
text as with the fp32 models, for int8 detector, recogniser, or both. INT8 gains depend on the CPU's int8
dot-product instructions (AVX-512 VNNI / AVX-VNNI); the script prints whether /proc/cpuinfo lists them.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ocr_incremental import sampled_frames  # noqa: E402
from operators import ocr_engine  # noqa: E402
from operators.config import OcrConfig  # noqa: E402
from operators.ocr_engine import DETECTOR_MODEL, RECOGNISER_MODEL, OcrEngine  # noqa: E402
from operators.onnx_session import open_session  # noqa: E402


class _Recording:
    """An onnxruntime session that keeps a copy of every input it runs on (the calibration data)."""

    def __init__(self, session: onnxruntime.InferenceSession):
        self.session, self.feeds = session, []

    def run(self, names, feed, *args):
        self.feeds.append({k: v.copy() for k, v in feed.items()})
        return self.session.run(names, feed, *args)

    def __getattr__(self, name):
        return getattr(self.session, name)


def read_whole(engine: OcrEngine, frames: list[np.ndarray]) -> list[list[str]]:
    out = []
    for image in frames:
        image = OcrEngine.detector_input(image, OcrConfig().max_side)  # as ScreenTextReader scales by default
        boxes = engine.detect(image)
        out.append([text for text, _ in engine.recognise(engine.crops(image, boxes))] if len(boxes) else [])
    return out


def calibration(frames: list[np.ndarray]) -> tuple[list[dict], list[dict]]:
    engine = OcrEngine(OcrConfig(threads=1))
    detector, recogniser = _Recording(engine._detector.infer.session), _Recording(engine._recogniser.session)
    engine._detector.infer.session, engine._recogniser.session = detector, recogniser
    read_whole(engine, frames)
    return detector.feeds, recogniser.feeds


def quantise(model: Path, feeds: list[dict], out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_suffix(".prepared.onnx")
    quant_pre_process(str(model), str(prepared), skip_symbolic_shape=True)
    last = [node.name for node in onnx.load(str(prepared)).graph.node[-3:]]
    samples = iter(feeds[:: max(1, len(feeds) // 24)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=last)
    return out


def run_ms(model: Path, x: np.ndarray, runs: int = 10) -> float:
    session = open_session(model, threads=1)
    feed = {session.get_inputs()[0].name: x}
    session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.process_time()
        session.run(None, feed)
        times.append(time.process_time() - started)
    return 1000 * float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    from pipelines.cli.sample_video import write_sample_video

    work = Path(tempfile.mkdtemp(prefix="ocr-int8-"))
    write_sample_video(work / "broadcast.mp4", duration_s=args.seconds, size=(640, 360), speech=False)
    frames = sampled_frames(work / "broadcast.mp4", 1.0, (640, 360))
    detector_feeds, recogniser_feeds = calibration(frames)
    int8 = {DETECTOR_MODEL: quantise(DETECTOR_MODEL, detector_feeds, work / "detector-int8.onnx"),
            RECOGNISER_MODEL: quantise(RECOGNISER_MODEL, recogniser_feeds, work / "recogniser-int8.onnx")}
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    print(f"{len(frames)} frames; onnxruntime {onnxruntime.__version__}; one thread; CPU VNNI: "
          f"{', '.join(sorted(flags & {'avx512_vnni', 'avx_vnni'})) or 'none'}; {time.strftime('%Y-%m-%d')}")
    rng = np.random.default_rng(0)
    inputs = {"detector, 640x352": (DETECTOR_MODEL, next(iter(detector_feeds[0].values()))),
              "recogniser, 320 px": (RECOGNISER_MODEL, rng.uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)),
              "recogniser, 640 px": (RECOGNISER_MODEL, rng.uniform(-1, 1, (1, 3, 48, 640)).astype(np.float32))}
    print("| model run | fp32 CPU ms | int8 CPU ms |\n| --- | ---: | ---: |")
    for name, (model, x) in inputs.items():
        print(f"| {name} | {run_ms(model, x):.1f} | {run_ms(int8[model], x):.1f} |")
    print("\n| int8 | whole reads of all frames, CPU s | frames with the fp32 text |\n| --- | ---: | ---: |")
    reference = None
    for name, detector, recogniser in (("none (fp32)", DETECTOR_MODEL, RECOGNISER_MODEL),
                                       ("recogniser", DETECTOR_MODEL, int8[RECOGNISER_MODEL]),
                                       ("detector", int8[DETECTOR_MODEL], RECOGNISER_MODEL),
                                       ("both", int8[DETECTOR_MODEL], int8[RECOGNISER_MODEL])):
        # OcrEngine opens the module's model paths: pointed at the int8 files for this row.
        ocr_engine.DETECTOR_MODEL, ocr_engine.RECOGNISER_MODEL = detector, recogniser
        engine = OcrEngine(OcrConfig(threads=1))
        started = time.process_time()
        texts = read_whole(engine, frames)
        spent = time.process_time() - started
        reference = reference or texts
        differ = [(a, b) for a, b in zip(reference, texts) if a != b]
        print(f"| {name} | {spent:.2f} | {len(texts) - len(differ)} of {len(texts)} |")
        for a, b in list(dict.fromkeys((tuple(a), tuple(b)) for a, b in differ))[:3]:
            print(f"|  | {list(a)} -> {list(b)} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
