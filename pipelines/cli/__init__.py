"""The `livelens` command: commands, rendering, the demo, and the sample-video tool."""
