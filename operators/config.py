"""The configuration sections of the operators: one frozen pydantic model per stage.

The root config (pipelines/config.py) composes these with the sections of the floors above; an operator
takes only its own section, so it never imports anything above operators/.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DropMode = Literal["feature", "pixel"]
BoundarySignal = Literal["drop_ratio", "curvature"]


class Section(BaseModel):
    """Base of every layer's config section: frozen, and a misspelt key is an error, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class DecodeConfig(Section):
    sample_fps: float = Field(1.0, gt=0, description="Frames per second kept from each stream.")
    keyframes_only: bool = Field(
        False, description="Decode only keyframes (FFmpeg skip_frame=NONKEY): far cheaper when sample_fps <= keyframe "
        "rate. Closed captions of H.264 and HEVC are still read from every packet (operators/cc_data.py); other "
        "codecs' only from the frames decoded (a warning says so).")
    skip_unsampled: bool = Field(
        False, description="A full decode decodes only what its samples need: non-reference frames that are not "
        "samples are skipped (FFmpeg skip_frame=NONREF) and decoding stops at the segment's last sample. The same "
        "frames come out, ~3x cheaper at 1 frame/s on 2 s GOPs with B-frames (BENCHMARKS.md). Closed captions "
        "of H.264 and HEVC are read from every packet, as with keyframes_only; a damaged frame after the last "
        "sample is not seen.")
    max_pixels: int = Field(3840 * 2160, description="Frames larger than this are rejected as oversize (dead letter).")
    containers: tuple[str, ...] = Field(
        ("mpegts", "mp4", "mov", "matroska", "webm", "flv", "h264", "hevc"),
        description="FFmpeg demuxers a segment's `container` may name; others are dead-lettered (bad_container). "
        "Never add hls, dash, concat or other playlist demuxers: they open nested URLs and local files.")
    deadline_s: float = Field(
        30.0, gt=0, description="Wall-clock budget for decoding one segment (a ~2 s segment takes ~0.1-0.5 s); "
        "past it the segment is dead-lettered (decode_timeout). Checked between packets and frames.")
    thumbnail_px: int = Field(160, description="Longest side of the JPEG thumbnail kept per frame.")
    hardware: Literal["cpu", "nvdec"] = Field(
        "cpu", description="nvdec: full decode on the GPU's video decoders through FFmpeg's <codec>_cuvid (PyAV), "
        "for sampling that needs every frame decoded. keyframes_only stays on the CPU (cuvid ignores skip_frame; "
        "one keyframe is cheap on a core). Where cuvid cannot open (no GPU or driver, a codec without cuvid) the "
        "CPU decoder is used and a warning says so.")
    frame_px: int = Field(
        640, ge=32, description="Longest side of decoded frames. The encoder resizes to its own input; on-screen "
        "text reading needs more pixels than a ViT does (ocr.max_side), so this follows OCR, not the encoder.")
    audio: bool = Field(
        False, description="Also decode the segment's audio track to float32 mono 16 kHz (PyAV's resampler) for "
        "speech recognition. Needed by transcript.asr; off otherwise (it costs a decode of the audio).")


