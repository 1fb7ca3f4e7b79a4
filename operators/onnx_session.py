"""onnxruntime sessions as the pipeline's actors want them: on the provider asked for or not at all, with
worker threads that sleep between runs.

onnxruntime's intra-op threads busy-wait after each run for the next one (``session.intra_op.allow_spinning``,
on by default). On an otherwise idle machine that saves a thread wake-up per run; in livelens the actors of
every stage share the cores, and the cycles an OCR or moderation actor spends spinning are taken from
decode, encode and memory. Off: the OCR benchmark's CPU per sampled frame fell from 58-59 to 40-41 ms on 2
cores, and its wall time from 30 to 26 ms (BENCHMARKS.md, "OCR threads that sleep between runs").
"""

from __future__ import annotations

import functools
from pathlib import Path

import onnxruntime

CPU = "CPUExecutionProvider"
Provider = tuple[str, dict[str, object]]


def open_session(model: str | Path, provider: Provider = (CPU, {}), *,
                 threads: int | None = None) -> onnxruntime.InferenceSession:
    """A session of ``model`` on ``provider``; raises when this onnxruntime lacks the provider, or puts the model
    on another one (the provider could not start) instead of running it there.

    threads: intra-op threads; None: onnxruntime's default, one per core of the host.
    """
    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # The CPU provider after another: it runs the few operators that provider has no kernel for.
    providers = [provider] if provider[0] == CPU else [provider, CPU]
    if provider[0] != CPU:
        _preload_cuda_libraries()
    session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=providers)
    if session.get_providers()[0] != provider[0]:
        available = onnxruntime.get_available_providers()
        why = (f"this onnxruntime ({onnxruntime.__version__}) has no {provider[0]} (it has {', '.join(available)}): "
               "for CUDA, install onnxruntime-gpu in place of onnxruntime (docs/deploy.md)"
               if provider[0] not in available else
               "the provider could not start (a CUDA or cuDNN version onnxruntime-gpu was not built for, or no "
               "visible GPU); onnxruntime's log says why")
        raise RuntimeError(f"{Path(model).name} was asked for on {provider[0]} but onnxruntime put it on "
                           f"{session.get_providers()[0]}: {why}")
    return session


@functools.cache
def _preload_cuda_libraries() -> None:
    """Once per process: onnxruntime-gpu finds CUDA and cuDNN where torch of the same CUDA major loaded them,
    or, with this, in the nvidia-* wheels its [cuda,cudnn] extras install (docs/deploy.md). A no-op in the CPU
    build."""
    onnxruntime.preload_dlls()
