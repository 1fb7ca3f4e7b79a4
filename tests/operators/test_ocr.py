"""ScreenTextReader and TextEmbedder on rendered frames of known text, and on a frame of a real clip."""

from __future__ import annotations

import difflib
import pickle
from pathlib import Path

import av
import numpy as np
import onnxruntime
import pytest
from PIL import Image, ImageDraw, ImageFont
from rapidocr_onnxruntime import RapidOCR

from operators.config import OcrConfig
from operators.frames import FrameBatch, SegmentInfo, StageError
from operators.ocr import ScreenTextReader, TextEmbedder
from operators.ocr_engine import RECOGNISER_MODEL, OcrEngine
from operators.onnx_session import open_session
from pipelines.ingest.snapshots import pack, unpack

HEADLINES = ["STORM WARNING FOR COASTAL TOWNS", "MARKETS RALLY AS RATES FALL", "LOCAL TEAM WINS CHAMPIONSHIP"]
WIDTH, HEIGHT = 640, 360


class CountingEngine(OcrEngine):
    """The real engine, counting detector runs and the pixels they covered, and the text crops recognised."""

    def __init__(self, config: OcrConfig):
        super().__init__(config)
        self.detections = self.detected_pixels = self.recognised = 0

    def detect(self, image, window=None):
        x0, y0, x1, y1 = window or (0, 0, image.shape[1], image.shape[0])
        self.detections += 1
        self.detected_pixels += (x1 - x0) * (y1 - y0)
        return super().detect(image, window)

    def recognise(self, crops):
        self.recognised += len(crops)
        return super().recognise(crops)


class CountingReader(ScreenTextReader):
    """The real reader with a CountingEngine."""

    def __init__(self, config: OcrConfig, embedder: TextEmbedder):
        super().__init__(config, embedder)
        self.engine = CountingEngine(config)


@pytest.fixture(scope="module")
def embedder() -> TextEmbedder:
    return TextEmbedder()


@pytest.fixture(scope="module")
def reader(embedder: TextEmbedder) -> CountingReader:
    """One reader for the module (the engine loads once); tests keep apart by stream id."""
    return CountingReader(OcrConfig(), embedder)