class EncodeConfig(Section):
    model: str = Field(
        "", description="Hugging Face model id or local path. Empty in the offline profile: a tiny model built locally."
    )
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    batch_frames: int = Field(32, ge=1, description="Frames per encoder forward pass, across streams.")
    max_batch_wait_ms: float = Field(20.0, ge=0, description="How long a partial batch waits for more frames.")
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel of the tower: fused scaled-dot-product (torch SDPA: flash or "
        "memory-efficient kernels on a GPU) or transformers' eager matmul-softmax-matmul. Eager only to debug.")
    compile: bool = Field(
        False, description="torch.compile the tower's forward pass (cuda only), compiled at its first batch "
        "(~15 s), once more for a dynamic batch size. SigLIP-B/16 on an H100: +57% on noise-like frames, +9% on "
        "mostly still ones (BENCHMARKS.md); not yet measured with live partial batches, hence off.")
    preprocess: Literal["torch", "triton"] = Field(
        "torch", description="How frames become the tower's input (and, on the fused path, the pixel-mode drop's "
        "cells): torch (convert the batch to float, then resize and pool it) or triton (cuda only: one kernel per "
        "pass reads the uint8 frames once; operators/triton_frames.py; needs the triton package that torch's CUDA "
        "wheels bring). Same results within float rounding; see BENCHMARKS.md for what it gains.")
    fused: Literal["auto", "on", "off"] = Field(
        "auto", description="Encode and compress in one step on the encoder's device (operators/encode_compress.py): "
        "only kept tokens leave it. The encode actor then also holds the streams' compression state and no "
        "compress actor runs. auto: on when device is cuda and neither cache.skip_frames nor cache.token_cache is "
        "set (the fused path runs every frame through the tower in full); on: also on the CPU, where it gives the "
        "separate steps' results. SigLIP-B/16 on an H100: 81-97% of the bare tower against 4% (BENCHMARKS.md).")

    @model_validator(mode="after")
    def _triton_runs_on_cuda(self) -> EncodeConfig:
        # Refused when the config loads, not when an encode actor starts: a gpu-profile config moved to the CPU
        # (encode.device = cpu) must say what else to change.
        if self.preprocess == "triton" and self.device != "cuda":
            raise ValueError("encode.preprocess='triton' runs on cuda: with encode.device='cpu' set "
                             "encode.preprocess='torch'")
        return self


class CompressConfig(Section):
    drop_threshold: float = Field(
        0.5,
        ge=-1.0,
        le=1.0,
        description="Differential token drop: a token whose cosine to the same position in the previous frame is "
        "above this is dropped. Lower drops more (0.5 as evaluated in TimeChat-Online, 0.25 in its demo).",
    )


