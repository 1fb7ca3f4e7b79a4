"""The answer stage: extractive answers, and the VLM and text-LM paths on tiny random models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import pytest
from transformers import AutoTokenizer

from operators.answer import Answerer, EvidenceItem
from operators.config import AnswerConfig
from operators.frames import StageError
from operators.tiny_models import PATCH

TOKENS_PER_FRAME = PATCH * PATCH
VLM_DIM = 64  # hidden size of the tiny VLM's language model


def item(stream: str, t: float, score: float, *, text: str = "", dim: int | None = VLM_DIM,
         dtype: type = np.float32) -> EvidenceItem:
    """A two-second frame ``t`` seconds into a stream that started at 10:00:00 UTC."""
    tokens = None if dim is None else np.random.default_rng(int(t * 10)).standard_normal((TOKENS_PER_FRAME, dim))
    return EvidenceItem(
        stream_id=stream, t_start=t, t_end=t + 2.0, wallclock_start=f"2024-05-01T10:00:{int(t):02d}+00:00",
        score=score, tokens=None if tokens is None else tokens.astype(dtype),
        positions=None if tokens is None else np.arange(TOKENS_PER_FRAME), text=text,
    )


def frames(n: int, **kwargs) -> list[EvidenceItem]:
    """n frames of stream s, best score first and latest first, like retrieval hands them over."""
    return [item("s", 2.0 * (n - i), 0.9 - 0.05 * i, **kwargs) for i in range(n)]


@pytest.fixture(scope="session")
def vlm(tiny_models: dict[str, Path]) -> Answerer:
    return Answerer(AnswerConfig(max_new_tokens=8), tiny_models["vlm"])


@pytest.fixture(scope="session")
def llm(tiny_models: dict[str, Path]) -> Answerer:
    return Answerer(AnswerConfig(max_new_tokens=8), tiny_models["llm"])


# --- extractive -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("question", "evidence", "max_frames", "expected_in_order", "used"),
    [
        pytest.param(
            "who entered?",
            [item("cam2", 30.0, 0.91, text="EXIT"), item("cam1", 12.0, 0.83), item("cam1", 20.0, 0.70)],
            8,
            ["this answer is extractive", 'Best matches for "who entered?"', "stream cam1 at 12.0-14.0 s",
             "score 0.83", "stream cam1 at 20.0-22.0 s", "stream cam2 at 30.0-32.0 s", 'on-screen text "EXIT"'],
            3,
            id="chronological-with-text",
        ),
        pytest.param(
            "who entered?", [], 8,
            ["this answer is extractive", 'Nothing in memory matched "who entered?" in the requested scope.'], 0,
            id="no-evidence",
        ),
        pytest.param(
            "", [item("cam1", 4.0, 0.5)], 8, ["Best matches for the query", "stream cam1 at 4.0-6.0 s"], 1,
            id="image-query-without-text",
        ),
        pytest.param(
            "q", [item("a", 40.0, 0.9), item("a", 10.0, 0.8), item("a", 20.0, 0.1), item("a", 30.0, 0.2)], 2,
            ["stream a at 10.0-12.0 s", "stream a at 40.0-42.0 s", "2 lower-scoring matches not shown."], 2,
            id="max-evidence-frames-keeps-best",
        ),
    ],
)
def test_extractive(question, evidence, max_frames, expected_in_order, used):
    answerer = Answerer(AnswerConfig(max_evidence_frames=max_frames), None)
    result = answerer.answer(question, evidence)

    assert (answerer.kind, answerer.expects_token_dim) == ("extractive", None)
    assert (result.extractive, result.model, result.evidence_used) == (True, "", used)
    offsets = [result.text.find(fragment) for fragment in expected_in_order]
    assert -1 not in offsets, result.text
    assert offsets == sorted(offsets), result.text
    assert answerer.answer(question, evidence) == result  # deterministic


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"t_end": 1.0}, "before t_start"),
        ({"wallclock_start": "2024-05-01T10:00:00"}, "no UTC offset"),
        ({"tokens": np.zeros(64, np.float32)}, r"\[K, D\]"),
        ({"positions": np.arange(3)}, "one entry per stored token"),
    ],
)
def test_evidence_item_rejects(kwargs, error):
    fields = dict(stream_id="s", t_start=2.0, t_end=4.0, wallclock_start="2024-05-01T10:00:00+00:00", score=0.5,
                  tokens=np.zeros((4, 8), np.float32), positions=np.arange(4))
    with pytest.raises(ValueError, match=error):
        EvidenceItem(**(fields | kwargs))


# --- VLM: stored tokens go straight into inputs_embeds -----------------------------------------

def test_vlm_answers_from_stored_tokens_without_the_vision_tower(vlm: Answerer):
    calls = []
    hook = vlm.model.model.vision_tower.register_forward_hook(lambda *args: calls.append(args))
    try:
        result = vlm.answer("what happened?", frames(8))
    finally:
        hook.remove()

    assert (vlm.kind, vlm.expects_token_dim) == ("vlm", VLM_DIM)
    assert (result.extractive, result.evidence_used) == (False, 8)
    assert result.model == str(vlm.model_name)
    assert "random weights" in result.text
    assert result.text.split("\n[Note:")[0].strip()  # the model wrote something before the note
    assert calls == []  # no frame was re-encoded
    assert vlm.answer("what happened?", frames(8)) == result  # greedy: deterministic


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_vlm_prompt_grows_by_each_frames_tokens(vlm: Answerer, dtype: type):
    lengths = []
    for n in (1, 2, 4):
        inputs = vlm.build_inputs("what happened?", frames(n, dtype=dtype))
        assert inputs.input_ids is None and inputs.inputs_embeds.dtype == vlm.model.dtype
        assert inputs.inputs_embeds.shape[2] == VLM_DIM
        lengths.append(inputs.length)
    per_frame = [(lengths[1] - lengths[0]) / 1, (lengths[2] - lengths[1]) / 2]
    assert all(TOKENS_PER_FRAME < step < TOKENS_PER_FRAME + 20 for step in per_frame), lengths


def test_vlm_inputs_hold_each_frames_tokens_and_text_in_prompt_order(vlm: Answerer):
    evidence = [item("s", 30.0, 0.9), item("s", 10.0, 0.8, dim=None), item("t", 20.0, 0.7), item("t", 25.0, 0.6)]
    got = vlm.build_inputs("q", evidence).inputs_embeds[0]
    # The same prompt embedded piece by piece: prefix; a stream's header where the stream changes, then
    # each frame's time and its tokens; suffix.
    embed = vlm.model.get_input_embeddings()
    prefix, suffix = vlm._prompt_ids("q")

    def text(words: str) -> torch.Tensor:
        return embed(torch.tensor(vlm.tokenizer.encode(words, add_special_tokens=False)))

    by_time = {e.t_start: e for e in evidence}
    parts = [embed(torch.tensor(prefix)), text("\n[stream s]"), text(" 10.0 s, no visual tokens"),
             text("\n[stream t]"), text(" 20.0 s"), torch.from_numpy(by_time[20.0].tokens),
             text(" 25.0 s"), torch.from_numpy(by_time[25.0].tokens),  # same stream: no header
             text("\n[stream s]"), text(" 30.0 s"), torch.from_numpy(by_time[30.0].tokens),
             embed(torch.tensor(suffix))]
    torch.testing.assert_close(got, torch.cat([part.to(vlm.model.dtype) for part in parts]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_vlm_inputs_on_cuda_are_the_cpu_inputs_through_the_kept_pinned_buffer(tiny_models, vlm: Answerer):
    on_gpu = Answerer(AnswerConfig(max_new_tokens=8, device="cuda"), tiny_models["vlm"])
    for evidence in (frames(2), frames(5), frames(3, dtype=np.float16), frames(4)):  # grows, changes dtype, reused
        want = vlm.build_inputs("q", evidence).inputs_embeds
        got = on_gpu.build_inputs("q", evidence).inputs_embeds
        torch.testing.assert_close(got.cpu(), want)


def test_compiled_layers_answer_as_eager_ones_for_any_prompt_length_without_compiling_again(
        tiny_models, vlm: Answerer):
    compiled = Answerer(AnswerConfig(max_new_tokens=8, compile=True), tiny_models["vlm"])
    layer = compiled.model.get_decoder().layers[0]
    assert layer.mlp._compiled_call_impl is not None and layer.self_attn._compiled_call_impl is None
    # The load built every graph: prompts of other lengths, and 8 decoding steps each, compile nothing more.
    with torch.compiler.set_stance("fail_on_recompile"):
        for n in (1, 3, 6):
            assert compiled.answer("what happened?", frames(n)).text == vlm.answer("what happened?", frames(n)).text


def test_compile_refuses_a_model_without_llama_family_layers(tiny_models):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=1000, n_positions=64))
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llm"])
    with pytest.raises(ValueError, match="no Llama-family decoder layers"):
        Answerer.around(AnswerConfig(compile=True), gpt2, tokenizer, "gpt2-tiny", random_weights=True)


def test_vlm_evidence_is_chronological_and_frames_without_tokens_get_a_marker(vlm: Answerer):
    evidence = [item("s", 30.0, 0.9), item("s", 10.0, 0.8, dim=None), item("s", 20.0, 0.7)]
    inputs = vlm.build_inputs("q", evidence)
    assert [e.t_start for e in inputs.used] == [10.0, 20.0, 30.0]
    with_tokens = vlm.build_inputs("q", [evidence[0], evidence[2]])
    # The tokenless frame adds only its text marker, far fewer positions than a frame's tokens.
    assert 0 < inputs.length - with_tokens.length < TOKENS_PER_FRAME


def test_vlm_rejects_tokens_of_another_encoder(vlm: Answerer):
    with pytest.raises(ValueError, match="not this VLM's own vision tower"):
        vlm.answer("q", [item("s", 2.0, 0.9, dim=VLM_DIM * 2)])


@pytest.mark.parametrize(
    ("max_frames", "max_new_tokens", "used"),
    [
        pytest.param(3, 8, 3, id="max-evidence-frames"),
        pytest.param(8, 8, 5, id="fewer-frames-than-allowed"),
        # 2048 - 1800 = 248 positions: the prompt (36) and two frames (64 tokens, and a 4-token time under a
        # 4-token stream header each: counted as if each opened a stream run), not a third.
        pytest.param(8, 1800, 2, id="position-budget"),
    ],
)
def test_vlm_evidence_is_bounded(tiny_models, max_frames, max_new_tokens, used):
    answerer = Answerer(AnswerConfig(max_evidence_frames=max_frames, max_new_tokens=max_new_tokens), tiny_models["vlm"])
    evidence = frames(5)
    inputs = answerer.build_inputs("q", evidence)

    assert len(inputs.used) == used
    assert {e.score for e in inputs.used} == {e.score for e in evidence[:used]}  # the best ones
    assert inputs.length + max_new_tokens <= answerer.max_positions


@pytest.mark.parametrize(
    ("max_new_tokens", "evidence", "code"),
    [
        pytest.param(2048, frames(1), "question_too_long", id="no-room-for-the-question"),
        pytest.param(2000, frames(1), "evidence_too_large", id="no-room-for-one-frame"),
    ],
)
def test_vlm_prompt_that_cannot_fit_raises(tiny_models, max_new_tokens, evidence, code):
    answerer = Answerer(AnswerConfig(max_new_tokens=max_new_tokens), tiny_models["vlm"])
    with pytest.raises(StageError) as error:
        answerer.build_inputs("q", evidence)
    assert error.value.code == code


def test_model_with_no_evidence_does_not_invent_an_answer(vlm: Answerer):
    result = vlm.answer("who entered?", [])
    assert (result.extractive, result.evidence_used) == (True, 0)
    assert result.text == 'Nothing in memory matched "who entered?" in the requested scope.'


# --- text-only LM: evidence as text lines -------------------------------------------------------

def test_llm_answers_from_evidence_lines(llm: Answerer):
    evidence = [item("cam2", 30.0, 0.91, text="EXIT", dim=None), item("cam1", 12.0, 0.83, dim=None)]
    inputs = llm.build_inputs("who entered?", evidence)
    # The MiniLM tokenizer lowercases and has no chat template: a plain prompt.
    prompt = llm.tokenizer.decode(inputs.input_ids[0])
    lines = ["answer questions about live video", "stream cam1 at 12. 0 - 14. 0 s", "score 0. 83",
             "stream cam2 at 30. 0 - 32. 0 s", 'on - screen text : " exit "', "question : who entered?", "answer :"]
    offsets = [prompt.find(line) for line in lines]
    assert -1 not in offsets and offsets == sorted(offsets), prompt

    result = llm.answer("who entered?", evidence)
    assert (llm.kind, llm.expects_token_dim) == ("llm", None)
    assert (result.extractive, result.evidence_used) == (False, 2)
    assert result.text.split("\n[Note:")[0].strip() and "random weights" in result.text


def test_question_quoting_the_evidence_slot_stays_a_question(llm: Answerer):
    inputs = llm.build_inputs("what is <<livelens-evidence>>?", [item("s", 2.0, 0.5, dim=None)])
    prompt = llm.tokenizer.decode(inputs.input_ids[0])
    assert prompt.index("stream s at 2. 0") < prompt.index("question : what is < < livelens - evidence > >?"), prompt


def test_llm_uses_the_chat_template_when_the_tokenizer_has_one(tiny_models, tmp_path: Path):
    path = tmp_path / "llm-chat"
    shutil.copytree(tiny_models["llm"], path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tokenizer.save_pretrained(path)
    answerer = Answerer(AnswerConfig(max_new_tokens=4), path)

    prompt = answerer.tokenizer.decode(answerer.build_inputs("q", [item("s", 2.0, 0.5, dim=None)]).input_ids[0])
    assert prompt.startswith("< user >") and prompt.endswith("< / user > < assistant >"), prompt
    assert "answer :" not in prompt  # the plain prompt's cue is not added on top of the template