def frame(headline: str | None = None, corners: tuple[str, str] | None = None) -> np.ndarray:
    """A 640x360 broadcast frame: a sky gradient; dark ``headline`` on a light banner in the lower
    third, as large as fits (36 px at most); ``corners`` in white at the top left and top right."""
    y = np.linspace(0.0, 1.0, HEIGHT)[:, None, None]
    sky = np.array([30, 60, 110]) * (1 - y) + np.array([70, 110, 160]) * y
    image = Image.fromarray(np.broadcast_to(sky, (HEIGHT, WIDTH, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if headline is not None:
        draw.rectangle([0, 252, WIDTH, 324], fill=(236, 236, 228))
        size = 36
        while draw.textlength(headline, font=ImageFont.load_default(size=size)) > WIDTH - 40:
            size -= 2
        draw.text((20, 270), headline, fill=(20, 20, 30), font=ImageFont.load_default(size=size))
    if corners is not None:
        font = ImageFont.load_default(size=28)
        draw.text((20, 20), corners[0], fill=(255, 255, 255), font=font)
        right = WIDTH - 20 - draw.textlength(corners[1], font=font)
        draw.text((right, 20), corners[1], fill=(255, 255, 255), font=font)
    return np.asarray(image)


def batch(images: list[np.ndarray], start_s: float = 0.0, stream: str = "cam-1") -> FrameBatch:
    info = SegmentInfo("t1", stream, int(start_s), 1_700_000_000.0 + start_s, start_s, float(len(images)))
    return FrameBatch(info, start_s + np.arange(len(images), dtype=np.float64), np.stack(images))


def similarity(a: str, b: str) -> float:
    """Character similarity of two texts, ignoring case and how whitespace runs."""
    return difflib.SequenceMatcher(None, " ".join(a.upper().split()), " ".join(b.upper().split())).ratio()


def word_overlap(expected: str, got: str) -> float:
    words = expected.upper().split()
    return sum(word in set(got.upper().split()) for word in words) / len(words)


@pytest.mark.parametrize("headline", HEADLINES)
def test_headline_is_read_in_the_lower_third(reader: CountingReader, headline: str):
    (text,) = reader.read(batch([frame(headline)], stream=f"headline-{headline}"))
    assert not text.reused
    (line,) = text.lines
    assert similarity(line.text, headline) >= 0.9, line.text
    # The recogniser alone runs words of capitals together (overlap 0 for these); one miss in five words is allowed.
    assert word_overlap(headline, line.text) >= 0.6, line.text
    assert line.confidence >= reader.config.min_confidence
    assert len(line.box) == 4
    assert all(2 / 3 <= y <= 1 and 0 <= x <= 1 for x, y in line.box), line.box
    assert text.embedding.shape == (384,) and text.embedding.dtype == np.float32
    assert np.linalg.norm(text.embedding) == pytest.approx(1.0, abs=1e-5)


def test_lines_come_in_reading_order(reader: CountingReader):
    # "LIVE" (top right) sits higher than "14:05" (top left): same row, so left comes first.
    (text,) = reader.read(batch([frame(HEADLINES[1], corners=("14:05", "LIVE"))], stream="order"))
    assert [line.text for line in text.lines[:2]] == ["14:05", "LIVE"]
    assert len(text.lines) == 3 and similarity(text.lines[2].text, HEADLINES[1]) >= 0.9
    assert text.text == "\n".join(line.text for line in text.lines)


def test_lines_shorter_than_min_text_chars_are_dropped(reader: CountingReader):
    # The engine reads "ON" (with min_text_chars=1 it is kept), but 2 characters are below the default 3.
    (text,) = reader.read(batch([frame(HEADLINES[1], corners=("LIVE", "ON"))], stream="short"))
    assert [line.text for line in text.lines[:1]] == ["LIVE"] and len(text.lines) == 2


def test_unchanged_frame_is_reused_without_ocr(reader: CountingReader):
    image = frame(HEADLINES[0])
    # Sensor and compression noise of a static shot is no change.
    noisy = np.clip(image + np.random.default_rng(0).integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    calls = reader.engine.detections
    first = reader.read(batch([image, noisy, image], stream="static"))
    later = reader.read(batch([image], start_s=3.0, stream="static"))  # state carries across segments
    assert reader.engine.detections == calls + 1
    assert [t.reused for t in first + later] == [False, True, True, True]
    assert [t.pts_s for t in first + later] == [0.0, 1.0, 2.0, 3.0]
    for text in first[1:] + later:
        assert text.lines == first[0].lines
        assert text.embedding is first[0].embedding
    assert not first[0].embedding.flags.writeable  # shared, so nobody may change it in place


def test_changed_headline_is_read_again(reader: CountingReader):
    calls = reader.engine.detections
    texts = reader.read(batch([frame(HEADLINES[1]), frame(HEADLINES[2]), frame(HEADLINES[2])], stream="swap"))
    assert reader.engine.detections == calls + 2
    assert [t.reused for t in texts] == [False, False, True]
    assert similarity(texts[1].text, HEADLINES[2]) >= 0.9
    assert float(texts[0].embedding @ texts[1].embedding) < 0.5


def test_a_changed_headline_is_the_only_line_recognised_again(reader: CountingReader):
    before, after = frame(HEADLINES[0], corners=("14:05", "LIVE")), frame(HEADLINES[2], corners=("14:05", "LIVE"))
    regions, recognised, kept = reader.stats.regions, reader.engine.recognised, reader.stats.lines_kept
    first, second = reader.read(batch([before, after], stream="regions"))
    assert reader.stats.regions == regions + 1
    # The first frame's 3 lines, then the headline and at most one corner caption (the detector can move a box
    # by a pixel when text near it changed: such a box is read again).
    assert recognised + 3 + 1 <= reader.engine.recognised <= recognised + 3 + 2
    assert reader.stats.lines_kept >= kept + 1
    assert [line.text for line in second.lines[:2]] == ["14:05", "LIVE"]
    assert any(line in first.lines for line in second.lines[:2])  # kept as it was, not read again
    assert [line.text for line in second.lines] == [line.text for line in reader.recognise(after)]
    assert similarity(second.lines[2].text, HEADLINES[2]) >= 0.9
    assert float(first.embedding @ second.embedding) < 0.5


def test_a_change_away_from_text_is_looked_at_only_where_it_changed(reader: CountingReader):
    """A shape moving in the sky: the detector sees a window around it, finds no text, and the lines stand."""
    before = frame(HEADLINES[1], corners=("14:05", "LIVE"))
    after = before.copy()
    after[100:190, 260:380] = (250, 250, 250)
    (first,) = reader.read(batch([before], stream="shape"))
    pixels, recognised = reader.engine.detected_pixels, reader.engine.recognised
    (second,) = reader.read(batch([after], start_s=1.0, stream="shape"))
    assert not second.reused and reader.stats.regions > 0
    assert 0 < reader.engine.detected_pixels - pixels < WIDTH * HEIGHT / 3
    assert reader.engine.recognised == recognised
    assert second.lines == first.lines and second.embedding is first.embedding


def test_a_cut_is_read_whole(reader: CountingReader):
    whole = reader.stats.whole
    reader.read(batch([frame(HEADLINES[0]), frame(HEADLINES[1], corners=("NEWS", "LIVE"))[::-1]], stream="cut"))
    assert reader.stats.whole == whole + 2  # the first frame, then a picture changed all over


def test_frame_without_text_has_no_lines_and_no_embedding(reader: CountingReader):
    (text,) = reader.read(batch([frame()], stream="empty"))
    assert (text.lines, text.embedding, text.text, text.reused) == ([], None, "", False)


def test_state_is_per_stream_and_survives_snapshot_and_restore(reader: CountingReader):
    image = frame(HEADLINES[2])
    calls = reader.engine.detections
    (first,) = reader.read(batch([image], stream="a"))
    (other,) = reader.read(batch([image], stream="b"))
    assert not other.reused and reader.engine.detections == calls + 2  # another stream's read is not reused
    state = pickle.loads(pickle.dumps(reader.snapshot()))
    reader.forget("t1", "a")
    assert not reader.read(batch([image], start_s=1.0, stream="a"))[0].reused
    reader.restore(state)
    (again,) = reader.read(batch([image], start_s=2.0, stream="a"))
    assert again.reused and again.lines == first.lines
    np.testing.assert_array_equal(again.embedding, first.embedding)
    assert reader.engine.detections == calls + 3
    with pytest.raises(ValueError, match="version"):
        reader.restore({**state, "version": 0})


def test_one_stream_is_handed_over_and_taken_back_alone(reader: CountingReader):
    """What a live OCR actor does when it evicts a quiet stream and the stream returns (pipelines/ingest/idle.py)."""
    image = frame(HEADLINES[0])
    (first,) = reader.read(batch([image], stream="leaves"))
    state = unpack(pack(reader.snapshot_stream("t1", "leaves")))
    reader.forget("t1", "leaves")
    assert reader.snapshot_stream("t1", "leaves") is None
    calls = reader.engine.detections
    reader.restore_stream("t1", "leaves", state)
    (back,) = reader.read(batch([image], start_s=5.0, stream="leaves"))
    assert back.reused and back.lines == first.lines and reader.engine.detections == calls  # not read again


def test_engine_failure_is_a_stage_error(embedder: TextEmbedder):
    broken = ScreenTextReader(OcrConfig(), embedder)
    # The detector given the recogniser's model: onnxruntime fails on the first frame.
    broken.engine._detector = RapidOCR(use_cls=False, det_model_path=str(RECOGNISER_MODEL)).text_det
    with pytest.raises(StageError) as error:
        broken.read(batch([frame(HEADLINES[0])]))
    assert (error.value.code, error.value.stage) == ("ocr_error", "ocr")
    assert "Traceback" not in error.value.reason


CUDA_PROVIDER = "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(CUDA_PROVIDER, reason="this onnxruntime has the CUDA provider")
@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own word for it
def test_cuda_without_onnxruntimes_cuda_provider_is_refused_not_read_on_the_cpu(embedder: TextEmbedder):
    with pytest.raises(RuntimeError, match="no CUDAExecutionProvider.*install onnxruntime-gpu"):
        ScreenTextReader(OcrConfig(device="cuda"), embedder)


@pytest.mark.filterwarnings("ignore:Specified provider")  # onnxruntime's own word for it
def test_a_provider_that_does_not_take_the_model_is_refused():
    with pytest.raises(RuntimeError, match="asked for on NoSuchExecutionProvider but onnxruntime put it on CPU"):
        open_session(RECOGNISER_MODEL, ("NoSuchExecutionProvider", {}))


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_the_models_run_in_sessions_whose_threads_sleep_between_runs(threads):
    engine = OcrEngine(OcrConfig(threads=threads))
    for session in (engine._detector.infer.session, engine._recogniser.session):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert options.intra_op_num_threads == (threads or 0)  # 0: onnxruntime's default, a thread per core


def read_lines(reader: ScreenTextReader) -> list[list[tuple[str, tuple]]]:
    frames = [frame(HEADLINES[0]), frame(HEADLINES[1], corners=("14:05", "LIVE")), frame(HEADLINES[2])]
    return [[(line.text, line.box) for line in text.lines] for text in reader.read(batch(frames, stream="placed"))]


@pytest.mark.skipif(not CUDA_PROVIDER, reason="no onnxruntime CUDA provider")
def test_on_cuda_the_same_text_is_read_as_on_the_cpu(embedder: TextEmbedder):
    on_gpu = ScreenTextReader(OcrConfig(device="cuda", recognition_batch=32), embedder)
    assert on_gpu.engine._recogniser.session.get_providers()[0] == "CUDAExecutionProvider"
    got, want = read_lines(on_gpu), read_lines(ScreenTextReader(OcrConfig(), embedder))
    assert [[text for text, _ in lines] for lines in got] == [[text for text, _ in lines] for lines in want]
    for lines, expected in zip(got, want):
        for (_, box), (_, expected_box) in zip(lines, expected):
            np.testing.assert_allclose(box, expected_box, atol=2 / WIDTH)  # a pixel or two of the frame


def test_a_disabled_stage_builds_no_reader(embedder: TextEmbedder):
    with pytest.raises(ValueError, match="enabled"):
        ScreenTextReader(OcrConfig(enabled=False), embedder)


@pytest.mark.parametrize(
    "query, expected",
    [
        ("storm warning on the coast", HEADLINES[0]),
        ("hurricane alert for seaside villages", HEADLINES[0]),
        ("stock prices go up after interest rate cut", HEADLINES[1]),
        ("shares climb as borrowing gets cheaper", HEADLINES[1]),
        ("home side takes the title", HEADLINES[2]),
        ("our club are champions", HEADLINES[2]),
    ],
)
def test_embedder_ranks_the_paraphrased_headline_first(embedder: TextEmbedder, query: str, expected: str):
    headlines = embedder.embed(HEADLINES)
    scores = headlines @ embedder.embed([query])[0]
    assert HEADLINES[int(np.argmax(scores))] == expected, scores


def test_embeddings_are_normalised_float32(embedder: TextEmbedder):
    vectors = embedder.embed(["LIVE", "a much longer line of on-screen text " * 40])  # past the 256-token limit
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_a_text_query_finds_the_frame_whose_text_was_read(reader: CountingReader, embedder: TextEmbedder):
    texts = reader.read(batch([frame(headline) for headline in HEADLINES], stream="search"))
    frames = np.stack([t.embedding for t in texts])
    queries = embedder.embed(["storm warning on the coast", "stock prices go up after interest rate cut",
                              "home side takes the title"])
    np.testing.assert_array_equal((queries @ frames.T).argmax(axis=1), [0, 1, 2])


def test_a_real_clip_frame_gives_well_formed_results(reader: CountingReader, real_video_dir: Path):
    with av.open(str(real_video_dir / "friday.mp4")) as container:
        images = [f.to_ndarray(format="rgb24") for _, f in zip(range(31), container.decode(video=0))][::30]
    texts = reader.read(batch(images, stream="friday"))
    assert [t.pts_s for t in texts] == [0.0, 1.0] and not texts[0].reused
    for text in texts:
        for line in text.lines:
            assert line.text and line.confidence >= reader.config.min_confidence
            assert len(line.box) == 4 and all(0 <= v <= 1 for corner in line.box for v in corner)
        if text.lines:
            assert text.embedding.shape == (384,)
        else:
            assert text.embedding is None