class OcrConfig(Section):
    """On-screen text reading (operators/ocr.py), re-read only where the picture changed."""

    enabled: bool = Field(
        True, description="Run the stage. The pipeline builds no reader when False (building one is then an error)."
    )
    min_confidence: float = Field(
        0.6, ge=0.0, le=1.0,
        description="Lines the recogniser is less sure of (mean character probability) are dropped. Higher drops "
        "more misreads of textures and logos, and more real but small or blurred text.",
    )
    change_threshold: float = Field(
        0.01, ge=0.0, le=1.0,
        description="A frame is read again when the mean absolute grey difference (0..1, on a 128x72 thumbnail) to "
        "the last read frame of its stream is at or above this. Lower re-reads more often (cost); higher reuses "
        "stale text longer. 0.01 re-reads on cuts, not on the noise of a static shot (~0.003). Whatever the value, a "
        "frame whose picture changed under a line of the last read (a swapped headline, a ticking score) is read "
        "again; 0 reads every frame.",
    )
    max_side: int = Field(
        960, ge=32,
        description="Frames are downscaled to this longest side before OCR (never upscaled), to bound its cost. "
        "Text set below ~8 px after scaling is lost: a 1080p ticker set at 16-22 px reads at 960 and is garbled at "
        "640. A frame with 3 lines costs ~250 ms at 960 and ~190 ms at 640 on 2 CPU cores.",
    )
    min_text_chars: int = Field(
        3, ge=1, description="Lines with fewer non-space characters are dropped: lone letters are mostly misreads."
    )
    threads: int | None = Field(
        None, ge=1, description="onnxruntime threads per OCR model (they sleep between runs: "
        "operators/onnx_session.py). None: its default, one per core of the host, each pinned to its core, whatever "
        "the actor was given: set it to the actor's num_cpus on shared hosts. With device cuda, 1 (the gpu "
        "profile's): the threads only run the few operators left on the CPU, and one halved the host CPU of a read "
        "on an H100 host against one per core.")
    incremental: bool = Field(
        True, description="A changed frame is read again only where it changed, with the text a whole read gives: "
        "a change touching no line of the last read is looked at by the detector in windows around it only (no "
        "text there: the lines stand); otherwise the detector sees the whole frame and only text boxes that are "
        "new, moved or under the change are recognised. False reads changed frames whole. BENCHMARKS.md "
        "(issue 18) has what it saves.")
    detect_in_windows: bool | None = Field(
        None, description="Incremental reads: whether a change touching no line is looked at by the detector in "
        "windows around it (cheap on a CPU: the detector's cost follows the pixels it sees) or in the whole frame, "
        "whose boxes then serve the read if it holds new text. None: windows on the CPU, the whole frame with "
        "device cuda, where onnxruntime plans every new input shape once (45-60 ms on an H100) and runs a seen one "
        "in ~2.5 ms, and windows come in many shapes (BENCHMARKS.md, 'OCR on the GPU: the shapes').")
    max_changed_fraction: float = Field(
        0.35, gt=0.0, le=1.0, description="Incremental reads: when the changed regions cover more than this share "
        "of the frame (a cut, a camera move) the whole frame is read, which then costs less than the regions.")
    recognition_batch: int = Field(
        1, ge=1, description="Text crops of the same input width (all streams' changed lines of the calls read "
        "together) recognised per model run. A crop's text does not depend on it. 1 on CPUs: onnxruntime's CPU "
        "kernels for this recogniser cost more per line in larger runs (an 832 px wide input: 54 ms alone, "
        "~100 ms each in runs of 4-16 on 2 cores; BENCHMARKS.md, issue 18). 1 on CUDA too: read across 8 streams on "
        "an H100 host, runs of 8 differed from runs of 1 within the run-to-run spread (18.6 against 20.9 ms of "
        "host CPU a frame with ocr.threads 1, 30.6 against 29.0 with a thread per core).")
    max_lag_s: float | None = Field(
        None, gt=0.0, description="Live load shedding. A changed frame that reaches the live OCR actor more than "
        "this many seconds after its segment ended (the segment's wall clock), and whose change touches text (or "
        "is a cut), is not read: it is stored as 'text not read' (FrameText.unread; the frame's text_read is "
        "false in memory and the API), never as empty or as the last read's text, and counted in "
        "livelens_ocr_frames_unread_total. Unchanged frames still reuse the last read, and a change away from "
        "text is still checked in windows (cheap). The reader then catches up instead of falling further behind, "
        "and the stream's text has holes where it was behind. None: every changed frame is read, however late. "
        "Backfill and replay never shed. Set it on hosts that must stay live under peaks (docs/operations.md, "
        "'OCR under load'); the wall clock is the publisher's, so a publisher whose clock runs behind the "
        "cluster's makes every frame look late.")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the detector and recogniser run. cuda (the gpu profile's): onnxruntime's CUDA "
        "execution provider, which only the onnxruntime-gpu build has (docs/deploy.md says how to install it); "
        "incremental reads of the sample broadcast at 13.5 ms a frame and 17.9 ms of host CPU on an H100 host with "
        "ocr.threads 1, against 24 and 46 ms on two CPU threads (BENCHMARKS.md, 'OCR on the GPU: the shapes'). "
        "A reader asked for cuda where that provider is missing or does not take the models refuses to start: it "
        "never reads on the CPU instead. The OCR actors then hold placement.ocr.num_gpus.")


class TranscriptConfig(Section):
    """What was said (operators/transcribe.py): closed captions, subtitle tracks and speech recognition, as
    transcript lines stored and searched beside on-screen text."""

    enabled: bool = Field(True, description="Run the transcript stage. Off: no caption, subtitle or speech lines.")
    captions: bool = Field(True, description="Read CEA-608 closed captions (channel CC1) from the video's A53 data.")
    subtitles: bool = Field(True, description="Keep the cues of text subtitle tracks the segments carry.")
    asr: bool = Field(
        False, description="Recognise speech in the audio where no caption or subtitle covers it. Needs "
        "decode.audio and a speech recogniser (operators/speech); off by default, on the CPU profile in particular.")
    asr_pause_s: float = Field(
        30.0, ge=0, description="Recognition pauses on a stream while its captions showed words within this many "
        "seconds (captions are the broadcaster's own words). A caption is known once it leaves the screen, so "
        "the segments before a stream's first caption is reported are still recognised.")
    asr_max_window_s: float = Field(
        20.0, gt=1.0, description="Each stream's audio is recognised in windows that end in a pause (operators/"
        "speech_windows.py); a stretch of speech this long without one is recognised whole. Bounds the audio "
        "buffered per stream and how late a recognised line is stored (it comes with the segment its window "
        "closes in).")
    max_caption_s: float = Field(
        20.0, gt=0, description="A caption row seen on screen longer than this (it stays while the screen "
        "changes around it) is stored as a line at the next change and starts again, so it is searchable before it "
        "leaves the screen.")


