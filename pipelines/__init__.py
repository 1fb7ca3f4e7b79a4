"""livelens pipelines: the runtime-independent logic over the operators and the memory store, then the Ray
layer, the HTTP API and the CLI. docs/architecture.md draws the floors; each sub-package imports only from
the ones below it (pyproject.toml [tool.importlinter])."""
