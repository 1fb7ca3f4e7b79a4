"""The OCR models (RapidOCR's PP-OCRv4 detector and recogniser on onnxruntime), driven step by step so that
reading a frame, reading part of one and reading many at once give the same text.

RapidOCR's own ``__call__`` does detection, cropping and recognition of one image in one go. ScreenTextReader
needs the steps apart: detect on a whole frame or on a window of it, recognise only some of the boxes, and
recognise the boxes of many frames (many streams) in one model run.

A text crop is recognised at its own padded width, never at the width of whatever else shares its model run:
RapidOCR pads every crop of a run to the run's widest, which changes the recogniser's output (its SVTR neck
attends over the padding) and costs the padded columns (a 3-line frame: 336 ms with the two short lines padded
to the headline's width, 2-core CPU). So a crop's text is the same read alone, with its frame's other lines,
or with other streams' lines.

Boxes the recogniser reads come from detection on the whole frame (operators/ocr.py). Where the detector sees
a window instead, its boxes move by a pixel or so (the network's receptive field reaches past any margin),
and the recogniser is not robust to that: shifting the box of "BEST COCAINE IN TOWN" on a rendered frame by
one pixel loses the space after COCAINE in 26 of 81 shifts, which is how incremental reads ran words together.
Windows only tell whether new text appeared.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import rapidocr_onnxruntime
from rapidocr_onnxruntime import RapidOCR
from rapidocr_onnxruntime.ch_ppocr_rec.utils import CTCLabelDecode

from operators.config import OcrConfig
from operators.frames import StageError
from operators.onnx_session import CPU, Provider, open_session

# A CTC column whose best guess is "no character" becomes a space when the recogniser gives
# a space at least this probability. On 1064 rendered headlines (7 fonts, 18-32 px, 60% in
# capitals) it took missing spaces from 1360 to 2 for 2 spurious ones; 0.02 missed 17, 0.005
# added 9 (some inside words).
_SPACE_PROBABILITY = 0.01
_REC_HEIGHT = 48  # PP-OCRv4's recogniser input height
_REC_MIN_WIDTH = 320  # and its narrowest input (RapidOCR's rec_img_shape)
# RapidOCR's model files (the version is pinned in pyproject.toml), and the CUDA provider's options: cuDNN
# picks convolution algorithms heuristically instead of searching at every new input shape.
_MODELS = Path(rapidocr_onnxruntime.__file__).parent / "models"
DETECTOR_MODEL, RECOGNISER_MODEL = _MODELS / "ch_PP-OCRv4_det_infer.onnx", _MODELS / "ch_PP-OCRv4_rec_infer.onnx"
_CUDA: Provider = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})


class _SpaceRestoringDecoder:
    """Wraps RapidOCR's CTC decoder: a gap the recogniser thinks may be a space becomes one.

    At a column between two words the recogniser's best guess is usually "no character"
    (the CTC blank) even where a space is its second guess, which runs words of capitals
    together ("STORMWARNING"). Such a column is given the space, with the probability of
    blank plus space (both mean "no letter here"), before the usual decoding.
    """

    def __init__(self, decoder: CTCLabelDecode):
        self._decoder = decoder
        self._space = decoder.dict[" "]
        (self._blank,) = decoder.get_ignored_tokens()

    def __call__(self, preds: np.ndarray) -> list[tuple[str, float]]:
        gap = (preds.argmax(axis=2) == self._blank) & (preds[..., self._space] >= _SPACE_PROBABILITY)
        preds = preds.copy()
        preds[..., self._space] = np.where(gap, preds[..., self._blank] + preds[..., self._space],
                                           preds[..., self._space])
        return [(text, float(confidence)) for text, confidence in self._decoder(preds)]


class OcrEngine:
    """Text boxes of an image (or of a window of it) and the text of crops, many crops per model run."""

    def __init__(self, config: OcrConfig):
        # det_limit_type "max": RapidOCR's default ("min" 736) upscales a 640x360 frame to 1309x736, four times
        # the pixels; "max" leaves an image of at most 960 px as it is, so max_side bounds the cost.
        rapid = RapidOCR(use_cls=False, det_limit_type="max", det_limit_side_len=config.max_side)
        # Its models in sessions of our own (operators/onnx_session.py: threads that sleep between runs; the
        # device asked for or none). Not RapidOCR's det/rec_use_cuda: it moves a model that CUDA does not take
        # to the CPU with a log line, and asks cuDNN for an exhaustive algorithm search at every new input
        # shape (the detector sees windows of many shapes).
        provider = _CUDA if config.device == "cuda" else (CPU, {})
        rapid.text_det.infer.session = open_session(DETECTOR_MODEL, provider, threads=config.threads)
        rapid.text_rec.session.session = open_session(RECOGNISER_MODEL, provider, threads=config.threads)
        self._detector = rapid.text_det
        # The recogniser's session and decoder are RapidOCR 1.4's attributes, not public API: check them on an
        # upgrade (tests/operators/test_ocr.py reads known text through them).
        self._recogniser = rapid.text_rec.session
        self._decode = _SpaceRestoringDecoder(rapid.text_rec.postprocess_op)
        self._crop_boxes = rapid.get_crop_img_list
        self.recognition_batch = config.recognition_batch

    @staticmethod
    def detector_input(image: np.ndarray, max_side: int) -> np.ndarray:
        """An RGB uint8 [H, W, 3] frame as the models take it: BGR (PP-OCR was trained on OpenCV-loaded
        images) with its longest side at most ``max_side`` (never upscaled)."""
        height, width = image.shape[:2]
        scale = max_side / max(height, width)
        if scale < 1:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image[..., ::-1])

    def detect(self, image: np.ndarray, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Text boxes [n, 4, 2] float32 (corners clockwise from top-left, pixels of ``image``) in a
        ``detector_input`` image, or only in ``window`` (x0, y0, x1, y1 pixels) of it."""
        left, top = (0, 0) if window is None else window[:2]
        part = image if window is None else np.ascontiguousarray(image[window[1] : window[3], window[0] : window[2]])
        boxes, _ = _engine_call(self._detector, part)
        if boxes is None or len(boxes) == 0:
            return np.zeros((0, 4, 2), np.float32)
        return np.asarray(boxes, np.float32) + np.array([left, top], np.float32)

    def crops(self, image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
        """The text of each box, cut out straight (a box taller than wide is turned)."""
        return self._crop_boxes(image, [box.copy() for box in boxes])

    def recognise(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """(text, mean character probability) of each crop, in order. Crops of the same padded width (all
        that are at most 320/48 as wide as high: most captions, clocks, scores) share model runs of up to
        ``recognition_batch``; a crop's result does not depend on what it shares one with."""
        widths = [_padded_width(crop) for crop in crops]
        out: list[tuple[str, float]] = [("", 0.0)] * len(crops)
        for width in sorted(set(widths)):
            same = [i for i, w in enumerate(widths) if w == width]
            for start in range(0, len(same), self.recognition_batch):
                chunk = same[start : start + self.recognition_batch]
                inputs = np.stack([_recogniser_input(crops[i], width) for i in chunk])
                (preds,) = _engine_call(self._recogniser, inputs)
                for i, result in zip(chunk, self._decode(preds)):
                    out[i] = result
        return out


def _padded_width(crop: np.ndarray) -> int:
    """The recogniser's input width for a crop alone (RapidOCR's): crops of one width share model runs."""
    return max(_REC_MIN_WIDTH, int(_REC_HEIGHT * crop.shape[1] / crop.shape[0]))


def _recogniser_input(crop: np.ndarray, width: int) -> np.ndarray:
    """float32 [3, 48, width]: the crop at height 48 (aspect kept), in [-1, 1], zero-padded on the right
    (RapidOCR's own normalisation)."""
    resized_width = min(width, math.ceil(_REC_HEIGHT * crop.shape[1] / crop.shape[0]))
    resized = cv2.resize(crop, (resized_width, _REC_HEIGHT)).astype(np.float32).transpose(2, 0, 1)
    out = np.zeros((3, _REC_HEIGHT, width), np.float32)
    out[:, :, :resized_width] = resized / 127.5 - 1.0
    return out


def _engine_call(step, *args):
    try:
        return step(*args)
    except Exception as exc:  # onnxruntime, OpenCV and the engine's own errors alike
        # RapidOCR wraps onnxruntime failures with the whole traceback as the message; its last line is the cause.
        cause = (str(exc).strip().splitlines() or [""])[-1]
        raise StageError("ocr_error", f"{type(exc).__name__}: {cause}", stage="ocr") from exc