class PruneConfig(Section):

    keep_fraction: float = Field(
        60 / 196, gt=0.0, le=1.0,
        description="Per-frame budget as a fraction of the tokens per frame, rounded (at least 1): 60 of SigLIP's "
        "196 as in STC-Pruner, 20 of the tiny CLIP's 64. Lower stores less and loses more of each frame's content.",
    )


class DropConfig(Section):

    mode: DropMode = Field("feature", description="What a token is compared on: its features, or its frame patch.")
    pixel_threshold: float = Field(
        0.03, ge=0.0, le=1.0,
        description="Pixel mode: a token is dropped when its patch's mean absolute RGB difference to the previous "
        "frame is below this. 0.03 is ~5x the H.264 noise of a static real camera (0.003-0.006 per patch); lower "
        "keeps noise, higher drops slow or small motion.",
    )


class FrameSkipConfig(Section):
    grid: tuple[int, int] = Field(
        (16, 16), description="(rows, cols) of patches the change test divides a frame into, whatever its size."
    )
    patch_threshold: float = Field(
        0.03, ge=0.0, le=1.0,
        description="A patch has changed when its mean absolute RGB difference (0..1) exceeds this. 0.03 is ~5x the "
        "H.264 noise of a static real camera (0.003-0.006); a person crossing a patch moves it by 0.05-0.3.",
    )
    changed_fraction: float = Field(
        0.02, ge=0.0, le=1.0,
        description="A frame is skipped when fewer than this fraction of its patches changed. Higher skips more and "
        "lets small movements (a hand, a ticker) go unseen until the next forced refresh.",
    )
    max_skip: int = Field(
        10, ge=0,
        description="At most this many frames in a row reuse old features; the next is encoded whatever changed. "
        "Bounds how stale a stream's features get (slow drift never crosses the per-frame test). 0 never skips.",
    )


class ViTCacheConfig(Section):
    reference_every: int = Field(
        2, ge=1, description="Every n-th frame of a stream is a reference, computed in full (STC-Cacher: 2). "
        "1 computes every frame in full.",
    )
    recompute_fraction: float = Field(
        0.25, gt=0.0, le=1.0,
        description="Fraction of tokens recomputed per layer on other frames, the least similar to the reference "
        "(STC-Cacher: 25%). 1.0 recomputes everything and equals full compute.",
    )
    cut_similarity: float = Field(
        0.8, ge=-1.0, le=1.0,
        description="A frame whose first-layer keys have a mean cosine to the previous frame's below this is a scene "
        "cut and becomes a reference at once (an extension: STC refreshes only periodically). On the sample "
        "broadcast at 1 fps, random-weight CLIP and SigLIP-B/16 towers give 0.88-0.97 within moving scenes, 1.0 in "
        "still ones and 0.13-0.78 at cuts; re-check with real weights. -1 disables it.",
    )


class CacheConfig(Section):
    """Encoder-side caching: frame skipping and the token cache inside the ViT."""

    skip_frames: bool = Field(
        False, description="Reuse the last features for frames whose picture barely changed (no ViT run). "
        "BENCHMARKS.md: 37-44% of frames skipped on broadcast / static-camera content at 1 fps.")
    skip: FrameSkipConfig = FrameSkipConfig()
    token_cache: bool = Field(
        False, description="Run CLIP / SigLIP / ViT towers through the token cache (settings in `vit`): "
        "non-reference frames recompute only their least similar tokens. Other architectures compute in full "
        "and the encoder says so in its log. BENCHMARKS.md: 22-24% encoder time saved on CPU, none on an H100.")
    vit: ViTCacheConfig = ViTCacheConfig()


class BoundaryConfig(Section):

    signal: BoundarySignal = Field("drop_ratio", description="Which per-frame change signal is thresholded.")
    k_sigma: float = Field(
        2.5, gt=0.0, description="Boundary when the signal exceeds mean + k_sigma * std of the current event "
        "(2-3 in the method). Lower finds more boundaries, and more false ones."
    )
    min_rise: float = Field(
        0.25, ge=0.0, description="The signal must also exceed the event's mean by at least this. On the sample "
        "broadcast's pixel-mode drop signal, cuts rise by 0.6-0.9 and headline swaps in the banner by 0.1-0.2."
    )
    min_event_s: float = Field(
        2.0, ge=0.0, description="Shortest event: no boundary sooner than this after the previous one."
    )


class AnswerConfig(Section):
    model: str = Field("", description="HF causal LM or VLM id/path. Empty: extractive answers from evidence.")
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_new_tokens: int = 64
    max_evidence_frames: int = 8
    compile: bool = Field(
        False, description="Compile the language model's norms and MLPs with torch.compile (one graph each, shared "
        "by every decoder layer, any prompt length) when the model loads (12 s for a 7B model on an H100). It fuses "
        "their memory-bound elementwise steps: a 7B prefill of 3,275 positions 90 -> 81 ms, time to first token "
        "107 -> 98 ms (64 evidence frames); short prompts (16 frames) gain nothing, the host's launches bound them "
        "(BENCHMARKS.md, 'Answer latency with answer.compile'). Attention stays eager: it writes the KV cache, "
        "whose per-layer state would make a graph per layer. Llama-family layers (a self_attn module beside the "
        "rest); other models are refused. On CUDA, Triton builds the kernels with the host's C compiler (gcc; "
        "k8s/Dockerfile installs it).")


class SpeechConfig(Section):
    """Speech recognition on the audio track (operators/speech/): voice activity detection, then ASR on speech only."""

    engine: Literal["none", "pocketsphinx", "whisper"] = Field(
        "none", description="none: no recognition (captions and subtitles still count). pocketsphinx: the offline CPU "
        "profile, en-us models from its wheel (0.3-0.5 CPU s per second of speech; word error rate 0.30 on read "
        "speech, 0.92 on 1940 film dialogue: BENCHMARKS.md). whisper: a Whisper-family checkpoint through "
        "transformers (`model`), for a GPU.")
    model: str = Field(
        "", description="whisper: Hugging Face model id or local path (e.g. openai/whisper-small). pocketsphinx: a "
        "directory holding an acoustic model folder, `<language>.lm.bin` and `cmudict-<language>.dict` laid out "
        "like the wheel's model/en-us; empty: the wheel's en-us models.")
    language: str = Field(
        "en", min_length=2, description="Language of the speech, and of the transcript lines (ISO 639-1). whisper: "
        "passed to generation; pocketsphinx: must match its models (the wheel ships en-us only).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="whisper only; pocketsphinx runs on the CPU.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="whisper only.")
    batch_regions: int = Field(
        16, ge=1, description="whisper: speech regions per generate call (across one call's audio).")
    vad: bool = Field(
        True, description="Run voice activity detection first and recognise only the speech it finds. Off only to "
        "measure what it buys: pocketsphinx then reads every second, silence and noise included, and invents words "
        "there.")
    vad_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Silero VAD speech probability a 32 ms frame must reach to start speech; "
        "speech ends below this minus 0.15 (silero's hysteresis). Higher skips quiet or noisy speech; lower "
        "sends music and noise to ASR, where pocketsphinx hallucinates words.")
    min_speech_s: float = Field(
        0.25, ge=0.0, description="Speech regions shorter than this are dropped (clicks, coughs).")
    min_silence_s: float = Field(
        0.3, ge=0.0, description="A pause must last this long to split two speech regions.")
    speech_pad_s: float = Field(
        0.1, ge=0.0, description="Seconds of audio kept either side of a region: word onsets and tails fall "
        "below the VAD threshold.")
    max_region_s: float = Field(
        28.0, gt=1.0, le=30.0, description="Longer speech regions are cut (at the quietest frame of their last "
        "third): Whisper reads at most 30 s at a time, and shorter utterances keep pocketsphinx's search narrow.")
    min_word_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="pocketsphinx: words whose posterior is below this are left out of the "
        "line (their text and timing stay out of search). 0 keeps every word; the line's confidence is the mean.")
